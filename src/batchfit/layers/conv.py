"""The convolutions, channels-last as Keras 3: Conv1D/2D, their transposes, depthwise and separable ones.

Each layer builds a module whose weights are named, shaped and ordered as Keras's (a kernel
[k..., C/groups, filters]; a transpose's [k..., filters, C]; a depthwise kernel
[k..., C, depth_multiplier]) and runs jax.lax.conv_general_dilated at shapes fixed when it is built,
so the whole convolution compiles into the fused train step.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from batchfit import activations, regularizers
from batchfit.layers.base import (LAYERS, Layer, _autocast, _initial_weight, _jax_dtype, _pair, _padding,
                                  _positive_int, _Regularized, _sequence)
from batchfit.layers.initializers import get_initializer

__all__ = ["Conv1D", "Conv2D", "Conv1DTranspose", "Conv2DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
           "SeparableConv1D", "SeparableConv2D", "Convolution1D", "Convolution2D", "Convolution1DTranspose",
           "Convolution2DTranspose", "SeparableConvolution1D", "SeparableConvolution2D"]

_DIMENSIONS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}   # channels-last, Keras's kernels
_AXES = {1: "steps", 2: "height, width"}


# ----- argument checks, shared with pooling.py ---------------------------------------------------

def _channels_last(data_format, owner: str) -> None:
    if data_format is not None and str(data_format).lower() != "channels_last":
        raise ValueError(f"{owner}: `data_format` must be 'channels_last' (inputs [B, ..., channels]), the only "
                         f"layout batchfit supports; got data_format={data_format!r}. Move the channels to the "
                         f"last axis (e.g. with layers.Permute or np.moveaxis) and drop data_format.")


def _ints(value, rank: int, name: str, owner: str) -> tuple:
    """`value` as one positive int per spatial axis (`rank` of them), as Keras's standardize_tuple."""
    if rank == 2:
        return _pair(value, name, owner)
    single = _sequence(value)
    return (_positive_int(single[0] if single is not None and len(single) == 1 else value, name, owner),)


def _conv_padding(value, owner: str, causal: bool) -> str:
    if causal and isinstance(value, str) and value.lower() in ("valid", "same", "causal"):
        return value.lower()
    if causal:
        raise ValueError(f"{owner}: `padding` must be 'valid', 'same' or 'causal'; got padding={value!r}. "
                         "Pass padding='causal' so that step t sees only steps <= t.")
    return _padding(value, owner)


def _spatial(layer: Layer, input_shape, rank: int) -> tuple:
    """The spatial sizes of a per-sample input [*spatial, channels]: `rank` of them, all known."""
    if len(input_shape) != rank + 1 or None in tuple(input_shape):
        layer._fail(input_shape, f"inputs [B, {_AXES[rank]}, channels]")
    return tuple(int(n) for n in input_shape[:rank])


def _checked(layer: Layer, input_shape, sizes: list, channels: int) -> tuple:
    if min(sizes) < 1:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': its window does not fit inputs "
                         f"{tuple(input_shape)} (the output would be {tuple(sizes)}); use padding='same', "
                         f"a smaller kernel_size/pool_size or larger inputs.")
    return (*sizes, channels)


