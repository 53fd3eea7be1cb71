"""Keras-named layers: config objects that build Flax NNX modules once shapes are known.

`layer.build(input_shape, rngs)` returns a fresh NNX module for inputs [B, *input_shape].
Built modules start in inference mode; `module.train()` / `module.eval()` switch Dropout
(`deterministic`) and BatchNormalization (`use_running_average`). Each Dropout holds its own
`nnx.Rngs` stream, whose key and count are NNX state advanced on every training call.
"""

from __future__ import annotations

import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import activations, regularizers
from batchfit.errors import describe
from batchfit.registry import Registry

__all__ = [
    "INITIALIZERS", "get_initializer", "Layer", "Dense", "Activation", "Dropout", "Flatten",
    "BatchNormalization", "LayerNormalization", "Embedding", "Conv2D", "MaxPooling2D",
    "InputLayer", "Input", "Stack", "build_stack", "keras_weight_variables",
    "regularization_penalty", "layer_from_config",
]

INITIALIZERS = Registry("initializer")
LAYERS = Registry("layer")


def _fans(shape) -> tuple[float, float]:
    if len(shape) < 2:  # Keras: a vector counts its length as both fans
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale: float, mode: str, distribution: str):
    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = _fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        stddev = math.sqrt(variance) / 0.87962566103423978  # std of N(0, 1) cut at +-2
        return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return init


for _names, _init in {
    ("glorot_uniform",): _variance_scaling(1.0, "fan_avg", "uniform"),
    ("glorot_normal",): _variance_scaling(1.0, "fan_avg", "normal"),
    ("he_uniform",): _variance_scaling(2.0, "fan_in", "uniform"),
    ("he_normal",): _variance_scaling(2.0, "fan_in", "normal"),
    ("lecun_uniform",): _variance_scaling(1.0, "fan_in", "uniform"),
    ("lecun_normal",): _variance_scaling(1.0, "fan_in", "normal"),
    ("zeros",): lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype),
    ("ones",): lambda key, shape, dtype=jnp.float32: jnp.ones(shape, dtype),
    ("uniform", "random_uniform"):
        lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -0.05, 0.05),
    ("normal", "random_normal"):
        lambda key, shape, dtype=jnp.float32: 0.05 * jax.random.normal(key, shape, dtype),
}.items():
    INITIALIZERS.register(*_names)(_init)


def get_initializer(identifier):
    """The Keras initializer `init(key, shape, dtype)` for a name; callables pass through.

    >>> float(get_initializer("ones")(None, (2, 3)).sum())
    6.0
    """
    if isinstance(identifier, str):
        return INITIALIZERS.get(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(f"An initializer must be a name or a callable (key, shape, dtype); got "
                    f"{type(identifier).__name__}. Pass e.g. 'glorot_uniform'.")


def _positive_int(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int; got {name}={value!r}. "
                         f"Pass e.g. {owner}({name}=32).")
    return int(value)


def _pair(value, name: str, owner: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{owner}: `{name}` must be an int or a pair of ints; got "
                         f"{name}={value!r}. Pass e.g. {name}=(3, 3).")
    return tuple(_positive_int(v, name, owner) for v in pair)


def _padding(value, owner: str) -> str:
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{owner}: `padding` must be 'valid' or 'same'; got {value!r}.")
    return value.lower()


def _shape(value, name: str) -> tuple:
    shape = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if any(d is not None and (isinstance(d, bool) or int(d) < 1) for d in shape):
        raise ValueError(f"`{name}` must be a tuple of positive ints (or None), without the "
                         f"batch axis; got {value!r}. Pass e.g. {name}=(28, 28, 1).")
    return tuple(None if d is None else int(d) for d in shape)


class Layer:
    """Base config: `build(input_shape, rngs)` -> NNX module for [B, *input_shape]."""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs).arguments
        bound.pop("self")
        extra = bound.pop("kwargs", {})
        self._arguments = {**bound, **extra}  # for get_config
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LAYERS.register(cls.__name__)(cls)

    def __init__(self, *, input_shape=None, input_dim=None, name=None):
        input_shape = (input_dim,) if input_dim is not None else input_shape
        self.input_shape = None if input_shape is None else _shape(input_shape, "input_shape")
        snake = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(self).__name__)  # as Keras
        self.name = name or re.sub(r"([a-z])([A-Z])", r"\1_\2", snake).lower()

    def compute_output_shape(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample `input_shape` (the identity here)."""
        return tuple(input_shape)

    def build(self, input_shape, rngs: nnx.Rngs) -> nnx.Module:
        """A fresh module for [B, *input_shape]; weights drawn from `rngs.params()`."""
        raise NotImplementedError(f"{type(self).__name__} must define build(input_shape, rngs).")

    def get_config(self) -> dict:
        """{"class_name", "config"}: the constructor arguments as given (values not converted)."""
        return {"class_name": type(self).__name__, "config": dict(self._arguments)}

    def _fail(self, input_shape, needs: str):
        raise ValueError(f"{type(self).__name__} '{self.name}' needs {needs}; got per-sample "
                         f"shape {tuple(input_shape)}. Reshape the data or add a layer first.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def layer_from_config(config: dict) -> Layer:
    """The layer that `layer.get_config()` described."""
    return LAYERS.get(config["class_name"])(**config["config"])


class _Regularized(nnx.Module):
    """Mixin: `penalty()` sums regularizer(weight) over (name, regularizer) pairs."""

    weight_regularizers: tuple = ()

    def penalty(self):
        """Scalar float32: the sum of this module's weight penalties (Keras `layer.losses`)."""
        total = jnp.zeros((), jnp.float32)
        for name, regularizer in self.weight_regularizers:
            total = total + regularizer(getattr(self, name)[...])
        return total


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


class Conv2DModule(_AffineModule):
    """Built `Conv2D`: [B, H, W, C] -> [B, H', W', filters]; kernel [kh, kw, C, filters]."""

    def __init__(self, layer: "Conv2D", kernel_shape: tuple, rngs: nnx.Rngs):
        super().__init__(layer, kernel_shape, rngs)
        self.strides, self.padding = layer.strides, layer.padding.upper()

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(x, self.kernel[...], self.strides, self.padding,
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

    def build(self, input_shape, rngs: nnx.Rngs) -> Conv2DModule:
        return Conv2DModule(self, (*self.kernel_size, int(input_shape[-1]), self.filters), rngs)


class MaxPoolModule(nnx.Module):
    """Built `MaxPooling2D`: the maximum over each window, per channel."""

    keras_weights = ()

    def __init__(self, pool_size, strides, padding: str):
        self.pool_size, self.strides, self.padding = pool_size, strides, padding.upper()

    def __call__(self, x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *self.pool_size, 1),
                                     (1, *self.strides, 1), self.padding)


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

    def build(self, input_shape, rngs: nnx.Rngs) -> MaxPoolModule:
        return MaxPoolModule(self.pool_size, self.strides, self.padding)


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


class Stack(nnx.Module):
    """A built Sequential: applies `layers` (an nnx.List of modules) in order."""

    def __init__(self, modules, layer_names, input_shape, output_shape):
        self.layers = nnx.List(list(modules))
        self.layer_names = tuple(layer_names)  # unique: "dense", "dense_1", ...
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)

    def __call__(self, x):
        for module in self.layers:
            x = module(x)
        return x


