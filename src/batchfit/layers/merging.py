"""Layers that merge a list of inputs (Keras's merging layers): Concatenate, Add, Subtract, Multiply,
Average, Maximum, Minimum, Dot; and Keras's functional forms (`concatenate([a, b])`, `add`, ...,
`dot`), which build the layer and call it on symbolic tensors (bf.Input) or on arrays."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype

__all__ = ["Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot",
           "concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum", "dot"]


class MergeModule(nnx.Module):
    """Built merging layer: `function(list of arrays)`."""

    keras_weights = ()

    def __init__(self, function, compute_dtype):
        self.function, self.compute_dtype = function, _jax_dtype(compute_dtype)

    def __call__(self, inputs):
        return self.function([_autocast(x, self.compute_dtype) for x in inputs])


class _Merge(Layer):
    """A layer of a list of at least two inputs of one shape (Concatenate: equal but for `axis`)."""

    minimum_inputs = 2

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(input_shape[0], tuple) \
                or len(input_shape) < self.minimum_inputs:
            raise ValueError(f"{type(self).__name__} '{self.name}' takes a list of at least {self.minimum_inputs} "
                             f"inputs, e.g. {type(self).__name__}()([a, b]); got per-sample shapes {input_shape}.")
        if len({tuple(s) for s in input_shape}) > 1:
            raise ValueError(f"{type(self).__name__} '{self.name}' needs inputs of one shape; got per-sample "
                             f"shapes {[tuple(s) for s in input_shape]}.")

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        return tuple(input_shape[0])

    def make_module(self, input_shape, rngs) -> MergeModule:
        self._check(input_shape)
        return MergeModule(self._function, self.compute_dtype)


def _reduce(op):
    return staticmethod(lambda xs: functools.reduce(op, xs))


class Add(_Merge):
    """The sum of the inputs."""
    _function = _reduce(jnp.add)


class Multiply(_Merge):
    """The elementwise product of the inputs."""
    _function = _reduce(jnp.multiply)


class Maximum(_Merge):
    """The elementwise maximum of the inputs."""
    _function = _reduce(jnp.maximum)


class Minimum(_Merge):
    """The elementwise minimum of the inputs."""
    _function = _reduce(jnp.minimum)


class Average(_Merge):
    """The mean of the inputs."""
    _function = staticmethod(lambda xs: functools.reduce(jnp.add, xs) / len(xs))


class Subtract(_Merge):
    """inputs[0] - inputs[1] (exactly two inputs)."""
    _function = staticmethod(lambda xs: xs[0] - xs[1])

    def _check(self, input_shape):
        super()._check(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"Subtract '{self.name}' takes exactly 2 inputs; got {len(input_shape)}.")


class Concatenate(_Merge):
    """The inputs joined along `axis` (the last by default); their other axes must agree."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ValueError(f"Concatenate: `axis` must be a non-zero int (axis 0 is the batch); got axis={axis!r}.")
        self.axis = axis

    def _sample_axis(self, rank: int) -> int:
        axis = self.axis - 1 if self.axis > 0 else self.axis        # per-sample shapes have no batch axis
        if not -rank <= axis < rank:
            raise ValueError(f"Concatenate '{self.name}': axis={self.axis} is out of range for inputs of rank "
                             f"{rank + 1}.")
        return axis % rank

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 1 or not isinstance(input_shape[0], tuple):
            super()._check(input_shape)
        axis = self._sample_axis(len(input_shape[0]))
        rest = {tuple(d for i, d in enumerate(s) if i != axis) + (len(s),) for s in input_shape}
        if len(rest) > 1:
            raise ValueError(f"Concatenate '{self.name}' needs inputs that agree on every axis but axis={self.axis}; "
                             f"got per-sample shapes {[tuple(s) for s in input_shape]}.")

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        axis = self._sample_axis(len(input_shape[0]))
        shape = list(input_shape[0])
        shape[axis] = sum(s[axis] for s in input_shape)
        return tuple(shape)

    def make_module(self, input_shape, rngs) -> MergeModule:
        self._check(input_shape)
        return MergeModule(functools.partial(jnp.concatenate, axis=self.axis), self.compute_dtype)


