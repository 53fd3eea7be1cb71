"""Keras's metrics that are means of per-sample values (public through `batchfit.metrics`): Accuracy, the
top-k accuracies, and the metric forms of Keras's losses, each a `MeanMetricWrapper` of its function."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from batchfit import losses as _losses
from batchfit._loss_base import _align, _per_sample
from batchfit._metric_base import MeanMetricWrapper
from batchfit.errors import describe

__all__ = [
    "Accuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError", "CosineSimilarity", "LogCoshError", "Hinge", "SquaredHinge",
    "CategoricalHinge", "KLDivergence", "Poisson", "BinaryCrossentropy", "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy", "accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy"]


def accuracy(y_true, y_pred):
    """Per-sample share of `y_pred == y_true` (exact equality), as `keras.metrics.Accuracy`'s function.

    >>> [float(v) for v in accuracy(jnp.array([[1, 2], [3, 4]]), jnp.array([[1.0, 2.0], [3.0, 0.0]]))]
    [1.0, 0.5]
    """
    y_pred = jnp.asarray(y_pred)
    y_true, y_pred = _align(jnp.asarray(y_true).astype(y_pred.dtype), y_pred)
    return _per_sample((y_true == y_pred).astype(jnp.float32))


def _in_top_k(labels, y_pred, k: int):
    """Keras's in_top_k: the label's score has fewer than k scores strictly above it (NaN never counts)."""
    at_label = jnp.take_along_axis(y_pred, labels[..., None].astype(jnp.int32), axis=-1)
    at_label = jnp.where(jnp.isnan(at_label), -jnp.inf, at_label)
    return (1 + jnp.sum(y_pred > at_label, axis=-1)) <= k


def top_k_categorical_accuracy(y_true, y_pred, k: int = 5):
    """Per-sample 1.0 where the one-hot label's class is among the k highest scores.

    Args: y_true: [B, ..., C] one-hot; y_pred: [B, ..., C]; k: how many top scores count. Returns [B].

    >>> y_pred = jnp.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])
    >>> [float(v) for v in top_k_categorical_accuracy(jnp.array([[0, 0, 1], [0, 0, 1]]), y_pred, k=2)]
    [1.0, 0.0]
    """
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true)
    if y_true.shape != y_pred.shape or y_pred.ndim < 2:
        raise ValueError(f"top_k_categorical_accuracy needs one-hot y_true and y_pred of the same shape [B, C]; "
                         f"got y_true: {describe(y_true)}, y_pred: {describe(y_pred)}. For integer labels use "
                         f"sparse_top_k_categorical_accuracy.")
    return _per_sample(_in_top_k(jnp.argmax(y_true, axis=-1), y_pred, k).astype(jnp.float32))


def sparse_top_k_categorical_accuracy(y_true, y_pred, k: int = 5, from_sorted_ids: bool = False):
    """Per-sample 1.0 where the integer label is among the k highest scores.

    Args: y_true: [B, ...] (or [B, ..., 1]) labels; y_pred: [B, ..., C] scores, or with
    `from_sorted_ids=True` class ids sorted by score [B, ..., N >= k]. Returns [B].

    >>> y_pred = jnp.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])
    >>> [float(v) for v in sparse_top_k_categorical_accuracy(jnp.array([2, 2]), y_pred, k=2)]
    [1.0, 0.0]
    """
    y_pred = jnp.asarray(y_pred)
    labels = jnp.asarray(y_true)
    if labels.ndim == y_pred.ndim and labels.ndim > 1 and labels.shape[-1] == 1:
        labels = jnp.squeeze(labels, -1)
    if y_pred.ndim < 2 or labels.shape != y_pred.shape[:-1]:
        raise ValueError(f"sparse_top_k_categorical_accuracy needs integer labels [B] (or [B, 1]) and y_pred "
                         f"[B, C]; got y_true: {describe(labels)}, y_pred: {describe(y_pred)}. For one-hot "
                         f"targets use top_k_categorical_accuracy.")
    if from_sorted_ids:
        matches = jnp.any(labels[..., None].astype(y_pred.dtype) == y_pred[..., :k], axis=-1)
    else:
        matches = _in_top_k(labels.astype(jnp.int32), y_pred, k)
    return _per_sample(matches.astype(jnp.float32))


def _positive_k(k, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}: `k` must be an int >= 1 (how many top scores count); got {k!r}.")
    return int(k)


def _cosine_similarity(y_true, y_pred, axis: int = -1):
    """Per-sample cosine similarity along `axis` (Keras's metric: 1 = the same direction)."""
    return -_losses.cosine_similarity(y_true, y_pred, axis=axis)


class Accuracy(MeanMetricWrapper):
    """How often predictions equal labels exactly, as `keras.metrics.Accuracy`."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(accuracy, name=name, dtype=dtype)


class TopKCategoricalAccuracy(MeanMetricWrapper):
    """How often the one-hot label is among the k highest scores, as `keras.metrics.TopKCategoricalAccuracy`."""

    def __init__(self, k=5, name="top_k_categorical_accuracy", dtype=None):
        super().__init__(top_k_categorical_accuracy, name=name, dtype=dtype, k=_positive_k(k, type(self).__name__))
        self.k = k


class SparseTopKCategoricalAccuracy(MeanMetricWrapper):
    """How often the integer label is among the k highest scores, as
    `keras.metrics.SparseTopKCategoricalAccuracy`."""

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy", dtype=None, from_sorted_ids=False):
        super().__init__(sparse_top_k_categorical_accuracy, name=name, dtype=dtype,
                         k=_positive_k(k, type(self).__name__), from_sorted_ids=bool(from_sorted_ids))
        self.k, self.from_sorted_ids = k, from_sorted_ids


class MeanAbsolutePercentageError(MeanMetricWrapper):
    """Mean absolute percentage error, as `keras.metrics.MeanAbsolutePercentageError`."""

    def __init__(self, name="mean_absolute_percentage_error", dtype=None):
        super().__init__(_losses.mean_absolute_percentage_error, name=name, dtype=dtype)


class MeanSquaredLogarithmicError(MeanMetricWrapper):
    """Mean squared logarithmic error, as `keras.metrics.MeanSquaredLogarithmicError`."""

    def __init__(self, name="mean_squared_logarithmic_error", dtype=None):
        super().__init__(_losses.mean_squared_logarithmic_error, name=name, dtype=dtype)


class CosineSimilarity(MeanMetricWrapper):
    """Mean cosine similarity of y_true and y_pred along `axis` (1: same direction), as
    `keras.metrics.CosineSimilarity`."""

    def __init__(self, name="cosine_similarity", dtype=None, axis=-1):
        super().__init__(_cosine_similarity, name=name, dtype=dtype, axis=axis)


class LogCoshError(MeanMetricWrapper):
    """Mean of log(cosh(y_pred - y_true)), as `keras.metrics.LogCoshError`."""

    def __init__(self, name="logcosh", dtype=None):
        super().__init__(_losses.log_cosh, name=name, dtype=dtype)


class Hinge(MeanMetricWrapper):
    """Mean hinge loss, as `keras.metrics.Hinge`."""

    def __init__(self, name="hinge", dtype=None):
        super().__init__(_losses.hinge, name=name, dtype=dtype)


class SquaredHinge(MeanMetricWrapper):
    """Mean squared hinge loss, as `keras.metrics.SquaredHinge`."""

    def __init__(self, name="squared_hinge", dtype=None):
        super().__init__(_losses.squared_hinge, name=name, dtype=dtype)


class CategoricalHinge(MeanMetricWrapper):
    """Mean categorical hinge loss, as `keras.metrics.CategoricalHinge`."""

    def __init__(self, name="categorical_hinge", dtype=None):
        super().__init__(_losses.categorical_hinge, name=name, dtype=dtype)


class KLDivergence(MeanMetricWrapper):
    """Mean Kullback-Leibler divergence, as `keras.metrics.KLDivergence`."""

    def __init__(self, name="kl_divergence", dtype=None):
        super().__init__(_losses.kl_divergence, name=name, dtype=dtype)


class Poisson(MeanMetricWrapper):
    """Mean Poisson loss, as `keras.metrics.Poisson`."""

    def __init__(self, name="poisson", dtype=None):
        super().__init__(_losses.poisson, name=name, dtype=dtype)


class BinaryCrossentropy(MeanMetricWrapper):
    """Mean binary crossentropy, as `keras.metrics.BinaryCrossentropy`."""

    def __init__(self, name="binary_crossentropy", dtype=None, from_logits=False, label_smoothing=0):
        super().__init__(_losses.binary_crossentropy, name=name, dtype=dtype, from_logits=from_logits,
                         label_smoothing=label_smoothing)


def _last_axis_only(name: str, axis) -> None:
    if axis != -1:
        raise ValueError(f"{name}: batchfit computes it over the last axis only (axis=-1); got axis={axis!r}. "
                         f"Move the class axis last (jnp.moveaxis) in the model's output.")


class CategoricalCrossentropy(MeanMetricWrapper):
    """Mean categorical crossentropy over the last axis, as `keras.metrics.CategoricalCrossentropy`."""

    def __init__(self, name="categorical_crossentropy", dtype=None, from_logits=False, label_smoothing=0, axis=-1):
        _last_axis_only(type(self).__name__, axis)
        super().__init__(_losses.categorical_crossentropy, name=name, dtype=dtype, from_logits=from_logits,
                         label_smoothing=label_smoothing)
        self.axis = axis

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis}


class SparseCategoricalCrossentropy(MeanMetricWrapper):
    """Mean crossentropy of integer labels, as `keras.metrics.SparseCategoricalCrossentropy`."""

    def __init__(self, name="sparse_categorical_crossentropy", dtype=None, from_logits=False, ignore_class=None,
                 axis=-1):
        _last_axis_only(type(self).__name__, axis)
        if ignore_class is not None:
            raise ValueError(f"SparseCategoricalCrossentropy: batchfit has no `ignore_class`; got "
                             f"ignore_class={ignore_class!r}. Give those samples sample_weight 0 instead.")
        super().__init__(_losses.sparse_categorical_crossentropy, name=name, dtype=dtype, from_logits=from_logits)
        self.ignore_class, self.axis = ignore_class, axis

    def get_config(self) -> dict:
        return {**super().get_config(), "ignore_class": self.ignore_class, "axis": self.axis}
