"""Keras-named metrics, their per-sample functions `(y_true, y_pred) -> [B]`, and their registry.

A `Metric` is Keras's: state variables, `update_state`, `result`, `reset_state`. `MeanMetricWrapper(fn)`
and the metrics built on it (accuracies, the metric forms of the losses) are means of per-sample values,
which the engine accumulates as the sample-weighted (sum w * v, sum w) pair on the device, so partial
batches count exactly; any other metric's `update_state` (AUC, Precision, Recall, the confusion counts,
RootMeanSquaredError, F1Score, yours) is traced inside the compiled step on the values of its variables.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp

from batchfit import losses as _losses
from batchfit._loss_base import _align, _check_same_shape, _per_sample, _snake_case
from batchfit._metric_base import Mean, MeanMetricWrapper, Metric, Sum
from batchfit._metrics_auc import AUC
from batchfit._metrics_confusion import FalseNegatives, FalsePositives, Precision, Recall, TrueNegatives, TruePositives
from batchfit._metrics_means import (
    Accuracy, BinaryCrossentropy, CategoricalCrossentropy, CategoricalHinge, CosineSimilarity, Hinge, KLDivergence,
    LogCoshError, MeanAbsolutePercentageError, MeanSquaredLogarithmicError, Poisson, SparseCategoricalCrossentropy,
    SparseTopKCategoricalAccuracy, SquaredHinge, TopKCategoricalAccuracy, sparse_top_k_categorical_accuracy,
    top_k_categorical_accuracy)
from batchfit._metrics_scores import F1Score, FBetaScore, RootMeanSquaredError
from batchfit.errors import describe
from batchfit.registry import Registry

__all__ = [
    "METRICS", "Metric", "Mean", "Sum", "MeanMetricWrapper", "Accuracy", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanAbsoluteError",
    "MeanSquaredError", "RootMeanSquaredError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError",
    "CosineSimilarity", "LogCoshError", "Hinge", "SquaredHinge", "CategoricalHinge", "KLDivergence", "Poisson",
    "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "AUC", "Precision", "Recall",
    "TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives", "F1Score", "FBetaScore",
    "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy", "mean_absolute_error", "mean_squared_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "binary_crossentropy",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "hinge", "squared_hinge", "categorical_hinge",
    "kl_divergence", "poisson", "log_cosh", "get"]

METRICS = Registry("metric")

# Keras's metric functions that are its loss functions: per-sample values [B]
mean_absolute_error = _losses.mean_absolute_error
mean_squared_error = _losses.mean_squared_error
mean_absolute_percentage_error = _losses.mean_absolute_percentage_error
mean_squared_logarithmic_error = _losses.mean_squared_logarithmic_error
binary_crossentropy = _losses.binary_crossentropy
categorical_crossentropy = _losses.categorical_crossentropy
sparse_categorical_crossentropy = _losses.sparse_categorical_crossentropy
hinge, squared_hinge, categorical_hinge = _losses.hinge, _losses.squared_hinge, _losses.categorical_hinge
kl_divergence, poisson, log_cosh = _losses.kl_divergence, _losses.poisson, _losses.log_cosh


def binary_accuracy(y_true, y_pred, threshold: float = 0.5):
    """Per-sample share of `y_pred > threshold` equal to `y_true`, as Keras.

    Args: y_true: [B, ...] 0/1 labels (or [B] against [B, 1]); y_pred: [B, ...]
        probabilities. Returns: float32 [B].

    >>> y_pred = jnp.array([[0.98], [1.0], [0.0], [0.6]])
    >>> [float(v) for v in binary_accuracy(jnp.array([1, 1, 0, 0]), y_pred)]
    [1.0, 1.0, 1.0, 0.0]
    """
    y_true, y_pred = _align(jnp.asarray(y_true), jnp.asarray(y_pred))
    _check_same_shape("binary_accuracy", y_true, y_pred)
    predicted = (y_pred > threshold).astype(y_true.dtype)
    return _per_sample((y_true == predicted).astype(jnp.float32))


def categorical_accuracy(y_true, y_pred):
    """Per-sample 1.0 where argmax(y_true) == argmax(y_pred) over the last axis.

    Args: y_true: [B, ..., C] one-hot; y_pred: [B, ..., C] scores. Returns: float32 [B].

    >>> y, y_pred = jnp.array([[0, 0, 1], [0, 1, 0]]), jnp.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0]])
    >>> [float(v) for v in categorical_accuracy(y, y_pred)]
    [0.0, 1.0]
    """
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    _check_same_shape("categorical_accuracy", y_true, y_pred,
                      " For integer labels use sparse_categorical_accuracy.")
    matches = jnp.argmax(y_true, axis=-1) == jnp.argmax(y_pred, axis=-1)
    return _per_sample(matches.astype(jnp.float32))


def sparse_categorical_accuracy(y_true, y_pred):
    """Per-sample 1.0 where the integer label equals argmax(y_pred) over the last axis.

    Args: y_true: [B, ...] or [B, ..., 1] labels; y_pred: [B, ..., C]. Returns: float32 [B].

    >>> y_pred = jnp.array([[0.1, 0.6, 0.3], [0.05, 0.95, 0.0]])
    >>> [float(v) for v in sparse_categorical_accuracy(jnp.array([[2], [1]]), y_pred)]
    [0.0, 1.0]
    """
    labels, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if labels.ndim == y_pred.ndim and labels.ndim > 0 and labels.shape[-1] == 1:
        labels = jnp.squeeze(labels, -1)
    if y_pred.ndim < 2 or labels.shape != y_pred.shape[:-1]:
        raise ValueError(
            f"sparse_categorical_accuracy needs integer labels [B] (or [B, 1]) and y_pred "
            f"[B, C]; got y_true: {describe(labels)}, y_pred: {describe(y_pred)}. For "
            "one-hot targets use categorical_accuracy.")
    # Compare in the labels' dtype, as Keras does: a label 1.5 never matches.
    predicted = jnp.argmax(y_pred, axis=-1).astype(labels.dtype)
    return _per_sample((labels == predicted).astype(jnp.float32))


def _accuracy_from_shapes(y_true, y_pred):
    """Keras 3 compile_utils' "accuracy" rule, decided on static shapes at trace time.

    y_pred's last axis 1 (or rank 1) -> binary; y_true of lower rank, or a last axis 1
    against y_pred's > 1 -> sparse categorical; otherwise categorical.
    """
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_pred.ndim <= 1 or y_pred.shape[-1] == 1:
        return binary_accuracy(y_true, y_pred)
    if y_true.ndim < y_pred.ndim or y_true.shape[-1] == 1:
        return sparse_categorical_accuracy(y_true, y_pred)
    return categorical_accuracy(y_true, y_pred)


class BinaryAccuracy(MeanMetricWrapper):
    """How often `y_pred > threshold` matches 0/1 labels, as `keras.metrics.BinaryAccuracy`."""

    def __init__(self, name: str = "binary_accuracy", threshold: float = 0.5, dtype=None):
        if not 0 < threshold < 1:
            raise ValueError(f"`threshold` must lie in (0, 1); got {threshold!r}.")
        super().__init__(binary_accuracy, name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold


class CategoricalAccuracy(MeanMetricWrapper):
    """How often argmax matches one-hot labels, as `keras.metrics.CategoricalAccuracy`."""

    def __init__(self, name: str = "categorical_accuracy", dtype=None):
        super().__init__(categorical_accuracy, name=name, dtype=dtype)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """How often argmax matches integer labels, as `keras.metrics.SparseCategoricalAccuracy`."""

    def __init__(self, name: str = "sparse_categorical_accuracy", dtype=None):
        super().__init__(sparse_categorical_accuracy, name=name, dtype=dtype)


class MeanAbsoluteError(MeanMetricWrapper):
    """Mean absolute error, as `keras.metrics.MeanAbsoluteError`."""

    def __init__(self, name: str = "mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, name=name, dtype=dtype)


class MeanSquaredError(MeanMetricWrapper):
    """Mean squared error, as `keras.metrics.MeanSquaredError`."""

    def __init__(self, name: str = "mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, name=name, dtype=dtype)


class _AccuracyFromShapes(MeanMetricWrapper):
    """"accuracy" when the loss does not decide it: Keras 3's rule on the batch shapes."""

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(_accuracy_from_shapes, name=name, dtype=dtype)


