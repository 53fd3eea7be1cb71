"""Keras-named metrics, their per-sample functions `(y_true, y_pred) -> [B]`, and their registry.

A `Metric` is Keras's: state variables, `update_state`, `result`, `reset_state`. The built-in metrics
and `MeanMetricWrapper(fn)` are means of per-sample values, which the engine accumulates as the
sample-weighted (sum w * v, sum w) pair on the device, so partial batches count exactly; any other
metric's `update_state` is traced inside the compiled step on the values of its variables.
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax.numpy as jnp

from batchfit import losses as _losses
from batchfit._loss_base import _align, _name_of, _per_sample, _to_per_sample
from batchfit._metric_base import Mean, Metric, Sum
from batchfit.errors import describe
from batchfit.registry import Registry

__all__ = [
    "METRICS", "Metric", "Mean", "Sum", "MeanMetricWrapper", "BinaryAccuracy", "CategoricalAccuracy",
    "SparseCategoricalAccuracy", "MeanAbsoluteError", "MeanSquaredError", "binary_accuracy",
    "categorical_accuracy", "sparse_categorical_accuracy", "mean_absolute_error",
    "mean_squared_error", "get"]

METRICS = Registry("metric")

mean_absolute_error = _losses.mean_absolute_error
mean_squared_error = _losses.mean_squared_error


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


def _check_same_shape(name: str, y_true, y_pred, hint: str = "") -> None:
    """Raise a ValueError naming both shapes when they differ."""
    if y_true.shape != y_pred.shape or y_pred.ndim == 0:
        raise ValueError(
            f"{name} needs `y_true` and `y_pred` of the same shape [B, ...] (a trailing "
            f"axis of size 1 may be missing on one side); got y_true: {describe(y_true)}, "
            f"y_pred: {describe(y_pred)}. Reshape the targets to match the model output."
            f"{hint}")


class MeanMetricWrapper(Mean):
    """The mean of `fn(y_true, y_pred, **kwargs)` over samples, as `keras.metrics.MeanMetricWrapper`:
    an output [B, ...] is averaged over trailing axes, a scalar broadcast to [B]."""

    def __init__(self, fn: Callable, name: str | None = None, dtype=None, **kwargs):
        super().__init__(name=name or _name_of(fn, "custom_metric"), dtype=dtype)
        self.fn, self.kwargs = fn, kwargs

    def call(self, y_true, y_pred):
        """Per-sample values: float32 [B]."""
        return _to_per_sample(self.fn(y_true, y_pred, **self.kwargs), jnp.asarray(y_pred),
                              self.name)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self.call(y_true, y_pred), sample_weight=sample_weight)

    @property
    def per_sample_mean(self) -> bool:
        cls = type(self)
        return (cls.update_state is MeanMetricWrapper.update_state and cls.result is Mean.result
                and cls.reset_state is Mean.reset_state)

    def get_config(self) -> dict:
        fn = {"fn": self.fn} if type(self) is MeanMetricWrapper else {}
        return {**super().get_config(), **fn, **self.kwargs}


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
METRICS.register("binary_accuracy")(BinaryAccuracy)
METRICS.register("categorical_accuracy")(CategoricalAccuracy)
METRICS.register("sparse_categorical_accuracy")(SparseCategoricalAccuracy)
METRICS.register("mae", "mean_absolute_error")(MeanAbsoluteError)
METRICS.register("mse", "mean_squared_error")(MeanSquaredError)

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
