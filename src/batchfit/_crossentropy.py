"""Crossentropy terms shared by batchfit.losses (public through it), and Keras's focal crossentropies.

A probability loss computes from the logits when it has them: given (`from_logits=True`), or found
for a `y_pred` that batchfit's sigmoid / softmax produced inside a traced forward pass (`_logits`),
as Keras on TensorFlow does. Otherwise it clips the probabilities to [1e-7, 1 - 1e-7] as Keras does.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from batchfit import _logits
from batchfit._loss_base import EPSILON, LossFunctionWrapper, _per_sample, _prepare

__all__ = ["binary_focal_crossentropy", "categorical_focal_crossentropy", "BinaryFocalCrossentropy",
           "CategoricalFocalCrossentropy"]


def check_axis(axis, ndim: int, loss_name: str) -> int:
    """`axis` of a y_pred of rank `ndim` as a non-negative index; a feature axis when ndim >= 2.

    Per-sample losses [B] cannot reduce over the batch axis, so axis 0 of a [B, ...] y_pred is refused.
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"{loss_name}: `axis` must be an int (Keras's default is -1); got "
                         f"{type(axis).__name__} {axis!r}.")
    index = axis + ndim if axis < 0 else axis
    if not (0 <= index < ndim and (index >= 1 or ndim == 1)):
        raise ValueError(
            f"{loss_name}: `axis`={axis} must name a feature axis of y_pred of rank {ndim}: one of "
            f"1..{ndim - 1} or -1..-{ndim - 1} (axis 0 is the batch). Keras's default is axis=-1.")
    return index


def _recorded_logits(y_pred, from_logits: bool, kind: str, axis: int):
    """The logits to compute from: those `kind` recorded for y_pred (Keras on TensorFlow uses them even
    with from_logits=True, and warns), else y_pred itself when `from_logits`, else None."""
    found = _logits.find(y_pred, kind, axis)
    if found is None:
        return y_pred if from_logits else None
    if from_logits:
        warnings.warn(f"A crossentropy loss got from_logits=True, but y_pred is the output of a {kind} "
                      f"activation, so it holds probabilities, not logits. As Keras on TensorFlow does, the "
                      f"loss is computed from the {kind}'s input. Was this intended? Use from_logits=False "
                      f"(the default) with a {kind} output, or a linear output with from_logits=True.",
                      UserWarning, stacklevel=4)
    return found


def sigmoid_terms(y_true, y_pred, from_logits: bool):
    """(elementwise binary crossentropy, the probabilities) of y_pred [B, ...], from logits when known."""
    logits = _recorded_logits(y_pred, from_logits, "sigmoid", -1)
    if logits is None:
        p = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
        return -(y_true * jnp.log(p) + (1.0 - y_true) * jnp.log(1.0 - p)), y_pred
    values = -y_true * jax.nn.log_sigmoid(logits) - (1.0 - y_true) * jax.nn.log_sigmoid(-logits)
    return values, jax.nn.sigmoid(logits)


