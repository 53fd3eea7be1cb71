"""Dense, Activation, Flatten, InputLayer, Dropout, Embedding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit import activations, regularizers
from batchfit.errors import describe
from batchfit.layers.base import (
    _FLOAT_DTYPES,
    _INTEGER_DTYPES,
    Layer,
    _autocast,
    _initial_weight,
    _jax_dtype,
    _positive_int,
    _real,
    _Regularized,
)
from batchfit.layers.initializers import get_initializer


class _AffineModule(_Regularized):
    """Shared by Dense and Conv2D: kernel, optional bias, activation, regularizers."""

    keras_weights = ("kernel", "bias")

    def __init__(self, layer: "_Affine", kernel_shape: tuple, rngs: nnx.Rngs):
        dtype = _jax_dtype(layer.variable_dtype)
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        self.kernel = nnx.Param(_initial_weight(layer.kernel_initializer, rngs.params(),
                                               kernel_shape, dtype))
        self.bias = (nnx.Param(_initial_weight(layer.bias_initializer, rngs.params(),
                                              kernel_shape[-1:], dtype))
                     if layer.use_bias else None)
        self.keras_weights = ("kernel", "bias") if layer.use_bias else ("kernel",)
        self.activation = layer.activation
        named = {"kernel": layer.kernel_regularizer, "bias": layer.bias_regularizer}
        self.weight_regularizers = tuple((k, r) for k, r in named.items()
                                         if r is not None and getattr(self, k) is not None)

    def _kernel(self):
        return self.kernel[...].astype(self.compute_dtype)

    def _finish(self, y):
        if self.bias is not None:
            y = y + self.bias[...].astype(self.compute_dtype)
        return self.activation(y)


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
        x = _autocast(x, self.compute_dtype)
        if x.ndim < 2 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"Dense built for {self.kernel.shape[0]} input features got "
                             f"{describe(x)}. Give data shaped [B, ..., {self.kernel.shape[0]}] "
                             "or rebuild the model for this shape.")
        return self._finish(jnp.matmul(x, self._kernel()))


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

    def make_module(self, input_shape, rngs: nnx.Rngs) -> DenseModule:
        return DenseModule(self, (int(input_shape[-1]), self.units), rngs)


class FunctionModule(nnx.Module):
    """Built weightless layer (Activation, Flatten, InputLayer): applies a fixed function."""

    keras_weights = ()

    def __init__(self, function, compute_dtype="float32"):
        self.function, self.compute_dtype = function, _jax_dtype(compute_dtype)

    def __call__(self, x):
        return self.function(_autocast(x, self.compute_dtype))


class Activation(Layer):
    """Applies an activation function, given by name or as a callable."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(self.activation, self.compute_dtype)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


class Flatten(Layer):
    """Flattens each sample to a vector: [B, d1, d2, ...] -> [B, d1 * d2 * ...]."""

    def compute_output_shape(self, input_shape) -> tuple:
        if None in tuple(input_shape):
            self._fail(input_shape, "a fully known shape")
        return (math.prod(input_shape),)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(_flatten, self.compute_dtype)


class InputLayer(Layer):
    """Declares the per-sample input shape of a Sequential; computes the identity.

    Its `dtype` may also be an integer name ("int32" for token ids, as Keras's
    `Input(shape, dtype="int32")`): every input is then converted to it.
    """

    _accepted_dtypes = _FLOAT_DTYPES + _INTEGER_DTYPES

    def __init__(self, shape=None, **kwargs):
        if kwargs.get("dtype") is None:             # Keras's Input is float32 under any global policy
            kwargs["dtype"] = "float32"
        super().__init__(**({"input_shape": shape, **kwargs} if shape is not None else kwargs))

    def make_module(self, input_shape, rngs: nnx.Rngs) -> FunctionModule:
        return FunctionModule(activations.linear, self.compute_dtype)


