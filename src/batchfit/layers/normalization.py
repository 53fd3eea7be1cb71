"""BatchNormalization and LayerNormalization with Keras defaults.

Both compute their statistics and the normalization at float32 or wider, also for a
bfloat16/float16 layer (whose inputs are cast to that dtype first), and return the layer's
compute dtype, as Keras 3 does: a variance summed in half precision loses most of its digits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype, _real


def _epsilon(value, owner: str) -> float:
    return _real(value, "epsilon", owner, "a finite number > 0, added to the variance",
                 lambda e: e > 0, 1e-3)


def _filled(value, shape, dtype):
    """A constant weight, made on the host and transferred (an eager jnp.ones or jnp.asarray compiles a program)."""
    return jax.device_put(np.full(shape, value, np.dtype(dtype)))


class _NormModule(nnx.Module):
    """Shared by the normalizations: gamma/beta over `axes` of [B, ...] (axis 0 = batch)."""

    def _setup(self, layer, input_shape):
        rank, axis = len(input_shape) + 1, layer.axis
        self.axes = tuple(sorted({a % rank for a in ((axis,) if isinstance(axis, int) else axis)}))
        if not self.axes or 0 in self.axes or any(input_shape[a - 1] is None for a in self.axes):
            raise ValueError(f"{type(layer).__name__} '{layer.name}': axis={axis!r} must name "
                             f"known non-batch axes of [B, *{tuple(input_shape)}]; use axis=-1.")
        self.shape = tuple(input_shape[a - 1] for a in self.axes)
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        self.variable_dtype = _jax_dtype(layer.variable_dtype)
        self.gamma = nnx.Param(_filled(1, self.shape, self.variable_dtype)) if layer.scale else None
        self.beta = nnx.Param(_filled(0, self.shape, self.variable_dtype)) if layer.center else None
        self.epsilon = layer.epsilon

    def _widened(self, x):
        """`x` cast to the layer's compute dtype, then to the statistics' (float32 or wider)."""
        x = _autocast(x, self.compute_dtype)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))

    def _normalize(self, x, mean, variance):
        """(x - mean) / sqrt(variance + epsilon) * gamma + beta in x's dtype, then cast to the
        compute dtype; stats broadcastable to x."""
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(x.ndim))
        y = (x - mean) * jax.lax.rsqrt(variance + self.epsilon)
        y = y if self.gamma is None else y * self.gamma[...].astype(x.dtype).reshape(shape)
        y = y if self.beta is None else y + self.beta[...].astype(x.dtype).reshape(shape)
        return y.astype(self.compute_dtype)


class BatchNormModule(_NormModule):
    """Built `BatchNormalization`: batch statistics in training, moving ones in inference."""

    keras_weights = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, layer: "BatchNormalization", input_shape, use_running_average=True):
        self._setup(layer, input_shape)
        self.moving_mean = nnx.BatchStat(_filled(0, self.shape, self.variable_dtype))
        self.moving_variance = nnx.BatchStat(_filled(1, self.shape, self.variable_dtype))
        self.keras_weights = tuple(n for n in type(self).keras_weights
                                   if getattr(self, n) is not None)
        self.momentum, self.use_running_average = layer.momentum, use_running_average

    def __call__(self, x):
        x = self._widened(x)
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(x.ndim))
        if self.use_running_average:
            return self._normalize(x, self.moving_mean[...].astype(x.dtype).reshape(shape),
                                   self.moving_variance[...].astype(x.dtype).reshape(shape))
        reduce = tuple(a for a in range(x.ndim) if a not in self.axes)
        mean, variance = jnp.mean(x, axis=reduce), jnp.var(x, axis=reduce)  # biased, as Keras
        self.moving_mean[...] = self._moved(self.moving_mean[...], mean)
        self.moving_variance[...] = self._moved(self.moving_variance[...], variance)
        return self._normalize(x, mean.reshape(shape), variance.reshape(shape))

    def _moved(self, moving, batch_statistic):
        """moving * momentum + batch_statistic * (1 - momentum), kept in the moving dtype."""
        m = self.momentum
        moved = moving * m + jax.lax.stop_gradient(batch_statistic) * (1.0 - m)
        return moved.astype(moving.dtype)


class BatchNormalization(Layer):
    """Keras batch norm: moving = moving * momentum + batch_stat * (1 - momentum)."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.momentum = _real(momentum, "momentum", "BatchNormalization",
                              "a number in [0, 1], the weight of the old moving statistics",
                              lambda m: 0 <= m <= 1, 0.99)
        self.axis, self.epsilon = axis, _epsilon(epsilon, "BatchNormalization")
        self.center, self.scale = bool(center), bool(scale)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> BatchNormModule:
        return BatchNormModule(self, tuple(input_shape))


class LayerNormModule(_NormModule):
    """Built `LayerNormalization`: normalizes each sample over `axes` (biased variance)."""

    keras_weights = ("gamma", "beta")

    def __init__(self, layer: "LayerNormalization", input_shape):
        self._setup(layer, input_shape)
        self.keras_weights = tuple(n for n in ("gamma", "beta") if getattr(self, n) is not None)

    def __call__(self, x):
        x = self._widened(x)
        mean = jnp.mean(x, axis=self.axes, keepdims=True)
        return self._normalize(x, mean, jnp.var(x, axis=self.axes, keepdims=True))


class LayerNormalization(Layer):
    """Keras layer normalization over `axis` (default the last), with gamma and beta."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.epsilon = axis, _epsilon(epsilon, "LayerNormalization")
        self.center, self.scale = bool(center), bool(scale)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> LayerNormModule:
        return LayerNormModule(self, tuple(input_shape))