def _unique_names(layers) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
        names.append(layer.name if counts[layer.name] == 1
                     else f"{layer.name}_{counts[layer.name] - 1}")
    return names


def _check_declared(layer: Layer, index: int, shape: tuple) -> None:
    declared = layer.input_shape
    if declared is not None and (len(declared) != len(shape) or any(
            d is not None and d != s for d, s in zip(declared, shape))):
        raise ValueError(
            f"Layer {index} ({type(layer).__name__} '{layer.name}') declares input_shape="
            f"{declared}, but its actual per-sample input shape is {tuple(shape)}. Set "
            f"input_shape={tuple(shape)} (without the batch axis), or drop it to infer it.")


def _initial_shape(layers, input_shape) -> tuple:
    shape = layers[0].input_shape if input_shape is None else _shape(input_shape, "input_shape")
    if shape is None or None in shape:
        raise ValueError(f"Cannot build: the per-sample input shape {shape} is not fully known. "
                         "Pass input_shape= to the first layer, or build from a batch of data.")
    return shape


def build_stack(layers, input_shape=None, seed: int = 0) -> Stack:
    """Builds `layers` in order for per-sample `input_shape` (default: the first layer's).

    Weights come from `nnx.Rngs(params=seed, dropout=seed + 1)`, so the same seed gives the
    same weights. The Stack starts in inference mode: call `.train()` / `.eval()` to switch.
    """
    layers = list(layers)
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"build_stack needs a non-empty list of batchfit layers; got "
                        f"{[type(layer).__name__ for layer in layers]}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; got {seed!r}. Pass e.g. seed=0.")
    shape = current = _initial_shape(layers, input_shape)
    rngs = nnx.Rngs(params=int(seed), dropout=int(seed) + 1)
    modules = []
    for index, layer in enumerate(layers):
        _check_declared(layer, index, current)
        output = tuple(layer.compute_output_shape(current))
        modules.append(layer.build(current, rngs))
        current = output
    stack = Stack(modules, _unique_names(layers), shape, current)
    stack.eval()
    return stack


def keras_weight_variables(module: nnx.Module) -> list[nnx.Variable]:
    """The weights in Keras `get_weights` order, as NNX variables (set with `v[...] = array`).

    A Stack: per layer in order, that layer's `keras_weights`. A module with `keras_weights`:
    those. Any other NNX module: every nnx.Param and nnx.BatchStat in `nnx.iter_graph` order
    (depth first, attributes sorted by name, list items by index; shared variables once).
    """
    if isinstance(module, Stack):
        return [v for m in module.layers for v in keras_weight_variables(m)]
    if hasattr(module, "keras_weights"):
        return [getattr(module, n) for n in module.keras_weights
                if getattr(module, n, None) is not None]
    return [v for _, v in nnx.iter_graph(module) if isinstance(v, (nnx.Param, nnx.BatchStat))]


def regularization_penalty(module: nnx.Module):
    """Scalar float32: sum of `penalty()` over every submodule that defines it (0.0 if none)."""
    total = jnp.zeros((), jnp.float32)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module) and callable(getattr(node, "penalty", None)):
            total = total + node.penalty()
    return total
