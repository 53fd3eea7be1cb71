"""Reshaping layers, channels-last as Keras: Reshape, Permute, RepeatVector, ZeroPadding1D/2D,
UpSampling1D/2D, Cropping1D/2D. None has weights; each applies a fixed function to [B, ...]."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers.base import Layer, _pair, _positive_int, _sequence
from batchfit.layers.core import FunctionModule

__all__ = ["Reshape", "Permute", "RepeatVector", "ZeroPadding1D", "ZeroPadding2D", "UpSampling1D",
           "UpSampling2D", "Cropping1D", "Cropping2D"]

_RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


def _data_format(value, owner: str) -> str:
    """Keras's `data_format`: batchfit's layers are channels-last only."""
    if value not in (None, "channels_last"):
        raise ValueError(f"{owner}: `data_format` must be 'channels_last' (or None); got data_format={value!r}. "
                         f"batchfit's layers take channels-last inputs [B, ..., channels]: move the channels "
                         f"last, e.g. with Permute((2, 3, 1)) on [B, C, H, W], and drop data_format.")
    return "channels_last"


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _amounts(value, name: str, owner: str, example) -> tuple[int, int]:
    """(before, after) from an int >= 0 (both sides) or a pair of them."""
    pair = (value, value) if _is_count(value) else _sequence(value)
    if pair is None or len(pair) != 2 or not all(_is_count(v) for v in pair):
        raise ValueError(f"{owner}: `{name}` must be an int >= 0 or a pair (before, after) of them; got "
                         f"{name}={value!r}. Pass e.g. {owner}({name}={example!r}).")
    return int(pair[0]), int(pair[1])


def _amounts_2d(value, name: str, owner: str) -> tuple:
    """((top, bottom), (left, right)) from an int, a pair (height, width), or a pair of pairs."""
    example = ((1, 1), (2, 2))
    if _is_count(value):
        return (_amounts(value, name, owner, example),) * 2
    pair = _sequence(value)
    if pair is None or len(pair) != 2:
        raise ValueError(f"{owner}: `{name}` must be an int, a pair (height, width) or a pair of pairs "
                         f"((top, bottom), (left, right)); got {name}={value!r}. Pass e.g. {name}={example}.")
    return tuple(_amounts(v, name, owner, example) for v in pair)


class _Reshaping(Layer):
    """A weightless layer: `_function()` of [B, *input_shape] for per-sample inputs of `sample_rank` axes."""

    sample_rank: int | None = None
    expects = "a fully known shape"

    def _checked(self, input_shape) -> tuple:
        input_shape = tuple(input_shape)
        if (self.sample_rank is not None and len(input_shape) != self.sample_rank) or None in input_shape:
            self._fail(input_shape, self.expects)
        return input_shape

    def compute_output_shape(self, input_shape) -> tuple:
        return self._shape_after(self._checked(input_shape))

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        self.compute_output_shape(input_shape)           # the errors, before any step runs
        return FunctionModule(self._function(self._checked(input_shape)), self.compute_dtype)


def _reshape(x, shape):
    return x.reshape(x.shape[0], *shape)


class Reshape(_Reshaping):
    """Reshapes each sample: [B, *input_shape] -> [B, *target_shape]; one entry of target_shape may be
    -1, inferred from the others."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = (target_shape,) if isinstance(target_shape, (int, np.integer)) else _sequence(target_shape)
        if target is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                     and (d >= 1 or d == -1) for d in target) or list(target).count(-1) > 1:
            raise ValueError(f"Reshape: `target_shape` must be a tuple of positive ints, one of which may be "
                             f"-1 (inferred), without the batch axis; got target_shape={target_shape!r}. "
                             f"Pass e.g. Reshape((3, -1)).")
        self.target_shape = tuple(int(d) for d in target)

    def _shape_after(self, input_shape) -> tuple:
        size, known = math.prod(input_shape), math.prod(d for d in self.target_shape if d != -1)
        inferred = size // known if -1 in self.target_shape else None
        if (inferred is None and known != size) or (inferred is not None and known * inferred != size):
            raise ValueError(f"Reshape '{self.name}' cannot reshape samples of shape {input_shape} ({size} "
                             f"entries) to target_shape={self.target_shape}; give a target with {size} "
                             f"entries, or -1 for one axis.")
        return tuple(inferred if d == -1 else d for d in self.target_shape)

    def _function(self, input_shape):
        return functools.partial(_reshape, shape=self._shape_after(input_shape))


def _transpose(x, axes):
    return jnp.transpose(x, axes)


