"""ops: activations and the nn helpers (crossentropies, normalize)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from batchfit import _logits, activations
from batchfit.ops._core import EPSILON, _array, _unary, norm


# ----- activations ---------------------------------------------------------------------------

relu = _unary("relu", jax.nn.relu)
relu6 = _unary("relu6", jax.nn.relu6)
sigmoid = _unary("sigmoid", activations.sigmoid)
tanh = _unary("tanh", jnp.tanh)


def softmax(x, axis=-1):
    return activations.softmax(_array(x), axis=axis)


def log_softmax(x, axis=-1):
    return jax.nn.log_softmax(_array(x), axis=axis)


softplus = _unary("softplus", jax.nn.softplus)
softsign = _unary("softsign", jax.nn.soft_sign)
silu = _unary("silu", jax.nn.silu)
swish = silu


def gelu(x, approximate=True):
    """GELU; Keras's default is the tanh approximation (`approximate=True`), as jax.nn.gelu's."""
    return jax.nn.gelu(_array(x), approximate)


def elu(x, alpha=1.0):
    return jax.nn.elu(_array(x), alpha=alpha)


selu = _unary("selu", jax.nn.selu)


def leaky_relu(x, negative_slope=0.2):
    """x for x >= 0, else negative_slope * x; Keras's default slope is 0.2 (jax.nn's is 0.01)."""
    return jax.nn.leaky_relu(_array(x), negative_slope=negative_slope)


def hard_sigmoid(x):
    """relu6(x + 3) / 6."""
    return jax.nn.hard_sigmoid(_array(x))


hard_silu = _unary("hard_silu", jax.nn.hard_silu)
hard_swish = hard_silu


log_sigmoid = _unary("log_sigmoid", jax.nn.log_sigmoid)


# ----- nn helpers ----------------------------------------------------------------------------

def _same_shape(name: str, target, output):
    if target.shape != output.shape:
        raise ValueError(f"{name}: `target` and `output` must have the same shape; got target "
                         f"{target.dtype}{list(target.shape)}, output {output.dtype}{list(output.shape)}.")


def _log_probabilities(output, from_logits: bool, axis):
    logits = output if from_logits else _logits.find(output, "softmax", axis)
    if logits is not None:
        return jax.nn.log_softmax(logits, axis=axis)
    output = output / jnp.sum(output, axis, keepdims=True)
    return jnp.log(jnp.clip(output, EPSILON, 1.0 - EPSILON))


def binary_crossentropy(target, output, from_logits=False):
    """Elementwise binary crossentropy [...] (no mean); probabilities are clipped to
    [1e-7, 1 - 1e-7], logits use log-sigmoid (exact at saturation). A model's sigmoid output is
    taken from its logits, as Keras on TensorFlow does (batchfit._logits)."""
    target, output = _array(target), _array(output)
    _same_shape("binary_crossentropy", target, output)
    logits = output if from_logits else _logits.find(output, "sigmoid")
    if logits is not None:
        return -target * jax.nn.log_sigmoid(logits) - (1.0 - target) * jax.nn.log_sigmoid(-logits)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    return -(target * jnp.log(output) + (1.0 - target) * jnp.log(1.0 - output))


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy of one-hot (or soft) `target` [..., C] and `output` [..., C] -> [...].
    Probabilities are renormalized to sum to 1 and clipped to [1e-7, 1 - 1e-7], as in Keras."""
    target, output = _array(target), _array(output)
    _same_shape("categorical_crossentropy", target, output)
    if target.ndim < 1:
        raise ValueError("categorical_crossentropy: `target` and `output` must have rank >= 1; got scalars.")
    return -jnp.sum(target * _log_probabilities(output, from_logits, axis), axis=axis)


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy of integer labels `target` [...] (or [..., 1]) and `output` [..., C] -> [...]."""
    target, output = _array(target).astype(jnp.int32), _array(output)
    if target.ndim == output.ndim and target.shape[-1] == 1:
        target = jnp.squeeze(target, axis=-1)
    if output.ndim < 1 or target.shape != output.shape[:-1]:
        raise ValueError(f"sparse_categorical_crossentropy: `target` must have the shape of `output` without "
                         f"its last axis; got target {target.dtype}{list(target.shape)}, output "
                         f"{output.dtype}{list(output.shape)}. Pass integer labels [...] for outputs [..., C].")
    labels = jax.nn.one_hot(target, output.shape[axis], axis=axis)
    return -jnp.sum(labels * _log_probabilities(output, from_logits, axis), axis=axis)


def normalize(x, axis=-1, order=2, epsilon=None):
    """`x` divided by its `order`-norm along `axis` (at least `epsilon`, default 1e-7)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"normalize: `order` must be an int >= 1; got order={order!r}. Pass e.g. order=2.")
    x = _array(x)
    x = x[None] if x.ndim == 0 else x
    epsilon = EPSILON if epsilon is None else epsilon
    if order == 2:      # Keras: x * rsqrt(sum of squares), the rsqrt capped at 1 / epsilon
        inverse = jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
        return x * jnp.minimum(inverse, 1.0 / epsilon)
    return x / jnp.maximum(norm(x, ord=order, axis=axis, keepdims=True), epsilon)
