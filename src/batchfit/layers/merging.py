"""Layers that merge a list of inputs (Keras's merging layers): Concatenate, Add, Subtract, Multiply,
Average, Maximum, Minimum."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype

__all__ = ["Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"]


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
