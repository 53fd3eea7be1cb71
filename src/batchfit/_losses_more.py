"""Keras's regression, hinge and distribution losses (public through `batchfit.losses`).

Each function maps `(y_true, y_pred)` of shape [B, ...] to per-sample losses [B], with Keras 3 numerics:
Keras's value over the last axis, then the mean over any other trailing axes (what Keras's default
"sum_over_batch_size" reduction gives). Each class wraps its function as the `keras.losses` class does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from batchfit._loss_base import EPSILON, LossFunctionWrapper, _per_sample, _prepare

__all__ = [
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "cosine_similarity", "hinge",
    "squared_hinge", "categorical_hinge", "kl_divergence", "poisson", "log_cosh",
    "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError", "CosineSimilarity", "Hinge",
    "SquaredHinge", "CategoricalHinge", "KLDivergence", "Poisson", "LogCosh"]

_DEFAULT_REDUCTION = "sum_over_batch_size"


def mean_absolute_percentage_error(y_true, y_pred):
    """Per-sample `100 * mean(|y_true - y_pred| / max(|y_true|, 1e-7))`; [B, ...] -> [B].

    >>> [float(v) for v in mean_absolute_percentage_error(jnp.array([[2.0, 4.0]]), jnp.array([[1.0, 5.0]]))]
    [37.5]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "mean_absolute_percentage_error")
    return 100.0 * _per_sample(jnp.abs((y_true - y_pred) / jnp.maximum(jnp.abs(y_true), EPSILON)))


def mean_squared_logarithmic_error(y_true, y_pred):
    """Per-sample mean of `(log(max(y_pred, 1e-7) + 1) - log(max(y_true, 1e-7) + 1))**2`; [B, ...] -> [B].

    >>> round(float(mean_squared_logarithmic_error(jnp.array([[0.0]]), jnp.array([[jnp.e - 1]]))[0]), 5)
    1.0
    """
    y_true, y_pred = _prepare(y_true, y_pred, "mean_squared_logarithmic_error")
    first = jnp.log(jnp.maximum(y_pred, EPSILON) + 1.0)
    second = jnp.log(jnp.maximum(y_true, EPSILON) + 1.0)
    return _per_sample(jnp.square(first - second))


def _l2_normalize(x, axis: int):
    """Keras's `ops.normalize(x, axis)`: x * min(rsqrt(sum(x**2)), 1 / 1e-7) (a zero vector stays zero)."""
    inverse_norm = jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x * jnp.minimum(inverse_norm, 1.0 / EPSILON)


def _feature_axis(axis, ndim: int, loss_name: str) -> int:
    """`axis` as a non-negative index of a feature axis (never the batch axis 0), or a ValueError."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{loss_name}: `axis` must be an int; got {type(axis).__name__} {axis!r}.")
    index = axis + ndim if axis < 0 else axis
    if not 1 <= index < ndim:
        raise ValueError(
            f"{loss_name}: `axis`={axis} must name a feature axis of y_pred of rank {ndim}: one of "
            f"1..{ndim - 1} or -1..-{ndim - 1} (axis 0 is the batch). Keras's default is axis=-1.")
    return index


def cosine_similarity(y_true, y_pred, axis: int = -1):
    """Per-sample negative cosine similarity along `axis`: `-sum(l2_normalize(t) * l2_normalize(p))`.

    Args: y_true, y_pred: [B, ...]; axis: a feature axis (Keras default -1). Returns [B] in [-1, 1]
    (-1: the same direction); a zero vector gives 0.

    >>> [round(float(v), 4) for v in cosine_similarity(jnp.array([[0.0, 1.0], [1.0, 1.0]]),
    ...                                                 jnp.array([[1.0, 0.0], [-1.0, -1.0]]))]
    [-0.0, 1.0]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "cosine_similarity")
    axis = _feature_axis(axis, y_pred.ndim, "cosine_similarity")
    return _per_sample(-jnp.sum(_l2_normalize(y_true, axis) * _l2_normalize(y_pred, axis), axis=axis))


def _hinge_labels(y_true):
    """Keras's convert_binary_labels_to_hinge: when every label of the batch is 0 or 1, map to -1 / 1."""
    is_binary = jnp.all((y_true == 0) | (y_true == 1))
    return jnp.where(is_binary, 2.0 * y_true - 1.0, y_true)


def hinge(y_true, y_pred):
    """Per-sample mean of `max(1 - y_true * y_pred, 0)`; labels -1/1 (a batch of 0/1 labels is mapped).

    >>> [float(v) for v in hinge(jnp.array([[1.0, 0.0]]), jnp.array([[0.5, -2.0]]))]   # (0.5 + 0) / 2
    [0.25]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "hinge")
    return _per_sample(jnp.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0))


def squared_hinge(y_true, y_pred):
    """Per-sample mean of `max(1 - y_true * y_pred, 0)**2`; labels as for `hinge`.

    >>> [float(v) for v in squared_hinge(jnp.array([[1.0, -1.0]]), jnp.array([[0.5, 1.0]]))]  # (.25 + 4) / 2
    [2.125]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "squared_hinge")
    return _per_sample(jnp.square(jnp.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0)))


