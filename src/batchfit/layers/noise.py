"""Noise layers as Keras: GaussianNoise, GaussianDropout, SpatialDropout1D, SpatialDropout2D.

Active only in training mode (`deterministic=False`), the identity in inference. Each built layer
holds its own `nnx.Rngs` stream, as Dropout does: `seed=` fixes it, otherwise it is drawn from the
model's seed. The draws cannot equal Keras's (another random generator); their laws do.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype, _real
from batchfit.layers.reshaping import _data_format

__all__ = ["GaussianNoise", "GaussianDropout", "SpatialDropout1D", "SpatialDropout2D"]


class NoiseModule(nnx.Module):
    """Built noise layer: in training, `noisy(x, key)` of the layer; in inference, x."""

    keras_weights = ()

    def __init__(self, noisy, active: bool, rngs: nnx.Rngs, compute_dtype="float32"):
        # `noisy`: a functools.partial of a module-level function, static and free of the Layer
        self.noisy, self.active, self.rngs, self.deterministic = noisy, active, rngs, True
        self.compute_dtype = _jax_dtype(compute_dtype)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        if self.deterministic or not self.active:
            return x
        return self.noisy(x, self.rngs.dropout())


class _Noise(Layer):
    """Shared by the noise layers: a `seed` and `_noisy(x, key)`, applied in training when `_active`."""

    def make_module(self, input_shape, rngs: nnx.Rngs) -> NoiseModule:
        self.compute_output_shape(input_shape)
        if self.seed is not None:
            stream = nnx.Rngs(dropout=self.seed)
        else:
            stream = nnx.Rngs(dropout=rngs.dropout() if "dropout" in rngs else rngs.params())
        return NoiseModule(self._noisy, self._active, stream, self.compute_dtype)


def _gaussian_noise(x, key, stddev):
    return x + stddev * jax.random.normal(key, x.shape, x.dtype)


def _gaussian_dropout(x, key, rate):
    stddev = math.sqrt(rate / (1.0 - rate))
    return x * (1.0 + stddev * jax.random.normal(key, x.shape, x.dtype))


def _spatial_dropout(x, key, rate):
    """Keeps each channel of each sample with probability 1 - rate, scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0], *[1] * (x.ndim - 2), x.shape[-1]))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def _seed(value, owner: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ValueError(f"{owner}: `seed` must be an int or None; got seed={value!r}. Pass e.g. seed=1337.")
    return value


class GaussianNoise(_Noise):
    """Adds zero-mean Gaussian noise of standard deviation `stddev` in training: x + stddev * N(0, 1)."""

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = _real(stddev, "stddev", "GaussianNoise", "a number >= 0, the standard deviation of "
                            "the noise", lambda s: s >= 0, 0.1)
        self.seed, self._active = _seed(seed, "GaussianNoise"), self.stddev > 0
        self._noisy = functools.partial(_gaussian_noise, stddev=self.stddev)


class GaussianDropout(_Noise):
    """Multiplies by Gaussian noise of mean 1 and standard deviation sqrt(rate / (1 - rate)) in
    training: the variance of Dropout(rate) without zeros."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _real(rate, "rate", "GaussianDropout", "a number in [0, 1), as Dropout's", lambda r: 0 <= r < 1,
                          0.2)
        self.seed, self._active = _seed(seed, "GaussianDropout"), self.rate > 0
        self._noisy = functools.partial(_gaussian_dropout, rate=self.rate)


class _SpatialDropout(_Noise):
    """Dropout of whole channels: one keep/drop draw per sample and channel, over all steps or pixels;
    kept entries are scaled by 1 / (1 - rate)."""

    sample_rank = 0

    def __init__(self, rate, seed=None, name=None, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.rate = _real(rate, "rate", type(self).__name__, "a number in [0, 1), the fraction of channels to "
                          "drop", lambda r: 0 <= r < 1, 0.5)
        self.seed, self._active = _seed(seed, type(self).__name__), self.rate > 0
        self._noisy = functools.partial(_spatial_dropout, rate=self.rate)

    def compute_output_shape(self, input_shape) -> tuple:
        if len(input_shape) != self.sample_rank:
            self._fail(input_shape, self.expects)
        return tuple(input_shape)


class SpatialDropout1D(_SpatialDropout):
    """Drops whole channels of [B, T, C] in training (noise shape [B, 1, C])."""

    sample_rank, expects = 2, "inputs [B, steps, channels]"


class SpatialDropout2D(_SpatialDropout):
    """Drops whole channels of [B, H, W, C] in training (noise shape [B, 1, 1, C]); channels-last only."""

    sample_rank, expects = 3, "inputs [B, height, width, channels]"

    def __init__(self, rate, data_format=None, seed=None, name=None, dtype=None, **kwargs):
        super().__init__(rate, seed=seed, name=name, dtype=dtype, **kwargs)
        self.data_format = _data_format(data_format, "SpatialDropout2D")
