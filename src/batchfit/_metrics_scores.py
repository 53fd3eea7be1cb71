"""Keras metrics that are not a mean of per-sample values: RootMeanSquaredError, FBetaScore and F1Score
(public through `batchfit.metrics`)."""

from __future__ import annotations

import jax.numpy as jnp

from batchfit._loss_base import EPSILON, _align
from batchfit._metric_base import Mean, Metric
from batchfit.errors import describe

__all__ = ["RootMeanSquaredError", "FBetaScore", "F1Score"]


class RootMeanSquaredError(Mean):
    """sqrt of the (weighted) mean of the per-sample mean squared error, as `keras.metrics.RootMeanSquaredError`.

    >>> m = RootMeanSquaredError()
    >>> m.update_state(jnp.array([[0.0, 1.0], [0.0, 0.0]]), jnp.array([[1.0, 1.0], [1.0, 1.0]]))
    >>> float(m.result())    # sqrt(mean([0.5, 1.0]))
    0.8660253882408142
    """

    def __init__(self, name: str = "root_mean_squared_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _align(jnp.asarray(y_true, self.dtype), jnp.asarray(y_pred, self.dtype))
        return super().update_state(jnp.square(y_pred - y_true), sample_weight=sample_weight)

    def result(self):
        return jnp.sqrt(super().result())

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}


class FBetaScore(Metric):
    """The F-beta score of multi-class or multi-label predictions [B, C], as `keras.metrics.FBetaScore`.

    Args:
        average: None (one score per class, [C]), "micro" (from the counts of all classes), "macro" (the
            mean of the classes' scores) or "weighted" (their mean weighted by each class's positives).
        beta: a float > 0; recall weighs beta times as much as precision.
        threshold: a prediction p > threshold is positive; None: the largest score of each row is.

    Variables true_positives, false_positives, false_negatives, intermediate_weights: [C] (micro: scalars),
    made on the first update_state from y_pred's shape, as Keras does.

    >>> m = FBetaScore(average="micro", beta=1.0, threshold=0.5)
    >>> m.update_state(jnp.array([[1, 0], [0, 1]]), jnp.array([[0.9, 0.8], [0.2, 0.7]]))
    >>> round(float(m.result()), 4)     # tp 2, fp 1, fn 0: 2 * (2/3 * 1) / (2/3 + 1)
    0.8
    """

    def __init__(self, average=None, beta=1.0, threshold=None, name="fbeta_score", dtype=None):
        super().__init__(name=name, dtype=dtype)
        cls = type(self).__name__
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError(f"{cls}: `average` must be None, 'micro', 'macro' or 'weighted'; got {average!r}.")
        if not isinstance(beta, float) or beta <= 0.0:
            raise ValueError(f"{cls}: `beta` must be a Python float > 0; got {beta!r}. E.g. beta=2.0.")
        if threshold is not None and (not isinstance(threshold, float) or not 0.0 < threshold <= 1.0):
            raise ValueError(f"{cls}: `threshold` must be None or a Python float in (0, 1]; got {threshold!r}. "
                             f"E.g. threshold=0.5.")
        self.average, self.beta, self.threshold = average, beta, threshold
        self.axis = None if average == "micro" else 0
        self._built = False

    def _build(self, y_true_shape, y_pred_shape) -> None:
        if len(y_pred_shape) != 2 or len(y_true_shape) != 2:
            raise ValueError(f"{type(self).__name__} needs y_true and y_pred of shape [B, C]; got y_true shape "
                             f"{tuple(y_true_shape)}, y_pred shape {tuple(y_pred_shape)}.")
        shape = () if self.average == "micro" else (int(y_pred_shape[-1]),)
        for name in ("true_positives", "false_positives", "false_negatives", "intermediate_weights"):
            setattr(self, name, self.add_variable(shape, "zeros", dtype=self.dtype, name=name))
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = jnp.asarray(y_true, self.dtype), jnp.asarray(y_pred, self.dtype)
        if not self._built:
            self._build(y_true.shape, y_pred.shape)
        if self.threshold is None:
            top = jnp.max(y_pred, axis=-1, keepdims=True)
            y_pred = (y_pred >= top) & (jnp.abs(y_pred) > 1e-9)
        else:
            y_pred = y_pred > self.threshold
        y_pred = y_pred.astype(self.dtype)
        weight = None if sample_weight is None else jnp.asarray(sample_weight, self.dtype)
        if weight is not None and weight.shape != y_true.shape[:1]:
            raise ValueError(f"{type(self).__name__}: `sample_weight` must be [B] for y_true {describe(y_true)}; "
                             f"got {describe(weight)}.")

        def weighted_sum(values):
            values = values if weight is None else values * weight[:, None]
            return jnp.sum(values, axis=self.axis)
        self.true_positives.assign(self.true_positives + weighted_sum(y_pred * y_true))
        self.false_positives.assign(self.false_positives + weighted_sum(y_pred * (1 - y_true)))
        self.false_negatives.assign(self.false_negatives + weighted_sum((1 - y_pred) * y_true))
        self.intermediate_weights.assign(self.intermediate_weights + weighted_sum(y_true))

    def result(self):
        tp = jnp.asarray(self.true_positives)
        precision = tp / (tp + self.false_positives + EPSILON)
        recall = tp / (tp + self.false_negatives + EPSILON)
        beta_squared = self.beta ** 2
        score = precision * recall / (beta_squared * precision + recall + EPSILON) * (1 + beta_squared)
        if self.average == "weighted":
            weights = self.intermediate_weights / (jnp.sum(self.intermediate_weights) + EPSILON)
            return jnp.sum(score * weights)
        return score if self.average is None else jnp.mean(score)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(jnp.zeros(variable.shape, variable.dtype))

    def get_config(self) -> dict:
        return {**super().get_config(), "average": self.average, "beta": self.beta, "threshold": self.threshold}


class F1Score(FBetaScore):
    """The F1 score (the harmonic mean of precision and recall), as `keras.metrics.F1Score`;
    arguments as FBetaScore's, with beta 1."""

    def __init__(self, average=None, threshold=None, name="f1_score", dtype=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["beta"]
        return config
