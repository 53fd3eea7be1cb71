"""Keras's confusion-matrix metrics: TruePositives, FalsePositives, TrueNegatives, FalseNegatives,
Precision and Recall (public through `batchfit.metrics`), and the update they share with AUC.

A prediction p counts as positive at threshold t when p > t. Counts are float32 arrays [T] (one per
threshold), or [T, L] per label; each update is jnp only, so the engine traces it into the compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from batchfit._loss_base import EPSILON, _align
from batchfit._metric_base import Metric, _divide_no_nan
from batchfit.errors import describe

__all__ = ["TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives", "Precision", "Recall"]

NEG_INF = -1e10     # Keras's threshold with top_k: every kept prediction is above it


def parse_thresholds(thresholds, default: float, name: str) -> list[float]:
    """`thresholds` (a number or a list of numbers in [0, 1], or None for `default`) as a list of floats."""
    if thresholds is None:
        return [float(default)]
    values = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) else [thresholds]
    bad = [t for t in values if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not 0 <= t <= 1]
    if bad or not values:
        raise ValueError(f"{name}: `thresholds` must be a number or a non-empty list of numbers in [0, 1]; got "
                         f"{thresholds!r}. E.g. thresholds=0.5 or thresholds=[0.3, 0.5, 0.7].")
    return [float(t) for t in values]


def evenly_spaced(thresholds) -> bool:
    """Keras's is_evenly_distributed_thresholds: at least 3 values i / (n - 1), to within 1e-7."""
    n = len(thresholds)
    return n >= 3 and bool(np.allclose(thresholds, np.arange(n, dtype=np.float32) / (n - 1), atol=EPSILON))


