"""Keras-named activation functions: strings are looked up, callables pass through."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from batchfit import _logits
from batchfit._keras_names import missing as _missing
from batchfit.registry import Registry

__all__ = [
    "ACTIVATIONS", "get", "relu", "sigmoid", "softmax", "log_softmax", "tanh", "gelu",
    "silu", "swish", "linear", "elu", "selu", "softplus", "softsign", "leaky_relu",
    "relu6", "hard_sigmoid", "exponential",
]

ACTIVATIONS = Registry("activation")


@ACTIVATIONS.register("relu")
def relu(x):
    """max(x, 0), elementwise.

    >>> float(relu(jnp.float32(-2.0)))
    0.0
    """
    return jax.nn.relu(x)


@ACTIVATIONS.register("sigmoid")
def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise.

    Inside a traced forward pass the output remembers `x` as its logits, as Keras on TensorFlow
    does: binary crossentropy of this output is then computed from `x`, unclipped (see `_logits`).

    >>> float(sigmoid(jnp.float32(0.0)))
    0.5
    """
    return _logits.record(jax.nn.sigmoid(x), x, "sigmoid")


@ACTIVATIONS.register("softmax")
def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)) over `axis` (Keras default: the last axis).

    Inside a traced forward pass the output remembers `x` as its logits, as Keras on TensorFlow
    does: categorical crossentropy over the same axis is then computed from `x` (see `_logits`).

    >>> [round(float(p), 4) for p in softmax(jnp.array([0.0, jnp.log(3.0)]))]
    [0.25, 0.75]
    """
    output = jax.nn.softmax(x, axis=axis)
    if isinstance(axis, int) and not isinstance(axis, bool):
        _logits.record(output, x, "softmax", axis)
    return output


@ACTIVATIONS.register("log_softmax")
def log_softmax(x, axis: int = -1):
    """log(softmax(x)) over `axis`, computed stably."""
    return jax.nn.log_softmax(x, axis=axis)


@ACTIVATIONS.register("tanh")
def tanh(x):
    """Hyperbolic tangent, elementwise."""
    return jnp.tanh(x)


@ACTIVATIONS.register("gelu")
def gelu(x, approximate: bool = False):
    """x * Phi(x) with the exact erf form by default, as Keras 3.

    >>> round(float(gelu(jnp.float32(1.0))), 4)
    0.8413
    """
    return jax.nn.gelu(x, approximate=approximate)


@ACTIVATIONS.register("silu", "swish")
def silu(x):
    """x * sigmoid(x), elementwise (Keras calls it both silu and swish)."""
    return jax.nn.silu(x)


swish = silu


@ACTIVATIONS.register("linear")
def linear(x):
    """The identity: returns `x` unchanged."""
    return x


@ACTIVATIONS.register("elu")
def elu(x, alpha: float = 1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (Keras alpha=1.0)."""
    return jax.nn.elu(x, alpha=alpha)


@ACTIVATIONS.register("selu")
def selu(x):
    """Scaled ELU with the fixed constants of Klambauer et al. (2017)."""
    return jax.nn.selu(x)


@ACTIVATIONS.register("softplus")
def softplus(x):
    """log(1 + exp(x)), elementwise.

    >>> round(float(softplus(jnp.float32(0.0))), 4)
    0.6931
    """
    return jax.nn.softplus(x)


@ACTIVATIONS.register("softsign")
def softsign(x):
    """x / (1 + |x|), elementwise."""
    return jax.nn.soft_sign(x)


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(x, negative_slope: float = 0.2):
    """x for x >= 0, negative_slope * x otherwise (Keras 3 function default 0.2).

    >>> round(float(leaky_relu(jnp.float32(-1.0))), 4)
    -0.2
    """
    return jax.nn.leaky_relu(x, negative_slope=negative_slope)


@ACTIVATIONS.register("relu6")
def relu6(x):
    """min(max(x, 0), 6), elementwise."""
    return jax.nn.relu6(x)


@ACTIVATIONS.register("hard_sigmoid")
def hard_sigmoid(x):
    """relu6(x + 3) / 6, the Keras 3 piecewise-linear sigmoid."""
    return jax.nn.relu6(x + 3.0) / 6.0


@ACTIVATIONS.register("exponential")
def exponential(x):
    """exp(x), elementwise."""
    return jnp.exp(x)


def get(identifier) -> Callable:
    """The activation for `identifier`: a name, a callable (returned as is) or None (linear).

    >>> get(None) is linear, get("ReLU") is relu
    (True, True)
    """
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        return ACTIVATIONS.get(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        f"`activation` must be a name, a callable or None; got {type(identifier).__name__} "
        f"{identifier!r}. Pass e.g. activation='relu' or activation=jax.nn.relu.")


__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