def log_probabilities(y_pred, from_logits: bool, axis: int = -1):
    """(log-probabilities over `axis`, the probabilities): log_softmax of the logits when known, else
    Keras's y_pred / sum(y_pred) clipped to [1e-7, 1 - 1e-7]."""
    logits = _recorded_logits(y_pred, from_logits, "softmax", axis)
    if logits is not None:
        log_p = jax.nn.log_softmax(logits, axis=axis)
        return log_p, jnp.exp(log_p)
    p = jnp.clip(y_pred / jnp.sum(y_pred, axis=axis, keepdims=True), EPSILON, 1.0 - EPSILON)
    return jnp.log(p), p


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing: bool = False, alpha: float = 0.25,
                              gamma: float = 2.0, from_logits: bool = False, label_smoothing: float = 0.0,
                              axis: int = -1):
    """Per-sample focal binary crossentropy (Lin et al. 2018), as `keras.losses.binary_focal_crossentropy`.

    `(1 - p_t)**gamma * bce` with `p_t = t p + (1 - t)(1 - p)`, times `t alpha + (1 - t)(1 - alpha)`
    when `apply_class_balancing`; label smoothing squeezes t towards 0.5 first.

    Args:
        y_true: [B, ...] targets in [0, 1]; y_pred: [B, ...] probabilities, or logits (`from_logits`).
    Returns: [B], the mean over the trailing axes. With logits the crossentropy term is exact (Keras
    on JAX clips the sigmoid first, which only differs once |logit| > ~16).

    >>> y_true, y_pred = jnp.array([[0.0, 1.0], [0.0, 0.0]]), jnp.array([[0.6, 0.4], [0.4, 0.6]])
    >>> [round(float(v), 3) for v in binary_focal_crossentropy(y_true, y_pred)]   # Keras's example
    [0.33, 0.206]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "binary_focal_crossentropy")
    check_axis(axis, y_pred.ndim, "binary_focal_crossentropy")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    bce, p = sigmoid_terms(y_true, y_pred, from_logits)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    focal = jnp.power(1.0 - p_t, gamma) * bce
    if apply_class_balancing:
        focal = (y_true * alpha + (1.0 - y_true) * (1.0 - alpha)) * focal
    return _per_sample(focal)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma: float = 2.0, from_logits: bool = False,
                                   label_smoothing: float = 0.0, axis: int = -1):
    """Per-sample focal categorical crossentropy, as `keras.losses.categorical_focal_crossentropy`.

    `sum over axis of -alpha (1 - p)**gamma t log p`; `alpha` a float or one weight per class.

    Args:
        y_true: [B, ..., C] one-hot or soft targets; y_pred: [B, ..., C] probabilities or logits.
        label_smoothing: `t (1 - s) + s / C`.
    Returns: [B]. With logits log p is log_softmax (Keras clips p to [1e-7, 1 - 1e-7] even then, which
    only differs once a probability is below 1e-7).

    >>> y_true = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> y_pred = jnp.array([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]])
    >>> [round(float(v), 6) for v in categorical_focal_crossentropy(y_true, y_pred)]   # Keras's example
    [0.000263, 0.675912]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "categorical_focal_crossentropy",
                              " For integer class labels use sparse_categorical_crossentropy.")
    axis = check_axis(axis, y_pred.ndim, "categorical_focal_crossentropy")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    log_p, p = log_probabilities(y_pred, from_logits, axis)
    weight = jnp.asarray(alpha, y_pred.dtype) * jnp.power(1.0 - p, gamma)
    return _per_sample(jnp.sum(weight * -y_true * log_p, axis=axis))


class BinaryFocalCrossentropy(LossFunctionWrapper):
    """Focal binary crossentropy, as `keras.losses.BinaryFocalCrossentropy`."""

    def __init__(self, apply_class_balancing: bool = False, alpha: float = 0.25, gamma: float = 2.0,
                 from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1,
                 reduction="sum_over_batch_size", name: str = "binary_focal_crossentropy", dtype=None):
        _check_focal(alpha, gamma, label_smoothing, type(self).__name__)
        super().__init__(binary_focal_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         apply_class_balancing=bool(apply_class_balancing), alpha=alpha, gamma=gamma,
                         from_logits=bool(from_logits), label_smoothing=label_smoothing, axis=axis)
        self.apply_class_balancing, self.alpha, self.gamma = bool(apply_class_balancing), alpha, gamma
        self.from_logits, self.label_smoothing, self.axis = bool(from_logits), label_smoothing, axis


class CategoricalFocalCrossentropy(LossFunctionWrapper):
    """Focal categorical crossentropy on one-hot targets, as `keras.losses.CategoricalFocalCrossentropy`."""

    def __init__(self, alpha=0.25, gamma: float = 2.0, from_logits: bool = False, label_smoothing: float = 0.0,
                 axis: int = -1, reduction="sum_over_batch_size", name: str = "categorical_focal_crossentropy",
                 dtype=None):
        _check_focal(alpha, gamma, label_smoothing, type(self).__name__)
        alpha = list(alpha) if isinstance(alpha, (list, tuple)) else alpha
        super().__init__(categorical_focal_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         alpha=alpha, gamma=gamma, from_logits=bool(from_logits),
                         label_smoothing=label_smoothing, axis=axis)
        self.alpha, self.gamma, self.from_logits = alpha, gamma, bool(from_logits)
        self.label_smoothing, self.axis = label_smoothing, axis


def _check_focal(alpha, gamma, label_smoothing, cls: str) -> None:
    """TypeError/ValueError naming the argument, for values Keras would fail on later or silently misuse."""
    for name, value in (("gamma", gamma), ("label_smoothing", label_smoothing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{cls}: `{name}` must be a number; got {type(value).__name__} {value!r}.")
    if gamma < 0:
        raise ValueError(f"{cls}: `gamma` must be >= 0 (0 turns the focal factor off); got {gamma}.")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"{cls}: `label_smoothing` must be in [0, 1]; got {label_smoothing}.")
    values = alpha if isinstance(alpha, (list, tuple)) and cls.startswith("Categorical") else [alpha]
    if not values or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in values):
        raise TypeError(f"{cls}: `alpha` must be a number (or, for CategoricalFocalCrossentropy, one per "
                        f"class); got {alpha!r}.")