METRICS.register("accuracy", "acc")(_AccuracyFromShapes)
# The strings keras.metrics.get takes (a class's snake_case name, its class name, Keras's short forms);
# the registry ignores case, so "AUC" and "auc" are one entry.
_KERAS_STRINGS = {
    BinaryAccuracy: (), CategoricalAccuracy: (), SparseCategoricalAccuracy: (), TopKCategoricalAccuracy: (),
    SparseTopKCategoricalAccuracy: (), MeanAbsoluteError: ("mae",), MeanSquaredError: ("mse",),
    RootMeanSquaredError: (), MeanAbsolutePercentageError: ("mape",), MeanSquaredLogarithmicError: ("msle",),
    CosineSimilarity: (), LogCoshError: (), Hinge: (), SquaredHinge: (), CategoricalHinge: (), KLDivergence: (),
    Poisson: (), BinaryCrossentropy: ("bce",), CategoricalCrossentropy: (), SparseCategoricalCrossentropy: (),
    AUC: (), Precision: (), Recall: (), TruePositives: (), FalsePositives: (), TrueNegatives: (),
    FalseNegatives: (), F1Score: (), FBetaScore: ()}
for _class, _short in _KERAS_STRINGS.items():
    METRICS.register(_snake_case(_class.__name__), _class.__name__, *_short)(_class)

