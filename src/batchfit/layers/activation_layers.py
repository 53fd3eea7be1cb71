"""Activation layers as Keras: ReLU, LeakyReLU, PReLU (learned slopes), ELU, Softmax, Identity.

Each computes what Keras's own layer computes with the same JAX functions (jax.nn.relu, relu6,
leaky_relu, elu, softmax), so values and gradients match Keras on JAX, also at the kinks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import activations

from batchfit import regularizers
from batchfit.layers.base import Layer, _autocast, _initial_weight, _jax_dtype, _real, _Regularized, _sequence
from batchfit.layers.core import FunctionModule
from batchfit.layers.initializers import get_initializer

__all__ = ["ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Identity"]


def _relu(x, negative_slope, max_value, threshold):
    """Keras's ReLU (activations.ReLU.static_call): max_value clips, below threshold the slope applies."""
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return jax.nn.leaky_relu(x, negative_slope)
    negative_part = jax.nn.relu(threshold - x) if negative_slope != 0.0 else 0
    clip = max_value is not None
    if threshold != 0:
        x = jnp.where(x > jnp.asarray(threshold, x.dtype), x, 0)
    elif max_value == 6:
        x, clip = jax.nn.relu6(x), False
    else:
        x = jax.nn.relu(x)
    if clip:
        x = jnp.clip(x, jnp.asarray(0, x.dtype), jnp.asarray(max_value, x.dtype))
    return x - negative_slope * negative_part if negative_slope != 0.0 else x


def _at_least_zero(value, name: str, owner: str, example) -> float:
    return _real(value, name, owner, "a number >= 0", lambda v: v >= 0, example)


class _Elementwise(Layer):
    """A weightless layer applying `self._function(x)`; the output has the input's shape."""

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(self._function, self.compute_dtype)


class ReLU(_Elementwise):
    """Rectified linear unit: x for threshold <= x < max_value, max_value above, and
    negative_slope * (x - threshold) below threshold."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = None if max_value is None else _at_least_zero(max_value, "max_value", "ReLU", 6.0)
        self.negative_slope = _at_least_zero(negative_slope, "negative_slope", "ReLU", 0.1)
        self.threshold = _at_least_zero(threshold, "threshold", "ReLU", 0.0)
        self._function = functools.partial(_relu, negative_slope=self.negative_slope, max_value=self.max_value,
                                           threshold=self.threshold)


class LeakyReLU(_Elementwise):
    """x for x >= 0, negative_slope * x below (Keras 3's default slope 0.3; Keras 2's `alpha` is accepted)."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:
            negative_slope = kwargs.pop("alpha")
            self._arguments = {"negative_slope": negative_slope, **kwargs}
        super().__init__(**kwargs)
        self.negative_slope = _at_least_zero(negative_slope, "negative_slope", "LeakyReLU", 0.3)
        self._function = functools.partial(jax.nn.leaky_relu, negative_slope=self.negative_slope)


class ELU(_Elementwise):
    """Exponential linear unit: x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _real(alpha, "alpha", "ELU", "a finite number", lambda a: True, 1.0)
        self._function = functools.partial(jax.nn.elu, alpha=self.alpha)


def _softmax(x, axis):
    """Keras's Softmax layer: over one axis the softmax activation (a loss then reads its logits), over
    several exp(x - logsumexp(x))."""
    if isinstance(axis, tuple) and len(axis) > 1:
        return jnp.exp(x - jax.scipy.special.logsumexp(x, axis=axis, keepdims=True))
    return activations.softmax(x, axis=axis[0] if isinstance(axis, tuple) else axis)


class Softmax(_Elementwise):
    """Softmax over `axis` (an int, or a list of ints: over all of them together). Keras's call
    argument `mask` is not supported: batchfit has no masks."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        axes = (axis,) if isinstance(axis, (int, np.integer)) else _sequence(axis)
        if not axes or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
            raise ValueError(f"Softmax: `axis` must be an int or a list of ints; got axis={axis!r}. "
                             f"Pass e.g. Softmax(axis=-1).")
        self.axis = int(axis) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axes)
        self._function = functools.partial(_softmax, axis=self.axis)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        rank = len(input_shape) + 1
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        if any(not -rank <= a < rank or a % rank == 0 for a in axes):
            raise ValueError(f"Softmax '{self.name}': axis={self.axis!r} must name axes of the inputs [B, "
                             f"*{tuple(input_shape)}] other than the batch axis 0; use axis=-1.")
        return super().make_module(input_shape, rngs)


def _identity(x):
    return x


class Identity(_Elementwise):
    """Returns its inputs unchanged (a placeholder)."""

    _function = staticmethod(_identity)


class PReLUModule(_Regularized):
    """Built `PReLU`: x for x >= 0, alpha * x below; `alpha` per-sample shape with 1 on the shared axes."""

    keras_weights = ("alpha",)

    def __init__(self, layer: "PReLU", shape: tuple, rngs: nnx.Rngs):
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        self.alpha = nnx.Param(_initial_weight(layer.alpha_initializer, rngs.params(), shape,
                                               _jax_dtype(layer.variable_dtype)))
        if layer.alpha_regularizer is not None:
            self.weight_regularizers = (("alpha", layer.alpha_regularizer),)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        alpha = self.alpha[...].astype(self.compute_dtype)
        return jax.nn.relu(x) - alpha * jax.nn.relu(-x)          # as Keras, for the same gradients


class PReLU(Layer):
    """Parametric ReLU: x for x >= 0, alpha * x below, with `alpha` learned per entry of the sample
    (zeros first); `shared_axes` (counting the batch as 0) share one alpha along those axes, e.g.
    shared_axes=[1, 2] gives one per channel of [B, H, W, C]."""

    def __init__(self, alpha_initializer="Zeros", alpha_regularizer=None, alpha_constraint=None,
                 shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        if alpha_constraint is not None:
            raise ValueError("PReLU: `alpha_constraint` is not supported by batchfit; got alpha_constraint="
                             f"{alpha_constraint!r}. Drop it (or clip in a custom layer's call).")
        axes = (shared_axes,) if isinstance(shared_axes, (int, np.integer)) else _sequence(shared_axes or ())
        if axes is None or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= 1
                                   for a in axes):
            raise ValueError(f"PReLU: `shared_axes` must be None, an int >= 1 or a list of them (axes of "
                             f"[B, ...], the batch being 0); got shared_axes={shared_axes!r}. Pass e.g. "
                             f"shared_axes=[1, 2] for one alpha per channel of images.")
        self.shared_axes = tuple(int(a) for a in axes)
        self.alpha_initializer = get_initializer(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> PReLUModule:
        if any(a > len(input_shape) for a in self.shared_axes):
            raise ValueError(f"PReLU '{self.name}': shared_axes={list(self.shared_axes)} must be axes of the "
                             f"inputs [B, *{tuple(input_shape)}], between 1 and {len(input_shape)}.")
        shape = tuple(1 if i + 1 in self.shared_axes else int(n) for i, n in enumerate(input_shape))
        return PReLUModule(self, shape, rngs)