class Permute(_Reshaping):
    """Permutes the sample axes: `dims` counts them from 1, e.g. Permute((2, 1)): [B, T, C] -> [B, C, T]."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        dims = _sequence(dims)
        if dims is None or sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"Permute: `dims` must be a permutation of 1, ..., rank (the sample axes; 0 is the "
                             f"batch); got dims={self._arguments['dims']!r}. Pass e.g. Permute((2, 1)).")
        self.dims = tuple(int(d) for d in dims)
        self.sample_rank, self.expects = len(self.dims), f"samples of {len(self.dims)} axes (dims={self.dims})"

    def _shape_after(self, input_shape) -> tuple:
        return tuple(input_shape[d - 1] for d in self.dims)

    def _function(self, input_shape):
        return functools.partial(_transpose, axes=(0, *self.dims))


def _repeat_vector(x, n):
    return jnp.repeat(x[:, None, :], n, axis=1)


class RepeatVector(_Reshaping):
    """Repeats each sample `n` times: [B, F] -> [B, n, F]."""

    sample_rank, expects = 1, "inputs [B, features]"

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = _positive_int(n, "n", "RepeatVector")

    def _shape_after(self, input_shape) -> tuple:
        return (self.n, *input_shape)

    def _function(self, input_shape):
        return functools.partial(_repeat_vector, n=self.n)


def _pad(x, padding):
    return jnp.pad(x, ((0, 0), *padding, (0, 0)))


class _Padding(_Reshaping):
    """Zeros added before and after each spatial axis (`self.padding`, pairs per axis)."""

    def _shape_after(self, input_shape) -> tuple:
        spatial = [n + a + b for n, (a, b) in zip(input_shape, self.padding)]
        return (*spatial, input_shape[-1])

    def _function(self, input_shape):
        return functools.partial(_pad, padding=self.padding)


class ZeroPadding1D(_Padding):
    """Zeros before and after the steps: [B, T, C] -> [B, T + before + after, C]; `padding` an int or
    (before, after)."""

    sample_rank, expects = 2, "inputs [B, steps, channels]"

    def __init__(self, padding=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = (_amounts(padding, "padding", "ZeroPadding1D", (1, 2)),)
        self.data_format = _data_format(data_format, "ZeroPadding1D")


class ZeroPadding2D(_Padding):
    """Zero rows and columns around each image: [B, H, W, C] -> [B, H + top + bottom, W + left + right, C];
    `padding` an int, (height, width) or ((top, bottom), (left, right))."""

    sample_rank, expects = 3, "inputs [B, height, width, channels]"

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = _amounts_2d(padding, "padding", "ZeroPadding2D")
        self.data_format = _data_format(data_format, "ZeroPadding2D")


def _crop(x, cropping):
    spatial = tuple(slice(a, x.shape[i + 1] - b) for i, (a, b) in enumerate(cropping))
    return x[(slice(None), *spatial)]


class _Cropping(_Reshaping):
    """Entries cut off before and after each spatial axis (`self.cropping`, pairs per axis)."""

    def _shape_after(self, input_shape) -> tuple:
        spatial = [n - a - b for n, (a, b) in zip(input_shape, self.cropping)]
        if min(spatial) < 1:
            raise ValueError(f"{type(self).__name__} '{self.name}': cropping={self.cropping} leaves nothing of "
                             f"samples of shape {input_shape}; crop less than each spatial size.")
        return (*spatial, input_shape[-1])

    def _function(self, input_shape):
        return functools.partial(_crop, cropping=self.cropping)


class Cropping1D(_Cropping):
    """Cuts steps off both ends: [B, T, C] -> [B, T - before - after, C]; `cropping` an int or
    (before, after)."""

    sample_rank, expects = 2, "inputs [B, steps, channels]"

    def __init__(self, cropping=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.cropping = (_amounts(cropping, "cropping", "Cropping1D", (1, 2)),)


class Cropping2D(_Cropping):
    """Cuts rows and columns off each image: [B, H, W, C] -> [B, H - top - bottom, W - left - right, C];
    `cropping` an int, (height, width) or ((top, bottom), (left, right))."""

    sample_rank, expects = 3, "inputs [B, height, width, channels]"

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.cropping = _amounts_2d(cropping, "cropping", "Cropping2D")
        self.data_format = _data_format(data_format, "Cropping2D")


def _upsample(x, size, method):
    """Each of the spatial axes 1, 2, ... of [B, ..., C] made `size` times longer, as Keras: "nearest"
    repeats entries; other methods are jax.image.resize without antialiasing."""
    if method == "nearest":
        for axis, factor in enumerate(size, start=1):
            x = jnp.repeat(x, factor, axis=axis)
        return x
    shape = (x.shape[0], *(n * f for n, f in zip(x.shape[1:], size)), x.shape[-1])
    return jax.image.resize(x, shape, method=method, antialias=False)


class _UpSampling(_Reshaping):
    def _shape_after(self, input_shape) -> tuple:
        return (*(n * f for n, f in zip(input_shape, self.size)), input_shape[-1])

    def _function(self, input_shape):
        return functools.partial(_upsample, size=self.size, method=self.interpolation)


class UpSampling1D(_UpSampling):
    """Repeats each step `size` times: [B, T, C] -> [B, T * size, C]."""

    sample_rank, expects, interpolation = 2, "inputs [B, steps, channels]", "nearest"

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = (_positive_int(size, "size", "UpSampling1D"),)


class UpSampling2D(_UpSampling):
    """Enlarges each image `size` = (rows, columns) times: [B, H, W, C] -> [B, H * rows, W * columns, C];
    `interpolation` "nearest" repeats pixels, "bilinear" (or "bicubic", "lanczos3", "lanczos5")
    interpolates, as Keras's jax.image.resize."""

    sample_rank, expects = 3, "inputs [B, height, width, channels]"

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        self.size = _pair(size, "size", "UpSampling2D")
        self.data_format = _data_format(data_format, "UpSampling2D")
        if not isinstance(interpolation, str) or interpolation.lower() not in _RESIZE_METHODS:
            raise ValueError(f"UpSampling2D: `interpolation` must be one of {', '.join(map(repr, _RESIZE_METHODS))}; "
                             f"got interpolation={interpolation!r}. Pass e.g. interpolation='bilinear'.")
        self.interpolation = interpolation.lower()