_ACCURACY_FOR_LOSS = (
    (_losses.BinaryCrossentropy, BinaryAccuracy),
    (_losses.CategoricalCrossentropy, CategoricalAccuracy),
    (_losses.SparseCategoricalCrossentropy, SparseCategoricalAccuracy),
)


def _accuracy_for(loss) -> type:
    """The accuracy class that matches `loss` (anything `losses.get` accepts, or None)."""
    if loss is not None:
        loss = loss if isinstance(loss, _losses.Loss) else _losses.get(loss)
        for loss_class, metric_class in _ACCURACY_FOR_LOSS:
            if isinstance(loss, loss_class):
                return metric_class
    return _AccuracyFromShapes


def get(identifier, loss=None) -> Metric:
    """Resolve a metric: a name, a `Metric` (returned as is), or a callable(y_true, y_pred).

    "accuracy"/"acc" follow the loss (binary/categorical/sparse crossentropy), else
    Keras 3's shape rule; a string keeps the user's spelling as the log name.

    >>> m = get("acc", loss="sparse_categorical_crossentropy")
    >>> type(m).__name__, m.name
    ('SparseCategoricalAccuracy', 'acc')
    """
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        identifier = identifier()
    if isinstance(identifier, Metric):
        return _checked(identifier)
    if isinstance(identifier, str):
        if identifier.lower() in ("accuracy", "acc"):
            return _accuracy_for(loss)(name=identifier)
        return METRICS.get(identifier)(name=identifier)
    if isinstance(identifier, _losses.Loss):
        return MeanMetricWrapper(identifier.per_sample, name=identifier.name)
    if callable(identifier) and hasattr(identifier, "update_state") and hasattr(identifier, "result"):
        raise TypeError(
            f"{type(identifier).__name__} is a metric object of another library (Keras?); batchfit runs its own "
            f"metrics. Subclass batchfit.metrics.Metric instead: the same __init__ / add_variable / "
            f"update_state / result / reset_state work unchanged.")
    if callable(identifier):
        return MeanMetricWrapper(identifier)
    raise TypeError(
        f"A metric must be a metric name (one of {', '.join(METRICS.names())}), a "
        f"batchfit.metrics.Metric, or a callable(y_true, y_pred) returning per-sample "
        f"values; got {describe(identifier)}. Pass e.g. metrics=['accuracy'].")


def _overrides(metric: Metric, method: str) -> bool:
    return getattr(type(metric), method) is not getattr(Metric, method)


def _checked(metric: Metric) -> Metric:
    """A metric as compile() can run it, or a TypeError that names the class and what to define.

    A subclass written for batchfit's first API (a per-sample `call` only) becomes the mean of `call`."""
    cls = type(metric).__name__
    if _overrides(metric, "call") and not _overrides(metric, "update_state") and not _overrides(metric, "result"):
        return MeanMetricWrapper(metric.call, name=metric.name)
    if "_variables" not in metric.__dict__:
        raise TypeError(f"{cls}.__init__ does not call super().__init__(name=name, **kwargs): the Metric base "
                        f"class sets up the state variables. Call it first in {cls}.__init__.")
    if not _overrides(metric, "update_state"):
        raise TypeError(f"{cls} defines no update_state(): a Metric subclass accumulates each batch in "
                        f"update_state(self, y_true, y_pred, sample_weight=None), e.g. "
                        f"self.total.assign_add(ops.sum(values)).")
    if not _overrides(metric, "result"):
        raise TypeError(f"{cls} defines no result(): a Metric subclass returns its value (a scalar) from its "
                        f"variables in result(self), e.g. return self.total / self.count.")
    try:
        signature = inspect.signature(metric.update_state)
    except ValueError:          # no signature to read (a builtin): its first call will tell
        return metric
    try:
        signature.bind(None, None, sample_weight=None)
    except TypeError:
        raise TypeError(f"{cls}.update_state{signature} cannot be called as update_state(y_true, y_pred, "
                        f"sample_weight=...), which is how compile() updates a metric. Define it as "
                        f"update_state(self, y_true, y_pred, sample_weight=None).") from None
    return metric

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