def _window_shape(layer, input_shape, window, strides, padding, channels, dilation=None) -> tuple:
    """Per-sample output shape [*spatial', channels] of a window of `window` sliding by `strides`."""
    spatial = _spatial(layer, input_shape, len(window))
    dilation = dilation or (1,) * len(window)
    sizes = [-(-n // s) if padding in ("same", "causal") else (n - (k - 1) * d - 1) // s + 1
             for n, k, s, d in zip(spatial, window, strides, dilation)]
    return _checked(layer, input_shape, sizes, channels)


def _transpose_padding(k: int, s: int, d: int, padding: str, output_padding) -> tuple[int, int]:
    """Keras's (left, right) padding of the stride-dilated input of a transposed convolution (its JAX
    backend's rule): the output is (n - 1) * s + left + right - k_dilated + 2 long."""
    k = (k - 1) * d + 1
    if padding == "valid":
        extra = max(k, s) - k if output_padding is None else output_padding
        return k - 1, k - 1 + extra
    total = s + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(total // 2 + total % 2, k - 1)
    return left, total - left


def _output_padding(value, strides: tuple, owner: str):
    if value is None:
        return None
    given = (value,) * len(strides) if isinstance(value, (int, np.integer)) else _sequence(value)
    if given is None or len(given) != len(strides) or not all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 0 <= p < s
            for p, s in zip(given, strides)):
        raise ValueError(f"{owner}: `output_padding` must be None or ints >= 0 (one, or one per spatial axis), "
                         f"each smaller than its stride; got output_padding={value!r} with strides={strides}. "
                         f"Pass e.g. strides=2, output_padding=1, or output_padding=None.")
    return tuple(int(p) for p in given)


# ----- modules -----------------------------------------------------------------------------------

class _ConvModule(_Regularized):
    """Shared by the built convolutions: weights named as Keras's, optional bias, activation. `weights`
    maps each weight's name to (shape, role), in Keras's order; the layer's `<role>_initializer` draws
    it and its `<role>_regularizer` (if any) penalizes it. A mask does not pass, as in Keras."""

    passes_mask = False

    def __init__(self, layer: "_Conv", weights: dict, rngs: nnx.Rngs, groups: int = 1):
        dtype = _jax_dtype(layer.variable_dtype)
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        weights = {n: w for n, w in weights.items() if layer.use_bias or w[1] != "bias"}
        for name, (shape, role) in weights.items():
            initializer = getattr(layer, f"{role}_initializer")
            setattr(self, name, nnx.Param(_initial_weight(initializer, rngs.params(), shape, dtype)))
        if "bias" not in weights:
            self.bias = None
        self.keras_weights = tuple(weights)
        named = {n: getattr(layer, f"{role}_regularizer") for n, (_, role) in weights.items()}
        self.weight_regularizers = tuple((n, r) for n, r in named.items() if r is not None)
        self.activation, self.groups = layer.activation, groups
        self.strides, self.dilation, self.padding = layer.strides, layer.dilation_rate, layer._lax_padding()
        self.dimensions = _DIMENSIONS[len(layer.strides)]

    def _weight(self, name: str):
        return getattr(self, name)[...].astype(self.compute_dtype)

    def _convolve(self, x, kernel, groups: int):
        return jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding, rhs_dilation=self.dilation,
                                            dimension_numbers=self.dimensions, feature_group_count=groups)

    def _finish(self, y):
        if self.bias is not None:
            y = y + self._weight("bias")
        return self.activation(y)


class ConvModule(_ConvModule):
    """Built `Conv1D`/`Conv2D`: [B, *spatial, C] -> [B, *spatial', filters]; kernel [k..., C/groups, filters]."""

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        return self._finish(self._convolve(x, self._weight("kernel"), self.groups))


class ConvTransposeModule(_ConvModule):
    """Built `Conv1DTranspose`/`Conv2DTranspose`: [B, *spatial, C] -> [B, *spatial', filters]; kernel
    [k..., filters, C]. The gradient of a convolution: the input dilated by `strides` (lhs_dilation),
    convolved with the kernel flipped in space, its two channel axes swapped."""

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        kernel = self._weight("kernel")
        kernel = kernel[tuple(slice(None, None, -1) for _ in self.strides)].swapaxes(-1, -2)
        y = jax.lax.conv_general_dilated(x, kernel, (1,) * len(self.strides), self.padding,
                                         lhs_dilation=self.strides, rhs_dilation=self.dilation,
                                         dimension_numbers=self.dimensions)
        return self._finish(y)


class DepthwiseConvModule(_ConvModule):
    """Built `DepthwiseConv1D`/`2D`: each channel convolved with its own `depth_multiplier` filters;
    [B, *spatial, C] -> [B, *spatial', C * depth_multiplier] (channel c's filters m at c * dm + m)."""

    def _depthwise(self, x, name: str):
        kernel = self._weight(name)                       # [k..., C, dm] -> [k..., 1, C * dm], as Keras
        return self._convolve(x, kernel.reshape(*kernel.shape[:-2], 1, -1), x.shape[-1])

    def __call__(self, x):
        return self._finish(self._depthwise(_autocast(x, self.compute_dtype), "kernel"))


class SeparableConvModule(DepthwiseConvModule):
    """Built `SeparableConv1D`/`2D`: a depthwise convolution, then a 1x1 one to `filters` channels."""

    def __call__(self, x):
        y = self._depthwise(_autocast(x, self.compute_dtype), "depthwise_kernel")
        y = jax.lax.conv_general_dilated(y, self._weight("pointwise_kernel"), (1,) * len(self.strides),
                                         "VALID", dimension_numbers=self.dimensions)
        return self._finish(y)


# ----- layers ------------------------------------------------------------------------------------