def categorical_hinge(y_true, y_pred):
    """Per-sample `max(max((1 - t) * p) - sum(t * p) + 1, 0)` over the last axis; t one-hot [B, ..., C].

    >>> [float(v) for v in categorical_hinge(jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 0.25]]))]  # .5-.25+1
    [1.25]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "categorical_hinge")
    positive = jnp.sum(y_true * y_pred, axis=-1)
    negative = jnp.max((1.0 - y_true) * y_pred, axis=-1)
    return _per_sample(jnp.maximum(negative - positive + 1.0, 0.0))


def kl_divergence(y_true, y_pred):
    """Per-sample `sum(t * log(t / p))` over the last axis, t and p clipped to [1e-7, 1].

    >>> round(float(kl_divergence(jnp.array([[0.5, 0.5]]), jnp.array([[0.25, 0.75]]))[0]), 5)
    0.14384
    """
    y_true, y_pred = _prepare(y_true, y_pred, "kl_divergence")
    y_true, y_pred = jnp.clip(y_true, EPSILON, 1.0), jnp.clip(y_pred, EPSILON, 1.0)
    return _per_sample(jnp.sum(y_true * jnp.log(y_true / y_pred), axis=-1))


def poisson(y_true, y_pred):
    """Per-sample mean of `y_pred - y_true * log(y_pred + 1e-7)`; y_pred a positive rate.

    >>> round(float(poisson(jnp.array([[2.0]]), jnp.array([[1.0]]))[0]), 5)   # 1 - 2 log(1)
    1.0
    """
    y_true, y_pred = _prepare(y_true, y_pred, "poisson")
    return _per_sample(y_pred - y_true * jnp.log(y_pred + EPSILON))


def log_cosh(y_true, y_pred):
    """Per-sample mean of `log(cosh(y_pred - y_true))`, computed as `e + softplus(-2e) - log 2`.

    >>> round(float(log_cosh(jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 1.0]]))[0]), 4)  # log(cosh 1) / 2
    0.2169
    """
    y_true, y_pred = _prepare(y_true, y_pred, "log_cosh")
    error = y_pred - y_true
    return _per_sample(error + jax.nn.softplus(-2.0 * error) - jnp.log(2.0).astype(error.dtype))


class MeanAbsolutePercentageError(LossFunctionWrapper):
    """Mean absolute percentage error, as `keras.losses.MeanAbsolutePercentageError`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "mean_absolute_percentage_error", dtype=None):
        super().__init__(mean_absolute_percentage_error, reduction=reduction, name=name, dtype=dtype)


class MeanSquaredLogarithmicError(LossFunctionWrapper):
    """Mean squared logarithmic error, as `keras.losses.MeanSquaredLogarithmicError`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "mean_squared_logarithmic_error", dtype=None):
        super().__init__(mean_squared_logarithmic_error, reduction=reduction, name=name, dtype=dtype)


class CosineSimilarity(LossFunctionWrapper):
    """Negative cosine similarity along `axis`, as `keras.losses.CosineSimilarity`."""

    def __init__(self, axis: int = -1, reduction=_DEFAULT_REDUCTION, name: str = "cosine_similarity",
                 dtype=None):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"CosineSimilarity: `axis` must be an int (default -1); got {type(axis).__name__} "
                            f"{axis!r}.")
        super().__init__(cosine_similarity, reduction=reduction, name=name, dtype=dtype, axis=axis)
        self.axis = axis


class Hinge(LossFunctionWrapper):
    """Hinge loss, as `keras.losses.Hinge`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "hinge", dtype=None):
        super().__init__(hinge, reduction=reduction, name=name, dtype=dtype)


class SquaredHinge(LossFunctionWrapper):
    """Squared hinge loss, as `keras.losses.SquaredHinge`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "squared_hinge", dtype=None):
        super().__init__(squared_hinge, reduction=reduction, name=name, dtype=dtype)


class CategoricalHinge(LossFunctionWrapper):
    """Categorical hinge loss, as `keras.losses.CategoricalHinge`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "categorical_hinge", dtype=None):
        super().__init__(categorical_hinge, reduction=reduction, name=name, dtype=dtype)


class KLDivergence(LossFunctionWrapper):
    """Kullback-Leibler divergence, as `keras.losses.KLDivergence`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "kl_divergence", dtype=None):
        super().__init__(kl_divergence, reduction=reduction, name=name, dtype=dtype)


class Poisson(LossFunctionWrapper):
    """Poisson loss, as `keras.losses.Poisson`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "poisson", dtype=None):
        super().__init__(poisson, reduction=reduction, name=name, dtype=dtype)


class LogCosh(LossFunctionWrapper):
    """Logarithm of the hyperbolic cosine of the error, as `keras.losses.LogCosh`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "log_cosh", dtype=None):
        super().__init__(log_cosh, reduction=reduction, name=name, dtype=dtype)