def check_class_options(name: str, top_k, class_id) -> None:
    """ValueError unless `top_k` and `class_id` are None or ints (>= 1 and >= 0)."""
    for argument, value, least in (("top_k", top_k, 1), ("class_id", class_id, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < least):
            raise ValueError(f"{name}: `{argument}` must be None or an int >= {least}; got {value!r}.")


def _filter_top_k(x, k: int):
    """Keep the k largest values of the last axis of `x`; the others become NEG_INF."""
    _, indices = jax.lax.top_k(x, k)
    mask = jnp.sum(jax.nn.one_hot(indices, x.shape[-1], dtype=x.dtype), axis=-2)
    return x * mask + NEG_INF * (1 - mask)


def _weights_like(sample_weight, y_true, y_pred):
    """Keras's sample weights for the counts: [B] (or [B, ...]) against y_true, broadcast to y_pred's shape."""
    if sample_weight is None:
        return None
    weight = jnp.asarray(sample_weight, jnp.float32)[..., None]
    if weight.ndim == y_true.ndim + 1 and weight.shape[-1] == 1:
        weight = jnp.squeeze(weight, -1)
    return weight


def update_confusion_matrix(variables: dict, y_true, y_pred, thresholds, top_k=None, class_id=None,
                            sample_weight=None, multi_label=False, label_weights=None, evenly=False) -> None:
    """Add one batch to the count variables {"tp", "fp", "tn", "fn"} (any subset), as Keras's
    update_confusion_matrix_variables.

    Args: y_true: [B, ...] labels (cast to bool); y_pred: [B, ...] scores in [0, 1]; thresholds: T floats;
    sample_weight: None, [B] or [B, ...]; multi_label: counts [T, L] per label of y_pred [B, L]; evenly:
    the thresholds are Keras's evenly spaced ones (the bucketed update, as Keras uses then).
    """
    y_true, y_pred = jnp.asarray(y_true).astype(jnp.float32), jnp.asarray(y_pred).astype(jnp.float32)
    y_pred, y_true = _align(y_pred, y_true)
    weight = _weights_like(sample_weight, y_true, y_pred)
    if top_k is not None:
        y_pred = _filter_top_k(y_pred, top_k)
    if class_id is not None:
        if y_pred.ndim == 1:
            raise ValueError(f"With `class_id`, y_pred must be [B, C] (num_samples, num_classes); got "
                             f"{describe(y_pred)}.")
        y_true, y_pred = y_true[..., class_id, None], y_pred[..., class_id, None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"The confusion-matrix metrics need y_true and y_pred of the same shape [B, ...]; got "
                         f"y_true: {describe(y_true)}, y_pred: {describe(y_pred)}.")
    weight = 1.0 if weight is None else jnp.broadcast_to(weight, y_pred.shape)
    if label_weights is not None:
        weight = weight * jnp.broadcast_to(jnp.asarray(label_weights, jnp.float32)[None], y_pred.shape)
    if not multi_label:
        y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
        weight = weight if jnp.ndim(weight) == 0 else weight.reshape(-1)
    thresholds = np.asarray(thresholds, np.float32)
    counts = (_bucketed_counts if evenly else _compared_counts)(y_true, y_pred, weight, thresholds)
    for key, value in counts.items():
        if key in variables:
            variables[key].assign(variables[key] + value)


def _bucketed_counts(y_true, y_pred, weight, thresholds) -> dict:
    """Counts for evenly spaced thresholds in O(T + N): Keras's segment-sum of score buckets.

    A score p falls in bucket ceil(p (T - 1)) - 1 (0 when the end thresholds carry Keras's epsilon);
    the positives above threshold i are the reverse cumulative sum of the buckets from i on."""
    num_thresholds = len(thresholds)
    labels = (y_true != 0).astype(jnp.float32)
    true_labels, false_labels = labels * weight, (1.0 - labels) * weight
    buckets = jnp.ceil(jnp.clip(y_pred, 0.0, 1.0) * (num_thresholds - 1.0)) - 1
    if thresholds[0] < 0.0 or thresholds[-1] > 1.0:
        buckets = jnp.maximum(buckets, 0)
    buckets = buckets.astype(jnp.int32)

    def above(values):           # [N] or [B, L] -> [T] or [T, L]
        def per_label(column, ids):
            summed = jax.ops.segment_sum(column, ids, num_segments=num_thresholds)
            return jnp.flip(jnp.cumsum(jnp.flip(summed)))
        if values.ndim == 1:
            return per_label(values, buckets)
        return jax.vmap(per_label, in_axes=1, out_axes=1)(values, buckets)

    tp, fp = above(true_labels), above(false_labels)
    return {"tp": tp, "fp": fp, "tn": jnp.sum(false_labels, axis=0) - fp, "fn": jnp.sum(true_labels, axis=0) - tp}


def _compared_counts(y_true, y_pred, weight, thresholds) -> dict:
    """Counts by comparing every score with every threshold: [T, N] (or [T, B, L]) booleans."""
    shape = (-1,) + (1,) * y_pred.ndim
    predicted = y_pred[None] > jnp.asarray(thresholds).reshape(shape)
    actual = jnp.broadcast_to((y_true != 0)[None], predicted.shape)
    weight = jnp.broadcast_to(jnp.asarray(weight, jnp.float32), y_pred.shape)[None]

    def count(condition):
        return jnp.sum(jnp.where(condition, weight, 0.0), axis=1)
    return {"tp": count(actual & predicted), "fp": count(~actual & predicted),
            "tn": count(~actual & ~predicted), "fn": count(actual & ~predicted)}


class _ConfusionMatrixConditionCount(Metric):
    """One count of the confusion matrix per threshold: float32 [T]; result() a scalar when T == 1."""

    _condition = "tp"

    def __init__(self, thresholds=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.init_thresholds = thresholds
        self.thresholds = parse_thresholds(thresholds, 0.5, type(self).__name__)
        self._evenly = evenly_spaced(self.thresholds)
        self.accumulator = self.add_variable((len(self.thresholds),), "zeros", name="accumulator")

    def update_state(self, y_true, y_pred, sample_weight=None):
        update_confusion_matrix({self._condition: self.accumulator}, y_true, y_pred, self.thresholds,
                                sample_weight=sample_weight, evenly=self._evenly)

    def result(self):
        value = jnp.asarray(self.accumulator)
        return value[0] if len(self.thresholds) == 1 else value

    def get_config(self) -> dict:
        return {**super().get_config(), "thresholds": self.init_thresholds}


class TruePositives(_ConfusionMatrixConditionCount):
    """The (weighted) number of positives predicted positive (p > threshold), as `keras.metrics.TruePositives`.

    >>> m = TruePositives(); m.update_state(jnp.array([0, 1, 1, 1]), jnp.array([1.0, 0.0, 1.0, 1.0]))
    >>> float(m.result())
    2.0
    """

    _condition = "tp"


class FalsePositives(_ConfusionMatrixConditionCount):
    """The (weighted) number of negatives predicted positive, as `keras.metrics.FalsePositives`."""

    _condition = "fp"


class TrueNegatives(_ConfusionMatrixConditionCount):
    """The (weighted) number of negatives predicted negative, as `keras.metrics.TrueNegatives`."""

    _condition = "tn"


class FalseNegatives(_ConfusionMatrixConditionCount):
    """The (weighted) number of positives predicted negative, as `keras.metrics.FalseNegatives`."""

    _condition = "fn"


class _PrecisionRecall(Metric):
    """tp / (tp + other) per threshold, `other` being "fp" (Precision) or "fn" (Recall)."""

    _other = "fp"

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        check_class_options(type(self).__name__, top_k, class_id)
        self.init_thresholds, self.top_k, self.class_id = thresholds, top_k, class_id
        default = 0.5 if top_k is None else NEG_INF
        self.thresholds = parse_thresholds(thresholds, default, type(self).__name__)
        self._evenly = evenly_spaced(self.thresholds)
        shape = (len(self.thresholds),)
        self.true_positives = self.add_variable(shape, "zeros", name="true_positives")
        other = {"fp": "false_positives", "fn": "false_negatives"}[self._other]
        setattr(self, other, self.add_variable(shape, "zeros", name=other))
        self._other_counts = getattr(self, other)

    def update_state(self, y_true, y_pred, sample_weight=None):
        update_confusion_matrix({"tp": self.true_positives, self._other: self._other_counts}, y_true, y_pred,
                                self.thresholds, top_k=self.top_k, class_id=self.class_id,
                                sample_weight=sample_weight, evenly=self._evenly)

    def result(self):
        tp = jnp.asarray(self.true_positives)
        value = _divide_no_nan(tp, tp + jnp.asarray(self._other_counts))
        return value[0] if len(self.thresholds) == 1 else value

    def get_config(self) -> dict:
        return {**super().get_config(), "thresholds": self.init_thresholds, "top_k": self.top_k,
                "class_id": self.class_id}


class Precision(_PrecisionRecall):
    """tp / (tp + fp): how many predicted positives are positive, as `keras.metrics.Precision`.

    Args: thresholds: p > t is positive (0.5; a list gives one value per threshold); top_k: only the
    k highest scores of the last axis count as predicted; class_id: only this class (column) counts.

    >>> m = Precision(); m.update_state(jnp.array([0, 1, 1, 1]), jnp.array([1.0, 0.0, 1.0, 1.0]))
    >>> round(float(m.result()), 4)     # tp 2, fp 1
    0.6667
    """

    _other = "fp"


class Recall(_PrecisionRecall):
    """tp / (tp + fn): how many positives are predicted positive, as `keras.metrics.Recall`
    (arguments as Precision's).

    >>> m = Recall(); m.update_state(jnp.array([0, 1, 1, 1]), jnp.array([1.0, 0.0, 1.0, 1.0]))
    >>> round(float(m.result()), 4)     # tp 2, fn 1
    0.6667
    """

    _other = "fn"
