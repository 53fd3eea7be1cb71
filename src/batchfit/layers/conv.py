"""Conv2D and MaxPooling2D, channels-last as Keras."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype, _padding, _pair, _positive_int
from batchfit.layers.core import _Affine, _AffineModule

__all__ = ["Conv2D", "MaxPooling2D"]


class Conv2DModule(_AffineModule):
    """Built `Conv2D`: [B, H, W, C] -> [B, H', W', filters]; kernel [kh, kw, C, filters]."""

    def __init__(self, layer: "Conv2D", kernel_shape: tuple, rngs: nnx.Rngs):
        super().__init__(layer, kernel_shape, rngs)
        self.strides, self.padding = layer.strides, layer.padding.upper()

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        y = jax.lax.conv_general_dilated(x, self._kernel(), self.strides, self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return self._finish(y)


def _window_shape(layer, input_shape, window, strides, padding, channels) -> tuple:
    if len(input_shape) != 3 or None in input_shape:
        layer._fail(input_shape, "inputs [B, height, width, channels]")
    out = [-(-n // s) if padding == "same" else (n - k) // s + 1
           for n, k, s in zip(input_shape[:2], window, strides)]
    if min(out) < 1:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': window {window} does not fit "
                         f"inputs {tuple(input_shape)}; use padding='same' or a smaller window.")
    return (*out, channels)


class Conv2D(_Affine):
    """2-D convolution, channels-last, Keras defaults (valid padding, glorot_uniform)."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        self.filters = _positive_int(filters, "filters", "Conv2D")
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2D")
        self.strides = _pair(strides, "strides", "Conv2D")
        self.padding = _padding(padding, "Conv2D")
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, **kwargs)

    def compute_output_shape(self, input_shape) -> tuple:
        return _window_shape(self, input_shape, self.kernel_size, self.strides, self.padding,
                             self.filters)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> Conv2DModule:
        return Conv2DModule(self, (*self.kernel_size, int(input_shape[-1]), self.filters), rngs)


class MaxPoolModule(nnx.Module):
    """Built `MaxPooling2D`: the maximum over each window, per channel."""

    keras_weights = ()

    def __init__(self, pool_size, strides, padding: str, compute_dtype="float32"):
        self.pool_size, self.strides, self.padding = pool_size, strides, padding.upper()
        self.compute_dtype = _jax_dtype(compute_dtype)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max,
                                     (1, *self.pool_size, 1), (1, *self.strides, 1), self.padding)


class MaxPooling2D(Layer):
    """2-D max pooling, channels-last; `strides` defaults to `pool_size`, as Keras."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size", "MaxPooling2D")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides",
                                                                    "MaxPooling2D")
        self.padding = _padding(padding, "MaxPooling2D")

    def compute_output_shape(self, input_shape) -> tuple:
        return _window_shape(self, input_shape, self.pool_size, self.strides, self.padding,
                             input_shape[-1] if input_shape else None)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> MaxPoolModule:
        return MaxPoolModule(self.pool_size, self.strides, self.padding, self.compute_dtype)
