"""Dense, Activation, Flatten, Input, Dropout, Embedding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit import activations, regularizers
from batchfit.errors import describe
from batchfit.layers.base import Layer, _positive_int, _Regularized
from batchfit.layers.initializers import get_initializer


class _AffineModule(_Regularized):
    """Shared by Dense and Conv2D: kernel, optional bias, activation, regularizers."""

    keras_weights = ("kernel", "bias")

    def __init__(self, layer: "_Affine", kernel_shape: tuple, rngs: nnx.Rngs):
        f32 = jnp.float32
        self.kernel = nnx.Param(layer.kernel_initializer(rngs.params(), kernel_shape, f32))
        self.bias = (nnx.Param(layer.bias_initializer(rngs.params(), kernel_shape[-1:], f32))
                     if layer.use_bias else None)
        self.keras_weights = ("kernel", "bias") if layer.use_bias else ("kernel",)
        self.activation = layer.activation
        named = {"kernel": layer.kernel_regularizer, "bias": layer.bias_regularizer}
        self.weight_regularizers = tuple((k, r) for k, r in named.items()
                                         if r is not None and getattr(self, k) is not None)

    def _finish(self, y):
        return self.activation(y if self.bias is None else y + self.bias[...])


class _Affine(Layer):
    """Shared config of Dense and Conv2D."""

    def __init__(self, activation, use_bias, kernel_initializer, bias_initializer,
                 kernel_regularizer, bias_regularizer, **kwargs):
        super().__init__(**kwargs)
        self.activation, self.use_bias = activations.get(activation), bool(use_bias)
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)


class DenseModule(_AffineModule):
    """Built `Dense`: activation(x @ kernel + bias) on the last axis; kernel [in, units]."""

    def __call__(self, x):
        if x.ndim < 2 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"Dense built for {self.kernel.shape[0]} input features got "
                             f"{describe(x)}. Give data shaped [B, ..., {self.kernel.shape[0]}] "
                             "or rebuild the model for this shape.")
        return self._finish(jnp.matmul(x, self.kernel[...]))


class Dense(_Affine):
    """Densely connected layer, Keras defaults: glorot_uniform kernel [in, units], zero bias."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 **kwargs):
        self.units = _positive_int(units, "units", "Dense")
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, **kwargs)

    def compute_output_shape(self, input_shape) -> tuple:
        if len(input_shape) < 1 or input_shape[-1] is None:
            self._fail(input_shape, "a known last axis")
        return (*input_shape[:-1], self.units)

    def build(self, input_shape, rngs: nnx.Rngs) -> DenseModule:
        return DenseModule(self, (int(input_shape[-1]), self.units), rngs)


class FunctionModule(nnx.Module):
    """Built weightless layer (Activation, Flatten, InputLayer): applies a fixed function."""

    keras_weights = ()

    def __init__(self, function):
        self.function = function

    def __call__(self, x):
        return self.function(x)


class Activation(Layer):
    """Applies an activation function, given by name or as a callable."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def build(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(self.activation)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


class Flatten(Layer):
    """Flattens each sample to a vector: [B, d1, d2, ...] -> [B, d1 * d2 * ...]."""

    def compute_output_shape(self, input_shape) -> tuple:
        if None in tuple(input_shape):
            self._fail(input_shape, "a fully known shape")
        return (math.prod(input_shape),)

    def build(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(_flatten)


class InputLayer(Layer):
    """Declares the per-sample input shape of a Sequential; computes the identity."""

    def __init__(self, shape=None, **kwargs):
        super().__init__(**({"input_shape": shape, **kwargs} if shape is not None else kwargs))

    def build(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(activations.linear)


def Input(shape, name=None) -> InputLayer:  # noqa: N802 (the Keras name)
    """Keras `Input(shape)`; here an `InputLayer` to put first in a Sequential."""
    return InputLayer(shape=shape, name=name)


class DropoutModule(nnx.Module):
    """Built `Dropout`: in training, zero each entry with prob `rate`, scale the rest 1/(1-rate)."""

    keras_weights = ()

    def __init__(self, rate: float, rngs: nnx.Rngs, deterministic: bool = True):
        self.rate, self.rngs, self.deterministic = rate, rngs, deterministic

    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs.dropout(), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class Dropout(Layer):
    """Inverted dropout, active only in training mode; `seed` fixes its own stream."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"Dropout: `rate` must be a float in [0, 1]; got rate={rate!r}. "
                             "Pass the fraction of inputs to drop, e.g. Dropout(0.5).")
        self.rate, self.seed = float(rate), seed

    def build(self, input_shape, rngs: nnx.Rngs) -> DropoutModule:
        if self.seed is not None:
            return DropoutModule(self.rate, nnx.Rngs(dropout=self.seed))
        key = rngs.dropout() if "dropout" in rngs else rngs.params()
        return DropoutModule(self.rate, nnx.Rngs(dropout=key))


class EmbeddingModule(_Regularized):
    """Built `Embedding`: int ids [B, ...] -> rows of `embeddings` [B, ..., output_dim]."""

    keras_weights = ("embeddings",)

    def __init__(self, layer: "Embedding", rngs: nnx.Rngs):
        shape = (layer.input_dim, layer.output_dim)
        self.embeddings = nnx.Param(layer.embeddings_initializer(rngs.params(), shape, jnp.float32))
        if layer.embeddings_regularizer is not None:
            self.weight_regularizers = (("embeddings", layer.embeddings_regularizer),)

    def __call__(self, x):
        return jnp.take(self.embeddings[...], jnp.asarray(x).astype(jnp.int32), axis=0)


class Embedding(Layer):
    """Maps integer ids in [0, input_dim) to learned vectors of size output_dim."""

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = _positive_int(input_dim, "input_dim", "Embedding")
        self.output_dim = _positive_int(output_dim, "output_dim", "Embedding")
        self.embeddings_initializer = get_initializer(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)

    def compute_output_shape(self, input_shape) -> tuple:
        return (*input_shape, self.output_dim)

    def build(self, input_shape, rngs: nnx.Rngs) -> EmbeddingModule:
        return EmbeddingModule(self, rngs)
