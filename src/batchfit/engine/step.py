"""The one pure train / eval / predict step that every entry point runs.

`fit` scans it K times per compiled call, `train_on_batch` calls it once:
the same function, so the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from batchfit import _logits
from batchfit.engine.state import Accumulated, Batch, ModelGraph, TrainState, zero_totals
from batchfit.errors import describe
from batchfit.optimizers._loss_scale import all_finite, scale_of

__all__ = ["Program", "Totals", "train_step", "accumulate_step", "apply_accumulated", "eval_step", "predict_step",
           "stateful_metrics", "initial_totals", "with_results"]


class Program(NamedTuple):
    """What a compiled model computes: the graph, the loss, the metrics and the optimizer."""

    graph: ModelGraph
    loss: Any                 # batchfit.losses.Loss: per_sample(y_true, y_pred) -> [B]
    metrics: tuple            # batchfit.metrics.Metric: name; per_sample_mean and call(y_true, y_pred) -> [B],
                              #   or Keras's stateless_update_state / stateless_result / stateless_reset_state
    optimizer: optax.GradientTransformation
    weighted_mean: bool       # loss_reduction="weighted_mean": divide by sum(w), not B
    penalty: Callable         # module -> R(theta), the sum of its regularization penalties
    weighted: tuple = ()      # per metric: whether it sees the sample weights (`weighted_metrics=`); () = all do
    custom: Any = None        # engine.custom.CustomStep: the model's own train_step / test_step, or None


def _forward(program: Program, params, model_state, batch: Batch, training: bool):
    """At the weights given: (sum_i w_i l_i, its normalizer, R(theta), y_pred, the new model state).

    The normalizer is n_b, or sum_i w_i with loss_reduction="weighted_mean".
    """
    module = program.graph.merge(params, model_state, training)
    y_pred = _as_float32(module(batch.x))
    per_sample = program.loss.per_sample(batch.y, y_pred)
    weighted = jnp.sum(per_sample) if batch.w is None else jnp.sum(batch.w * per_sample)
    norm = jnp.sum(batch.w) if batch.w is not None and program.weighted_mean else jnp.float32(per_sample.shape[0])
    penalty = program.penalty(module)
    _, new_model_state = program.graph.split(module)
    return weighted, norm, penalty, y_pred, new_model_state


_HALF = (jnp.dtype("float16"), jnp.dtype("bfloat16"))


def _as_float32(y_pred):
    """The model's output as the loss and metrics take it: half precision widened to float32 (Keras's
    losses and metrics compute in float32), keeping the logits a sigmoid / softmax output came from."""
    def widen(out):
        if getattr(out, "dtype", None) not in _HALF:
            return out
        wide = out.astype(jnp.float32)
        source, result = out, wide
        while source is not None and result is not None:      # each primal level, as _logits.record
            _logits.carry(source, result, lambda logits: logits.astype(jnp.float32))
            source, result = getattr(source, "primal", None), getattr(result, "primal", None)
        return wide
    return jax.tree.map(widen, y_pred)


def _batch_loss(weighted, norm, penalty):
    """L_b = sum_i w_i l_i / normalizer + R(theta); the data part is 0 when every weight is 0."""
    return jnp.where(norm > 0, weighted / jnp.where(norm > 0, norm, 1.0), 0.0) + penalty


def _objective(program: Program, params, model_state, batch: Batch, training: bool):
    """L_b at the weights given, with (y_pred, new model state) as aux."""
    weighted, norm, penalty, y_pred, new_model_state = _forward(program, params, model_state, batch, training)
    return _batch_loss(weighted, norm, penalty), (y_pred, new_model_state)


class Totals(NamedTuple):
    """What fit / evaluate accumulate over an epoch, on the device (a scan carry: fixed shapes and dtypes).

    rows: float32 [1 + metrics, 2], the (sum, count) rows of state.zero_totals: the loss, then each metric.
      A stateful metric's row is (result, 1), written by `with_results` when the logs are read.
    states: per stateful metric (in program.metrics order), the values of its variables, a tuple;
      None on the host means "as reset_state() leaves them" (initial_totals fills them in).
    """

    rows: Any
    states: tuple | None


def stateful_metrics(metrics) -> tuple:
    """(row index, metric) of the metrics that keep their own variables (not a mean of per-sample values)."""
    return tuple((1 + i, m) for i, m in enumerate(metrics) if not m.per_sample_mean)


def initial_totals(metrics) -> Totals:
    """Fresh totals on the host: zero rows and each stateful metric's state after reset_state()."""
    states = tuple(tuple(np.asarray(v) for v in m.stateless_reset_state()) for _, m in stateful_metrics(metrics))
    return Totals(zero_totals(len(metrics)), states)


def _update_state(metric, state: tuple, y, y_pred, w) -> tuple:
    """A stateful metric's update_state on one batch, as a pure function of its variables' values."""
    new = metric.stateless_update_state(list(state), y, y_pred, sample_weight=w)
    return tuple(jnp.asarray(v).astype(old.dtype) for v, old in zip(new, state))