class _Conv(Layer):
    """Shared config of the convolutions: the window (kernel_size, strides, padding, dilation_rate),
    the activation, and per weight role ("kernel", "depthwise", "pointwise", "bias") Keras's
    `<role>_initializer` and `<role>_regularizer`."""

    rank = 2
    _causal = False      # padding="causal" (Conv1D only, as Keras)

    def _window(self, kernel_size, strides, padding, data_format, dilation_rate) -> None:
        owner = type(self).__name__
        _channels_last(data_format, owner)
        self.kernel_size = _ints(kernel_size, self.rank, "kernel_size", owner)
        self.strides = _ints(strides, self.rank, "strides", owner)
        self.dilation_rate = _ints(dilation_rate, self.rank, "dilation_rate", owner)
        self.padding = _conv_padding(padding, owner, self._causal)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{owner}: `strides` > 1 and `dilation_rate` > 1 cannot be combined (as in Keras); "
                             f"got strides={strides!r}, dilation_rate={dilation_rate!r}. Keep one of them 1.")

    def _roles(self, activation, use_bias, initializers: dict, penalties: dict) -> None:
        self.activation, self.use_bias = activations.get(activation), bool(use_bias)
        for role, initializer in initializers.items():
            setattr(self, f"{role}_initializer", get_initializer(initializer))
        for role, regularizer in penalties.items():
            setattr(self, f"{role}_regularizer", regularizers.get(regularizer))

    def _lax_padding(self):
        """The padding conv_general_dilated takes: "SAME"/"VALID", or (left, right) per spatial axis."""
        if self.padding == "causal":              # pad the past only, as Keras's Conv1D
            return (((self.kernel_size[0] - 1) * self.dilation_rate[0], 0),)
        return self.padding.upper()

    def _channels(self, input_shape, groups: int = 1) -> int:
        _spatial(self, input_shape, self.rank)
        channels = int(input_shape[-1])
        if channels % groups:
            raise ValueError(f"{type(self).__name__} '{self.name}': the {channels} input channels must be "
                             f"divisible by groups={groups}; got per-sample shape {tuple(input_shape)}.")
        return channels


