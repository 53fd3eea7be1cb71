"""BatchNormalization and LayerNormalization with Keras defaults."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit.layers.base import Layer


class _NormModule(nnx.Module):
    """Shared by the normalizations: gamma/beta over `axes` of [B, ...] (axis 0 = batch)."""

    def _setup(self, layer, input_shape):
        rank, axis = len(input_shape) + 1, layer.axis
        self.axes = tuple(sorted({a % rank for a in ((axis,) if isinstance(axis, int) else axis)}))
        if not self.axes or 0 in self.axes or any(input_shape[a - 1] is None for a in self.axes):
            raise ValueError(f"{type(layer).__name__} '{layer.name}': axis={axis!r} must name "
                             f"known non-batch axes of [B, *{tuple(input_shape)}]; use axis=-1.")
        self.shape = tuple(input_shape[a - 1] for a in self.axes)
        self.gamma = nnx.Param(jnp.ones(self.shape, jnp.float32)) if layer.scale else None
        self.beta = nnx.Param(jnp.zeros(self.shape, jnp.float32)) if layer.center else None
        self.epsilon = layer.epsilon

    def _normalize(self, x, mean, variance):
        """(x - mean) / sqrt(variance + epsilon) * gamma + beta; stats broadcastable to x."""
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(x.ndim))
        y = (x - mean) * jax.lax.rsqrt(variance + self.epsilon)
        y = y if self.gamma is None else y * self.gamma[...].reshape(shape)
        return y if self.beta is None else y + self.beta[...].reshape(shape)


class BatchNormModule(_NormModule):
    """Built `BatchNormalization`: batch statistics in training, moving ones in inference."""

    keras_weights = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, layer: "BatchNormalization", input_shape, use_running_average=True):
        self._setup(layer, input_shape)
        self.moving_mean = nnx.BatchStat(jnp.zeros(self.shape, jnp.float32))
        self.moving_variance = nnx.BatchStat(jnp.ones(self.shape, jnp.float32))
        self.keras_weights = tuple(n for n in type(self).keras_weights
                                   if getattr(self, n) is not None)
        self.momentum, self.use_running_average = layer.momentum, use_running_average

    def __call__(self, x):
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(x.ndim))
        if self.use_running_average:
            return self._normalize(x, self.moving_mean[...].reshape(shape),
                                   self.moving_variance[...].reshape(shape))
        reduce = tuple(a for a in range(x.ndim) if a not in self.axes)
        mean, variance = jnp.mean(x, axis=reduce), jnp.var(x, axis=reduce)  # biased, as Keras
        m, stop = self.momentum, jax.lax.stop_gradient
        self.moving_mean[...] = self.moving_mean[...] * m + stop(mean) * (1.0 - m)
        self.moving_variance[...] = self.moving_variance[...] * m + stop(variance) * (1.0 - m)
        return self._normalize(x, mean.reshape(shape), variance.reshape(shape))


class BatchNormalization(Layer):
    """Keras batch norm: moving = moving * momentum + batch_stat * (1 - momentum)."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0 or epsilon <= 0:
            raise ValueError(f"BatchNormalization: need 0 <= momentum <= 1 and epsilon > 0; "
                             f"got momentum={momentum!r}, epsilon={epsilon!r}.")
        self.axis, self.momentum, self.epsilon = axis, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def build(self, input_shape, rngs: nnx.Rngs) -> BatchNormModule:
        return BatchNormModule(self, tuple(input_shape))


class LayerNormModule(_NormModule):
    """Built `LayerNormalization`: normalizes each sample over `axes` (biased variance)."""

    keras_weights = ("gamma", "beta")

    def __init__(self, layer: "LayerNormalization", input_shape):
        self._setup(layer, input_shape)
        self.keras_weights = tuple(n for n in ("gamma", "beta") if getattr(self, n) is not None)

    def __call__(self, x):
        mean = jnp.mean(x, axis=self.axes, keepdims=True)
        return self._normalize(x, mean, jnp.var(x, axis=self.axes, keepdims=True))


class LayerNormalization(Layer):
    """Keras layer normalization over `axis` (default the last), with gamma and beta."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.epsilon = axis, float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def build(self, input_shape, rngs: nnx.Rngs) -> LayerNormModule:
        return LayerNormModule(self, tuple(input_shape))