def _accumulate(program: Program, totals: Totals, loss, batch: Batch, y_pred) -> Totals:
    """Add this batch: the loss weighted by n_b and each mean metric by w_i (1 for an unweighted metric) to
    their (sum, count) rows; each stateful metric's update_state to its variables."""
    n = jnp.float32(jax.tree.leaves(batch.y)[0].shape[0])
    rows, states, stateful = [jnp.stack([n * loss, n])], [], iter(totals.states)
    for metric, weighted in zip(program.metrics, program.weighted or (True,) * len(program.metrics)):
        w = batch.w if weighted else None
        if not metric.per_sample_mean:
            states.append(_update_state(metric, next(stateful), batch.y, y_pred, w))
            rows.append(jnp.zeros(2, jnp.float32))
            continue
        values = metric.call(batch.y, y_pred).astype(jnp.float32)
        rows.append(jnp.stack([jnp.sum(values), n] if w is None else [jnp.sum(w * values), jnp.sum(w)]))
    return Totals(totals.rows + jnp.stack(rows).astype(jnp.float32), tuple(states))


def with_results(program: Program, totals: Totals) -> Totals:
    """`totals` with each stateful metric's row set to (result(), 1), so the rows are all the logs."""
    rows = totals.rows
    for (row, metric), state in zip(stateful_metrics(program.metrics), totals.states):
        value = metric.stateless_result(list(state))
        if isinstance(value, dict) or jnp.shape(value) != ():
            raise ValueError(f"{type(metric).__name__}.result() returned "
                             f"{describe(value) if not isinstance(value, dict) else 'a dict'}; batchfit logs one "
                             f"number per metric. Return a scalar (e.g. reduce with ops.mean).")
        rows = rows.at[row].set(jnp.stack([jnp.asarray(value, jnp.float32), jnp.float32(1.0)]))
    return totals._replace(rows=rows)


def _scaled(value, scale):
    """`value` times the loss scale of a LossScaleOptimizer (mixed_float16); as it is without one (None)."""
    return value if scale is None else value * scale


def _applied(grads, scale) -> jax.Array:
    """int32 []: 1 when the update counts (Keras's `iterations`), 0 when loss scaling skipped it."""
    return jnp.ones((), jnp.int32) if scale is None else all_finite(grads).astype(jnp.int32)


def _scaled_objective(program: Program, params, model_state, batch: Batch, scale):
    """L_b times the loss scale (the gradients to compute), with (L_b, y_pred, new model state) as aux."""
    loss, (y_pred, new_model_state) = _objective(program, params, model_state, batch, True)
    return _scaled(loss, scale), (loss, y_pred, new_model_state)


def train_step(program: Program, state: TrainState, totals: Totals, batch: Batch):
    """One update: (state, totals, batch) -> (state, totals, L_b), L_b measured before the update.

    With a LossScaleOptimizer the gradients are those of L_b times its scale; the optimizer divides
    them again and skips a step whose gradients are not finite (which `state.step` does not count)."""
    scale = scale_of(state.opt_state)
    grad_fn = jax.value_and_grad(_scaled_objective, argnums=1, has_aux=True)
    (_, (loss, y_pred, model_state)), grads = grad_fn(program, state.params, state.model_state, batch, scale)
    updates, opt_state = program.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(params, model_state, opt_state, state.step + _applied(grads, scale))
    return new_state, _accumulate(program, totals, loss, batch, y_pred), loss


def _weighted_sum(program: Program, params, model_state, batch: Batch, scale=None):
    """sum_i w_i l_i (times the loss scale, if any), the part of L_b that accumulation differentiates;
    (L_b, normalizer, ...) as aux."""
    weighted, norm, penalty, y_pred, new_model_state = _forward(program, params, model_state, batch, True)
    return _scaled(weighted, scale), (_batch_loss(weighted, norm, penalty), norm, y_pred, new_model_state)


def accumulate_step(program: Program, state: TrainState, totals, acc: Accumulated, batch: Batch):
    """One batch of a group: L_b at the group's weights, no update; its gradient sum joins `acc`
    (scaled by the group's loss scale, when the optimizer has one)."""
    grad_fn = jax.value_and_grad(_weighted_sum, argnums=1, has_aux=True)
    (_, (loss, norm, y_pred, model_state)), grads = grad_fn(program, state.params, state.model_state, batch,
                                                            scale_of(state.opt_state))
    acc = Accumulated(jax.tree.map(jnp.add, acc.grads, grads), acc.count + norm)
    return state._replace(model_state=model_state), _accumulate(program, totals, loss, batch, y_pred), acc, loss


def apply_accumulated(program: Program, state: TrainState, acc: Accumulated):
    """The group's update: the gradient one batch of all its samples gives, sum / normalizer + dR/dtheta."""
    def penalty(params):
        return program.penalty(program.graph.merge(params, state.model_state, True))
    scale = scale_of(state.opt_state)
    safe = jnp.where(acc.count > 0, acc.count, 1.0)
    grads = jax.tree.map(lambda g, r: jnp.where(acc.count > 0, g / safe, 0.0) + _scaled(r, scale), acc.grads,
                         jax.grad(penalty)(state.params))
    updates, opt_state = program.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(params, state.model_state, opt_state, state.step + _applied(grads, scale))
    return new_state, Accumulated.zeros(state.params)


def eval_step(program: Program, state: TrainState, totals: Totals, batch: Batch):
    """The loss and metrics of one batch in inference mode; the state is unchanged."""
    loss, (y_pred, _) = _objective(program, state.params, state.model_state, batch, False)
    return _accumulate(program, totals, loss, batch, y_pred), loss


def predict_step(graph: ModelGraph, state: TrainState, x):
    """The model's output on one batch in inference mode."""
    return graph.merge(state.params, state.model_state, False)(x)