class _BaseConv(_Conv):
    """Conv1D / Conv2D: convolution (cross-correlation) over `rank` spatial axes, Keras's arguments."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.filters = _positive_int(filters, "filters", owner)
        self.groups = _positive_int(groups, "groups", owner)
        if self.filters % self.groups:
            raise ValueError(f"{owner}: `filters` must be divisible by `groups`; got filters={filters!r}, "
                             f"groups={groups!r}. Pass e.g. filters={self.groups * 8}, groups={groups!r}.")
        self._window(kernel_size, strides, padding, data_format, dilation_rate)
        self._roles(activation, use_bias, {"kernel": kernel_initializer, "bias": bias_initializer},
                    {"kernel": kernel_regularizer, "bias": bias_regularizer})

    def compute_output_shape(self, input_shape) -> tuple:
        self._channels(input_shape, self.groups)
        return _window_shape(self, input_shape, self.kernel_size, self.strides, self.padding, self.filters,
                             self.dilation_rate)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> ConvModule:
        self.compute_output_shape(input_shape)
        kernel = (*self.kernel_size, self._channels(input_shape) // self.groups, self.filters)
        return ConvModule(self, {"kernel": (kernel, "kernel"), "bias": ((self.filters,), "bias")}, rngs,
                          self.groups)


class Conv1D(_BaseConv):
    """1-D convolution over [B, steps, channels] -> [B, steps', filters]; padding also "causal"."""

    rank, _causal = 1, True


class Conv2D(_BaseConv):
    """2-D convolution over [B, height, width, channels] -> [B, height', width', filters]."""

    rank = 2


class _BaseConvTranspose(_Conv):
    """Conv1DTranspose / Conv2DTranspose: the transpose (gradient) of a convolution, as Keras sizes it:
    (n - 1) * strides + kernel (+ output_padding) for "valid", n * strides for "same"."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = _positive_int(filters, "filters", type(self).__name__)
        self._window(kernel_size, strides, padding, data_format, dilation_rate)
        self.output_padding = _output_padding(output_padding, self.strides, type(self).__name__)
        self._roles(activation, use_bias, {"kernel": kernel_initializer, "bias": bias_initializer},
                    {"kernel": kernel_regularizer, "bias": bias_regularizer})

    def _lax_padding(self) -> tuple:
        extra = self.output_padding or (None,) * self.rank
        return tuple(_transpose_padding(*a, self.padding, p)
                     for *a, p in zip(self.kernel_size, self.strides, self.dilation_rate, extra))

    def compute_output_shape(self, input_shape) -> tuple:
        spatial = _spatial(self, input_shape, self.rank)
        sizes = [(n - 1) * s + left + right - (k - 1) * d + 1       # the stride-dilated, padded input, convolved
                 for n, k, s, d, (left, right) in zip(spatial, self.kernel_size, self.strides,
                                                      self.dilation_rate, self._lax_padding())]
        return _checked(self, input_shape, sizes, self.filters)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> ConvTransposeModule:
        self.compute_output_shape(input_shape)
        kernel = (*self.kernel_size, self.filters, self._channels(input_shape))
        return ConvTransposeModule(self, {"kernel": (kernel, "kernel"), "bias": ((self.filters,), "bias")}, rngs)


class Conv1DTranspose(_BaseConvTranspose):
    """Transposed 1-D convolution: [B, steps, channels] -> [B, steps', filters]; kernel [k, filters, C]."""

    rank = 1


class Conv2DTranspose(_BaseConvTranspose):
    """Transposed 2-D convolution: [B, H, W, channels] -> [B, H', W', filters]; kernel [kh, kw, filters, C]."""

    rank = 2


class _BaseDepthwiseConv(_Conv):
    """DepthwiseConv1D / DepthwiseConv2D: each input channel convolved with `depth_multiplier` filters of its own;
    the weights are Keras 3's `kernel` [k..., C, depth_multiplier] and `bias` [C * depth_multiplier]."""

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier", type(self).__name__)
        self._window(kernel_size, strides, padding, data_format, dilation_rate)
        self._roles(activation, use_bias, {"depthwise": depthwise_initializer, "bias": bias_initializer},
                    {"depthwise": depthwise_regularizer, "bias": bias_regularizer})

    def compute_output_shape(self, input_shape) -> tuple:
        channels = self._channels(input_shape) * self.depth_multiplier
        return _window_shape(self, input_shape, self.kernel_size, self.strides, self.padding, channels,
                             self.dilation_rate)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> DepthwiseConvModule:
        channels = self.compute_output_shape(input_shape)[-1]
        kernel = (*self.kernel_size, self._channels(input_shape), self.depth_multiplier)
        return DepthwiseConvModule(self, {"kernel": (kernel, "depthwise"), "bias": ((channels,), "bias")}, rngs)


class DepthwiseConv1D(_BaseDepthwiseConv):
    """Depthwise 1-D convolution: [B, steps, C] -> [B, steps', C * depth_multiplier]."""

    rank = 1


class DepthwiseConv2D(_BaseDepthwiseConv):
    """Depthwise 2-D convolution: [B, H, W, C] -> [B, H', W', C * depth_multiplier]."""

    rank = 2


class _BaseSeparableConv(_Conv):
    """SeparableConv1D / SeparableConv2D: a depthwise convolution (`depthwise_kernel` [k..., C, depth_multiplier])
    then a pointwise one (`pointwise_kernel` [1..., C * depth_multiplier, filters]), then `bias` [filters]."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 depth_multiplier=1, activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.filters = _positive_int(filters, "filters", owner)
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier", owner)
        self._window(kernel_size, strides, padding, data_format, dilation_rate)
        self._roles(activation, use_bias,
                    {"depthwise": depthwise_initializer, "pointwise": pointwise_initializer, "bias": bias_initializer},
                    {"depthwise": depthwise_regularizer, "pointwise": pointwise_regularizer, "bias": bias_regularizer})

    def compute_output_shape(self, input_shape) -> tuple:
        self._channels(input_shape)
        return _window_shape(self, input_shape, self.kernel_size, self.strides, self.padding, self.filters,
                             self.dilation_rate)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> SeparableConvModule:
        self.compute_output_shape(input_shape)
        channels, multiplier = self._channels(input_shape), self.depth_multiplier
        weights = {"depthwise_kernel": ((*self.kernel_size, channels, multiplier), "depthwise"),
                   "pointwise_kernel": ((1,) * self.rank + (channels * multiplier, self.filters), "pointwise"),
                   "bias": ((self.filters,), "bias")}
        return SeparableConvModule(self, weights, rngs)


class SeparableConv1D(_BaseSeparableConv):
    """Depthwise separable 1-D convolution: [B, steps, C] -> [B, steps', filters]."""

    rank = 1


class SeparableConv2D(_BaseSeparableConv):
    """Depthwise separable 2-D convolution: [B, H, W, C] -> [B, H', W', filters]."""

    rank = 2


# Keras's other names for the same classes (a config names the class itself).
Convolution1D, Convolution2D = Conv1D, Conv2D
Convolution1DTranspose, Convolution2DTranspose = Conv1DTranspose, Conv2DTranspose
SeparableConvolution1D, SeparableConvolution2D = SeparableConv1D, SeparableConv2D
for _alias in __all__[8:]:
    LAYERS.register(_alias)(globals()[_alias])
