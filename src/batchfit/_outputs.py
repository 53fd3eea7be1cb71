"""compile() for a model with several outputs: a loss (and metrics) per output, weighed by `loss_weights`.

The model's module gives a dict {output name: y_pred} and the data a dict {output name: y}. The
loss the optimizer sees is `sum_k loss_weights[k] * loss_k`, per sample, so sample weights and
the batch normalizer apply to it as to any loss. As Keras 3 does, the logs also hold each
output's own loss (`{name}_loss`, not weighted by loss_weights) and its metrics (`{name}_{metric}`).
"""

from __future__ import annotations

import jax.numpy as jnp

from batchfit import losses as losses_lib
from batchfit import metrics as metrics_lib

__all__ = ["OutputsLoss", "OutputLoss", "OutputMetric", "OutputStatefulMetric", "per_output"]


class OutputsLoss(losses_lib.Loss):
    """sum_k weights[k] * losses[k](y_true[k], y_pred[k]), per sample [B]."""

    refuses_nonfinite_targets = False

    def __init__(self, losses: dict, weights: dict):
        super().__init__(name="loss")
        self.losses, self.weights = losses, weights

    def call(self, y_true, y_pred):
        total = None
        for name, loss in self.losses.items():
            value = self.weights[name] * loss.per_sample(y_true[name], y_pred[name])
            total = value if total is None else total + value
        return total

    per_sample = call             # already one value per sample, over dicts that need no casting

    def validate_targets(self, y, num_outputs) -> None:
        for name, loss in self.losses.items():
            try:
                loss.validate_targets(y[name], num_outputs.get(name) if isinstance(num_outputs, dict) else None)
            except ValueError as e:
                raise ValueError(f"For output '{name}': {e}") from None


class OutputLoss(metrics_lib.Metric):
    """The log `{output}_loss`: output k's own loss, as Keras tracks it (sum_i w_i l_i / sum of n_b)."""

    def __init__(self, output: str, loss):
        super().__init__(name=f"{output}_loss")
        self.output, self.loss = output, loss
        self.total = self.add_variable((), name="total")
        self.count = self.add_variable((), name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self.loss.per_sample(y_true[self.output], y_pred[self.output]).astype(jnp.float32)
        self.count.assign_add(jnp.float32(values.shape[0]))
        self.total.assign_add(jnp.sum(values if sample_weight is None else values * sample_weight))

    def result(self):
        return jnp.where(self.count.value > 0, self.total.value / jnp.maximum(self.count.value, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


class OutputMetric(metrics_lib.MeanMetricWrapper):
    """A per-sample metric of output k, logged as `{output}_{name}`."""

    def __init__(self, output: str, metric):
        super().__init__(metric.call, name=f"{output}_{metric.name}")
        self.output = output

    def call(self, y_true, y_pred):
        return super().call(y_true[self.output], y_pred[self.output])


class OutputStatefulMetric(metrics_lib.Metric):
    """A metric with its own variables (Keras's update_state / result), of output k: `{output}_{name}`."""

    def __init__(self, output: str, metric):
        super().__init__(name=f"{output}_{metric.name}")
        self.output, self.inner = output, metric

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.inner.update_state(y_true[self.output], y_pred[self.output], sample_weight=sample_weight)

    def result(self):
        return self.inner.result()

    def reset_state(self):
        self.inner.reset_state()


def _for_output(name: str, metric):
    return OutputMetric(name, metric) if metric.per_sample_mean else OutputStatefulMetric(name, metric)


def _by_output(value, names: tuple, what: str) -> dict:
    """A setting given once, as a list in the outputs' order, or as a dict by output name."""
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"compile(): `{what}` names outputs {sorted(unknown)} that the model does not have; "
                             f"its outputs are {list(names)}.")
        return {name: value.get(name) for name in names}
    if isinstance(value, (list, tuple)) and what != "metrics":
        if len(value) != len(names):
            raise ValueError(f"compile(): `{what}` has {len(value)} entries for {len(names)} outputs "
                             f"({list(names)}). Give one per output, or a dict by output name.")
        return dict(zip(names, value))
    return {name: value for name in names}


def _metric_lists(metrics, names: tuple) -> dict:
    if metrics is None:
        return {name: [] for name in names}
    if isinstance(metrics, dict):
        return {name: _as_list(m) for name, m in _by_output(metrics, names, "metrics").items()}
    metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    if metrics and all(isinstance(m, (list, tuple)) or m is None for m in metrics):
        if len(metrics) != len(names):
            raise ValueError(f"compile(): `metrics` has {len(metrics)} lists for {len(names)} outputs "
                             f"({list(names)}). Give one list per output, or a dict by output name.")
        return {name: _as_list(m) for name, m in zip(names, metrics)}
    return {name: list(metrics) for name in names}


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def per_output(loss, metrics, loss_weights, names: tuple):
    """(the total loss, each output's loss as a metric, each output's `metrics`) for outputs `names`."""
    losses = {name: losses_lib.get(spec) for name, spec in _by_output(loss, names, "loss").items()
              if spec is not None}
    if not losses:
        raise ValueError(f"compile() needs a loss for at least one of the outputs {list(names)}.")
    weights = {name: 1.0 if w is None else float(w)
               for name, w in _by_output(loss_weights, names, "loss_weights").items()}
    tracked = [OutputLoss(name, loss) for name, loss in losses.items()]
    measured = [_for_output(name, metrics_lib.get(m, losses.get(name)))
                for name, specs in _metric_lists(metrics, names).items() for m in specs]
    return OutputsLoss(losses, weights), tuple(tracked), tuple(measured)
