"""Pooling, channels-last as Keras 3: max and average over sliding windows (1-D, 2-D), and over all steps.

Windows run as jax.lax.reduce_window at shapes fixed when the layer is built. An average with
padding="same" divides each window's sum by the number of real (unpadded) entries in it, as Keras.

A max pooling whose windows tile the input (strides == pool_size, padding "valid": Keras's default)
runs as `block_max` instead: a reshape into windows and a maximum over each, whose gradient is an
elementwise mask. The gradient of reduce_window's maximum is XLA's select_and_scatter, which XLA:CPU
expands into an index array per axis, a variadic reduce_window and a scatter: on Keras's MNIST convnet
that was the largest cost of the training step (benchmarks/RESULTS.md). The numbers are the same:
the maximum is exact, and the gradient goes to the first maximum of each window in row-major order,
the element select_and_scatter picks (ties, such as windows of zeros after a ReLU, included). A window
holding a NaN passes no gradient (select_and_scatter passes it to one element; the loss is NaN either way).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers.base import LAYERS, Layer, _autocast, _jax_dtype, _padding
from batchfit.layers.conv import _AXES, _channels_last, _ints, _window_shape

__all__ = ["MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalMaxPooling1D",
           "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "MaxPool1D", "MaxPool2D",
           "AvgPool1D", "AvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D", "GlobalAvgPool1D", "GlobalAvgPool2D"]


def _blocks(x, pool: tuple):
    """x [B, *spatial, C] cut into the windows `pool` that tile it (the remainder of each axis dropped):
    [B, o1, p1, o2, p2, ..., C], with o the output sizes and p the window's."""
    outputs = [n // p for n, p in zip(x.shape[1:-1], pool)]
    x = x[(slice(None), *(slice(0, o * p) for o, p in zip(outputs, pool)))]
    return x.reshape(x.shape[0], *itertools.chain(*zip(outputs, pool)), x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def block_max(x, pool: tuple):
    """Max pooling of x [B, *spatial, C] with windows `pool` that tile it (strides = pool, padding "valid"):
    [B, *spatial // pool, C], as reduce_window's maximum, and with its gradient (see the module docstring).

    The maximum is a reduction (not an elementwise maximum of the window's elements), so XLA computes the
    pooled array once; as a cheap elementwise op it would recompute it in each of its consumers."""
    return jnp.max(_blocks(x, pool), axis=tuple(range(2, 2 * len(pool) + 1, 2)))


def _block_max_forward(x, pool):
    out = block_max(x, pool)
    return out, (x, out)


def _block_max_backward(pool, residuals, gradient):
    """The gradient [B, *spatial, C]: each window's `gradient` on its first maximum (row-major), zero elsewhere."""
    x, out = residuals
    blocks, parts, found, zero = _blocks(x, pool), [], None, jnp.zeros((), gradient.dtype)
    for position in itertools.product(*(range(p) for p in pool)):      # row-major: the first maximum wins
        element = blocks[(slice(None), *itertools.chain(*((slice(None), i) for i in position)))]
        hit = element == out
        parts.append(jnp.where(hit if found is None else hit & ~found, gradient, zero))
        found = hit if found is None else found | hit
    for axis in reversed(range(len(pool))):   # [B, o1, .., C] per position -> [B, o1, p1, o2, p2, .., C]
        parts = [jnp.stack(parts[i:i + pool[axis]], axis=2 + axis) for i in range(0, len(parts), pool[axis])]
    tiled = parts[0].reshape(x.shape[0], *(o * p for o, p in zip(out.shape[1:-1], pool)), x.shape[-1])
    rest = [(0, n - t) for n, t in zip(x.shape, tiled.shape)]
    return (jnp.pad(tiled, rest),)


block_max.defvjp(_block_max_forward, _block_max_backward)


class PoolModule(nnx.Module):
    """Built windowed pooling: [B, *spatial, C] -> [B, *spatial', C], the max or the mean of each window.
    A mask does not pass it, as Keras's."""

    keras_weights, passes_mask = (), False

    def __init__(self, reduce: str, pool_size: tuple, strides: tuple, padding: str, compute_dtype="float32"):
        self.reduce, self.padding = reduce, padding.upper()
        self.window, self.strides = (1, *pool_size, 1), (1, *strides, 1)
        self.tiles = self.padding == "VALID" and tuple(pool_size) == tuple(strides)   # block_max applies
        self.compute_dtype = _jax_dtype(compute_dtype)

    def _sum(self, x, initial, operation):
        # A concrete (NumPy) initial value: jax.grad of a traced one fails inside jit.
        return jax.lax.reduce_window(x, np.array(initial, x.dtype), operation, self.window, self.strides,
                                     self.padding)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        if self.reduce == "max" and self.tiles:
            return block_max(x, self.window[1:-1])
        if self.reduce == "max":
            return self._sum(x, -jnp.inf, jax.lax.max)
        total = self._sum(x, 0, jax.lax.add)
        if self.padding == "VALID":
            return total / math.prod(self.window)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)       # [1, *spatial, 1]: the real entries per window
        return total / self._sum(ones, 0, jax.lax.add)


class _Pooling(Layer):
    """Shared config of the windowed poolings: `strides` defaults to `pool_size`, as Keras."""

    rank, reduce = 2, "max"

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        _channels_last(data_format, owner)
        self.pool_size = _ints(pool_size, self.rank, "pool_size", owner)
        self.strides = self.pool_size if strides is None else _ints(strides, self.rank, "strides", owner)
        self.padding = _padding(padding, owner)

    def compute_output_shape(self, input_shape) -> tuple:
        return _window_shape(self, input_shape, self.pool_size, self.strides, self.padding,
                             input_shape[-1] if len(input_shape) else None)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> PoolModule:
        self.compute_output_shape(input_shape)
        return PoolModule(self.reduce, self.pool_size, self.strides, self.padding, self.compute_dtype)


class MaxPooling1D(_Pooling):
    """1-D max pooling: [B, steps, C] -> [B, steps', C]; pool_size 2 by default."""

    rank, reduce = 1, "max"


class MaxPooling2D(_Pooling):
    """2-D max pooling: [B, H, W, C] -> [B, H', W', C]; pool_size (2, 2) by default."""

    rank, reduce = 2, "max"


class AveragePooling1D(_Pooling):
    """1-D average pooling: [B, steps, C] -> [B, steps', C]; pool_size is required, as Keras."""

    rank, reduce = 1, "average"

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class AveragePooling2D(_Pooling):
    """2-D average pooling: [B, H, W, C] -> [B, H', W', C]; pool_size is required, as Keras."""

    rank, reduce = 2, "average"

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class GlobalPoolModule(nnx.Module):
    """Built global pooling: [B, *spatial, C] -> [B, C] (or [B, 1..., C] with keepdims), max or mean.

    As Keras, only GlobalAveragePooling1D reads a mask ([B, steps] bool: the mean of the steps it
    marks), and none passes one on.
    """

    keras_weights, passes_mask = (), False

    def __init__(self, reduce: str, keepdims: bool, rank: int, compute_dtype="float32"):
        self.reduce, self.keepdims = reduce, keepdims
        self.takes_mask = reduce == "average" and rank == 1
        self.compute_dtype = _jax_dtype(compute_dtype)

    def __call__(self, x, mask=None):
        x = _autocast(x, self.compute_dtype)
        if mask is None:
            reduce = jnp.max if self.reduce == "max" else jnp.mean
            return reduce(x, axis=tuple(range(1, x.ndim - 1)), keepdims=self.keepdims)
        kept = jnp.asarray(mask, bool)[..., None]                      # [B, steps, 1]
        total = jnp.sum(jnp.where(kept, x, 0), axis=1, keepdims=self.keepdims)
        return total / jnp.sum(kept.astype(x.dtype), axis=1, keepdims=self.keepdims)


class _GlobalPooling(Layer):
    """Shared config of the global poolings: `keepdims` keeps the pooled axes, of size 1."""

    rank, reduce = 2, "max"

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, type(self).__name__)
        if not isinstance(keepdims, bool):
            raise TypeError(f"{type(self).__name__}: `keepdims` must be True or False; got "
                            f"keepdims={keepdims!r}. Pass keepdims=True to keep the pooled axes as size 1.")
        self.keepdims = keepdims

    def compute_output_shape(self, input_shape) -> tuple:
        if len(input_shape) != self.rank + 1 or input_shape[-1] is None:
            self._fail(input_shape, f"inputs [B, {_AXES[self.rank]}, channels] with known channels")
        return ((1,) * self.rank if self.keepdims else ()) + (input_shape[-1],)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> GlobalPoolModule:
        self.compute_output_shape(input_shape)
        return GlobalPoolModule(self.reduce, self.keepdims, self.rank, self.compute_dtype)


class GlobalMaxPooling1D(_GlobalPooling):
    """The maximum over all steps: [B, steps, C] -> [B, C]."""

    rank, reduce = 1, "max"


class GlobalMaxPooling2D(_GlobalPooling):
    """The maximum over height and width: [B, H, W, C] -> [B, C]."""

    rank, reduce = 2, "max"


class GlobalAveragePooling1D(_GlobalPooling):
    """The mean over all steps: [B, steps, C] -> [B, C]."""

    rank, reduce = 1, "average"


class GlobalAveragePooling2D(_GlobalPooling):
    """The mean over height and width: [B, H, W, C] -> [B, C]."""

    rank, reduce = 2, "average"


# Keras's other names for the same classes (a config names the class itself).
MaxPool1D, MaxPool2D, AvgPool1D, AvgPool2D = MaxPooling1D, MaxPooling2D, AveragePooling1D, AveragePooling2D
GlobalMaxPool1D, GlobalMaxPool2D = GlobalMaxPooling1D, GlobalMaxPooling2D
GlobalAvgPool1D, GlobalAvgPool2D = GlobalAveragePooling1D, GlobalAveragePooling2D
for _alias in __all__[8:]:
    LAYERS.register(_alias)(globals()[_alias])
