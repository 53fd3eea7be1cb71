"""Keras's AUC metric (public through `batchfit.metrics`): the area under the ROC or precision-recall
curve, from confusion-matrix counts at fixed thresholds, with Keras's numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from batchfit._loss_base import EPSILON
from batchfit._metric_base import Metric, _divide_no_nan
from batchfit._metric_variables import _current_scope
from batchfit._metrics_confusion import evenly_spaced, parse_thresholds, update_confusion_matrix
from batchfit.errors import describe

__all__ = ["AUC"]

_CURVES = {"roc": "ROC", "pr": "PR", "prgain": "PRGAIN"}
_SUMMATIONS = ("interpolation", "majoring", "minoring")


def _choice(value, allowed: dict, argument: str) -> str:
    key = getattr(value, "value", value)        # a Keras enum member passes as its value
    if not isinstance(key, str) or key.lower() not in allowed:
        raise ValueError(f"AUC: `{argument}` must be one of {sorted(set(allowed.values()))}; got {value!r}.")
    return allowed[key.lower()]


class AUC(Metric):
    """Area under the ROC curve (or the PR curve), as `keras.metrics.AUC`.

    Args:
        num_thresholds: thresholds spaced evenly over [0, 1] (200); the ends get -1e-7 and 1 + 1e-7.
        curve: "ROC" (true vs false positive rate) or "PR" (precision vs recall), or "PRGAIN".
        summation_method: "interpolation" (trapezoids; for PR, Davis & Goadrich's interpolation of the
            counts), "majoring" or "minoring" (the larger or smaller end of each interval).
        thresholds: explicit thresholds in [0, 1] instead of `num_thresholds`.
        multi_label: one curve per label of y_pred [B, L], averaged (weighted by `label_weights`),
            instead of one curve over the flattened scores. `num_labels` sets L up front.
        label_weights: [L] weights of the labels in the counts (or in the average when multi_label).
        from_logits: y_pred are logits; a sigmoid makes them scores.

    Variables true_positives, false_positives, true_negatives, false_negatives: float32 [T] (or [T, L]).

    >>> m = AUC(num_thresholds=3); m.update_state(jnp.array([0, 0, 1, 1]), jnp.array([0.0, 0.5, 0.3, 0.9]))
    >>> float(m.result())   # ROC points (1, 1), (0.5, 0.5), (0, 0): area 0.75
    0.75
    """

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None, dtype=None,
                 thresholds=None, multi_label=False, num_labels=None, label_weights=None, from_logits=False):
        self.curve = _choice(curve, _CURVES, "curve")
        self.summation_method = _choice(summation_method, {s: s for s in _SUMMATIONS}, "summation_method")
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(parse_thresholds(thresholds, 0.5, "AUC"))
            self.num_thresholds = len(inner) + 2
            self._evenly = evenly_spaced([0.0, *inner, 1.0])
        else:
            if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) \
                    or num_thresholds <= 1:
                raise ValueError(f"AUC: `num_thresholds` must be an int > 1; got {num_thresholds!r}.")
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
            self._evenly = True
        self._thresholds = [0.0 - EPSILON, *inner, 1.0 + EPSILON]
        super().__init__(name=name, dtype=dtype)
        self.multi_label, self.num_labels, self._from_logits = bool(multi_label), num_labels, bool(from_logits)
        self.label_weights = None if label_weights is None else jnp.asarray(label_weights, self.dtype)
        self._built = False
        if num_labels is not None and not self.multi_label:
            raise ValueError("AUC: `num_labels` is needed only when `multi_label` is True; got "
                             f"num_labels={num_labels!r} with multi_label=False.")
        if not self.multi_label:
            self._build(None)
        elif num_labels:
            self._build((None, num_labels))

    @property
    def thresholds(self) -> list:
        """The thresholds, with the two end ones."""
        return list(self._thresholds)

    def _build(self, shape) -> None:
        if self.multi_label:
            if len(shape) != 2:
                raise ValueError(f"AUC(multi_label=True) needs y_pred of rank 2 [B, L]; got shape {tuple(shape)}.")
            self._num_labels = int(shape[1])
            variable_shape = (self.num_thresholds, self._num_labels)
        else:
            variable_shape = (self.num_thresholds,)
        for name in ("true_positives", "false_positives", "true_negatives", "false_negatives"):
            setattr(self, name, self.add_variable(variable_shape, "zeros", name=name))
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = jnp.asarray(y_pred)
        if not self._built:
            if _current_scope() is not None:
                raise ValueError(
                    f"AUC(multi_label=True) without `num_labels` makes its variables on its first update_state, "
                    f"from y_pred ({describe(y_pred)}); inside compile() they must exist before. Pass "
                    f"AUC(multi_label=True, num_labels={y_pred.shape[-1]}).")
            self._build(y_pred.shape)
        if self._from_logits:
            y_pred = jax.nn.sigmoid(y_pred)
        update_confusion_matrix(
            {"tp": self.true_positives, "tn": self.true_negatives, "fp": self.false_positives,
             "fn": self.false_negatives}, y_true, y_pred, self._thresholds, sample_weight=sample_weight,
            multi_label=self.multi_label, label_weights=None if self.multi_label else self.label_weights,
            evenly=self._evenly)

    def _counts(self):
        return tuple(jnp.asarray(v) for v in (self.true_positives, self.false_positives, self.true_negatives,
                                              self.false_negatives))

    def _average(self, per_threshold):
        """Sum over the thresholds' intervals; multi-label: the (label-weighted) mean of the labels' areas."""
        if not self.multi_label:
            return jnp.sum(per_threshold)
        by_label = jnp.sum(per_threshold, axis=0)
        if self.label_weights is None:
            return jnp.mean(by_label)
        return _divide_no_nan(jnp.sum(by_label * self.label_weights), jnp.sum(self.label_weights))

    def interpolate_pr_auc(self):
        """Keras's PR area: tp and p = tp + fp linear within each interval, precision integrated exactly
        (slope * (dtp + intercept * log(p_a / p_b)) / positives per interval)."""
        tp, fp, _, fn = self._counts()
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        slope = _divide_no_nan(dtp, jnp.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        ratio = jnp.where((p[:-1] > 0) & (p[1:] > 0), _divide_no_nan(p[:-1], jnp.maximum(p[1:], 0)),
                          jnp.ones_like(p[1:]))
        increments = _divide_no_nan(slope * (dtp + intercept * jnp.log(ratio)), jnp.maximum(tp[1:] + fn[1:], 0))
        return self._average(increments)

    def _curve(self):
        """(x, y) of the curve at each threshold."""
        tp, fp, tn, fn = self._counts()
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            return _divide_no_nan(fp, fp + tn), recall
        if self.curve == "PR":
            return recall, _divide_no_nan(tp, tp + fp)
        scale = _divide_no_nan(tp + fn, tn + fp)
        recall_gain = jnp.where(tp == 0, 0.0, 1.0 - scale * _divide_no_nan(fn, tp))
        precision_gain = jnp.where(tp == 0, 1.0, 1.0 - scale * _divide_no_nan(fp, tp))
        return jnp.maximum(recall_gain, 0.0), precision_gain

    def result(self):
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self.interpolate_pr_auc()
        x, y = self._curve()
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = jnp.minimum(y[:-1], y[1:])
        else:
            heights = jnp.maximum(y[:-1], y[1:])
        return self._average((x[:-1] - x[1:]) * heights)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(jnp.zeros(variable.shape, variable.dtype))

    def get_config(self) -> dict:
        label_weights = None if self.label_weights is None else np.asarray(self.label_weights).tolist()
        config = {"num_thresholds": self.num_thresholds, "curve": self.curve,
                  "summation_method": self.summation_method, "multi_label": self.multi_label,
                  "num_labels": self.num_labels, "label_weights": label_weights, "from_logits": self._from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = self.thresholds[1:-1]
        return {**super().get_config(), **config}