def _batch_dot(inputs, axes, normalize: bool):
    """Keras's batch_dot of inputs [x, y] over x's axis axes[0] and y's axes[1]: [B, *x_rest, *y_rest],
    or [B, 1] when both are [B, n]. `normalize`: each L2-normalized first, as Keras (epsilon 1e-7)."""
    x, y = inputs
    if normalize:
        x, y = (v * jnp.minimum(jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=a, keepdims=True)), 1e7)
                for v, a in ((x, axes[0]), (y, axes[1])))
    x, y = jnp.moveaxis(x, axes[0], -1), jnp.moveaxis(y, axes[1], 1)
    batch, size = x.shape[0], x.shape[-1]
    out = jnp.matmul(x.reshape(batch, -1, size), y.reshape(batch, size, -1))
    rest = (*x.shape[1:-1], *y.shape[2:])
    return out.reshape(batch, *rest) if rest else out.reshape(batch, 1)


class Dot(_Merge):
    """The dot product of two inputs over `axes` (an int for both, or a pair; axis 0 is the batch):
    e.g. [B, 3, 5] and [B, 10, 3] with axes=(1, 2) give [B, 5, 10]; [B, n] and [B, n] give [B, 1].
    `normalize=True` L2-normalizes both first (a cosine similarity)."""

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        pair = (axes, axes) if isinstance(axes, int) else axes
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in pair):
            raise ValueError(f"Dot: `axes` must be an int or a pair of ints (the axis of each input to sum over; "
                             f"0 is the batch); got axes={axes!r}. Pass e.g. Dot(axes=1) or Dot(axes=(1, 2)).")
        self.axes, self.normalize = axes, bool(normalize)

    def _axes(self, input_shape) -> tuple[int, int]:
        """Each input's summed axis, counting the batch as 0, as Keras (negatives from the end)."""
        pair = (self.axes, self.axes) if isinstance(self.axes, int) else self.axes
        ranks = [len(s) + 1 for s in input_shape]
        axes = tuple(a % r if a < 0 else a for a, r in zip(pair, ranks))
        if any(not 1 <= a < r for a, r in zip(axes, ranks)) or \
                input_shape[0][axes[0] - 1] != input_shape[1][axes[1] - 1]:
            raise ValueError(f"Dot '{self.name}': axes={self.axes!r} must name axes of equal size, other than the "
                             f"batch, of inputs [B, *{tuple(input_shape[0])}] and [B, *{tuple(input_shape[1])}].")
        return axes

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or \
                not all(isinstance(s, tuple) for s in input_shape):
            raise ValueError(f"Dot '{self.name}' takes a list of 2 inputs, e.g. Dot(axes=1)([a, b]); got "
                             f"per-sample shapes {input_shape}.")
        return self._axes(input_shape)

    def compute_output_shape(self, input_shape):
        a, b = self._check(input_shape)
        rest = (*(d for i, d in enumerate(input_shape[0]) if i != a - 1),
                *(d for i, d in enumerate(input_shape[1]) if i != b - 1))
        return rest or (1,)

    def make_module(self, input_shape, rngs) -> MergeModule:
        axes = self._check(input_shape)
        return MergeModule(functools.partial(_batch_dot, axes=axes, normalize=self.normalize), self.compute_dtype)


def concatenate(inputs, axis=-1, **kwargs):
    """Keras's functional form: `Concatenate(axis=axis, **kwargs)(inputs)`."""
    return Concatenate(axis=axis, **kwargs)(inputs)


def add(inputs, **kwargs):
    """Keras's functional form: `Add(**kwargs)(inputs)`, the sum of the inputs."""
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    """Keras's functional form: `Subtract(**kwargs)(inputs)`, inputs[0] - inputs[1]."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """Keras's functional form: `Multiply(**kwargs)(inputs)`, the elementwise product."""
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    """Keras's functional form: `Average(**kwargs)(inputs)`, the mean of the inputs."""
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """Keras's functional form: `Maximum(**kwargs)(inputs)`, the elementwise maximum."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """Keras's functional form: `Minimum(**kwargs)(inputs)`, the elementwise minimum."""
    return Minimum(**kwargs)(inputs)


def dot(inputs, axes=-1, **kwargs):
    """Keras's functional form: `Dot(axes=axes, **kwargs)(inputs)` (kwargs may hold normalize=True)."""
    return Dot(axes=axes, **kwargs)(inputs)