class DropoutModule(nnx.Module):
    """Built `Dropout`: in training, zero each entry with prob `rate`, scale the rest 1/(1-rate)."""

    keras_weights = ()

    def __init__(self, rate: float, rngs: nnx.Rngs, deterministic: bool = True,
                 compute_dtype="float32"):
        self.rate, self.rngs, self.deterministic = rate, rngs, deterministic
        self.compute_dtype = _jax_dtype(compute_dtype)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs.dropout(), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class Dropout(Layer):
    """Inverted dropout, active only in training mode; `seed` fixes its own stream."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _real(rate, "rate", "Dropout", "a number in [0, 1), the fraction of inputs "
                          "to drop", lambda r: 0 <= r < 1, 0.5)
        self.seed = seed

    def make_module(self, input_shape, rngs: nnx.Rngs) -> DropoutModule:
        if self.seed is not None:
            return DropoutModule(self.rate, nnx.Rngs(dropout=self.seed),
                                 compute_dtype=self.compute_dtype)
        key = rngs.dropout() if "dropout" in rngs else rngs.params()
        return DropoutModule(self.rate, nnx.Rngs(dropout=key), compute_dtype=self.compute_dtype)


class EmbeddingModule(_Regularized):
    """Built `Embedding`: int ids [B, ...] -> rows of `embeddings` [B, ..., output_dim].

    An id outside [0, input_dim) (too large, or negative) gives a row of NaN, never another
    row: a compiled step cannot raise, and NaN makes the loss show the bad id.
    """

    keras_weights = ("embeddings",)

    def __init__(self, layer: "Embedding", rngs: nnx.Rngs):
        shape = (layer.input_dim, layer.output_dim)
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        self.embeddings = nnx.Param(_initial_weight(layer.embeddings_initializer, rngs.params(),
                                                   shape, _jax_dtype(layer.variable_dtype)))
        if layer.embeddings_regularizer is not None:
            self.weight_regularizers = (("embeddings", layer.embeddings_regularizer),)
        self.mask_zero = layer.mask_zero

    def compute_mask(self, x, mask=None):
        """The Keras mask of the output: `ids != 0` [B, ...] with mask_zero, else None."""
        return jnp.asarray(x) != 0 if self.mask_zero else None

    def __call__(self, x):
        ids = jnp.asarray(x).astype(jnp.int32)
        table = self.embeddings[...].astype(self.compute_dtype)
        # A negative id goes past the end, where "fill" mode gives NaN, instead of wrapping.
        ids = jnp.where(ids < 0, table.shape[0], ids)
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


class Embedding(Layer):
    """Maps integer ids in [0, input_dim) to learned vectors of size output_dim.

    Ids may come as any integer or float dtype (floats are truncated to int32) and are never
    cast to `dtype`, which sets the table's. An id outside [0, input_dim), such as input_dim
    or -1, gives a row of NaN, so the loss turns NaN and the bad data shows; it never wraps
    around to another row. (Keras on TensorFlow raises there on the CPU; a compiled step
    cannot raise.) With `mask_zero=True`, id 0 is padding: the layer gives the mask `ids != 0`
    [B, T] that later layers (LSTM, GRU, ...) use to skip those steps, as Keras does.

    >>> import jax.numpy as jnp
    >>> from batchfit import layers
    >>> emb = layers.build_stack([layers.Embedding(3, 1, embeddings_initializer="ones")], (2,))
    >>> emb(jnp.array([[2, 3], [-1, 0]]))[..., 0].tolist()
    [[1.0, nan], [nan, 1.0]]
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(mask_zero, bool):
            raise TypeError(f"Embedding: `mask_zero` must be True or False; got mask_zero={mask_zero!r}.")
        self.mask_zero = mask_zero
        self.input_dim = _positive_int(input_dim, "input_dim", "Embedding")
        self.output_dim = _positive_int(output_dim, "output_dim", "Embedding")
        self.embeddings_initializer = get_initializer(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)

    def compute_output_shape(self, input_shape) -> tuple:
        return (*input_shape, self.output_dim)

    def make_module(self, input_shape, rngs: nnx.Rngs) -> EmbeddingModule:
        return EmbeddingModule(self, rngs)
