"""A model's own training step (Keras's JAX protocol) as a pure step of the named training state.

Keras's `train_step(state, data) -> (logs, state)` sees `state = (trainable_variables,
non_trainable_variables, optimizer_variables, metrics_variables)`, four lists of arrays. The
wrappers here go from a TrainState (and the metrics' variables carried in Totals.states) to that
tuple and back, so the user's step runs inside the same compiled calls as the built-in one
(`jit(step)` for *_on_batch, `jit(lax.scan(step))` for fit). Its logs become Totals rows:

* a log named after one of the model's metrics is that metric's running value: its row is
  (value, 1), overwritten at every step (what Keras's History shows at the epoch's end);
* any other log (a raw batch value) is accumulated as (n_b * value, n_b): History shows the
  batch-size-weighted mean over the epoch, as for the built-in loss.

Row 0 is "loss" (when the step logs one); `names` are the other logs, in the step's order.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.engine.state import Batch, TrainState, zero_totals
from batchfit.engine.step import Totals
from batchfit.errors import describe
from batchfit.optimizers import _stateless
from batchfit.optimizers._loss_scale import scale_of

__all__ = ["Layout", "CustomStep", "to_keras", "from_keras", "log_rows", "as_data", "custom_train_step",
           "custom_eval_step", "custom_predict_step", "initial_totals", "flat_logs", "logged"]


class Layout(NamedTuple):
    """Where Keras's lists sit in a TrainState: leaf indices, in the order of the model's
    `trainable_variables` (into the params' leaves) and `non_trainable_variables` (into the model state's)."""

    train_order: tuple
    non_train_order: tuple
    opt_def: Any = None            # the treedef of the model optimizer's optax state


class CustomStep(NamedTuple):
    """The user's steps and what the engine needs to run them.

    train: (keras_state, data) -> (logs, keras_state), the model's `train_step`, or None;
    test: (keras_state [3 lists], data) -> (logs, keras_state), the model's `test_step`, or None;
    names: the log names after "loss" (the Totals rows 1..); running: the names that are a metric's
    running value; has_loss: whether the step logs "loss"; metrics_initial: the metrics' variables
    after reset_state(), host arrays; extras: (name, optimizer) of the optimizers other than the
    model's own whose state is in opt_state[1][name] (a list of arrays); predict: ((trainable,
    non_trainable), x) -> (outputs, non_trainable), the model's `predict_step`, or None;
    train_logs / test_logs: the names each step logs (`names` holds both: train's, then test's own).
    """

    train: Callable | None
    test: Callable | None
    layout: Layout
    names: tuple = ()
    running: frozenset = frozenset()
    has_loss: bool = True
    metrics_initial: tuple = ()
    extras: tuple = ()
    predict: Callable | None = None
    train_logs: frozenset = frozenset()
    test_logs: frozenset = frozenset()


def initial_totals(custom: CustomStep):
    """Zero rows and the metrics' reset variables (one entry in Totals.states: all of them, flat)."""
    return Totals(zero_totals(len(custom.names)), (tuple(np.asarray(v) for v in custom.metrics_initial),))


def _opt_parts(custom: CustomStep, opt_state):
    """(the model optimizer's state, {name: leaves} of the others)."""
    return (opt_state[0], opt_state[1]) if custom.extras else (opt_state, {})


def to_keras(custom: CustomStep, state: TrainState, metric_values) -> tuple:
    """Keras's (trainable, non_trainable, optimizer, metrics) variables of `state`, as lists."""
    params, model_state = jax.tree.leaves(state.params), jax.tree.leaves(state.model_state)
    main, _ = _opt_parts(custom, state.opt_state)
    return ([params[i] for i in custom.layout.train_order], [model_state[i] for i in custom.layout.non_train_order],
            jax.tree.leaves(main), list(metric_values))


def _placed(order, values, old_leaves, what: str) -> list:
    """`old_leaves` with leaf order[k] replaced by values[k] (cast to the old dtype)."""
    values = list(values)
    if len(values) != len(order):
        raise ValueError(f"The state train_step returned has {len(values)} {what}; the model has {len(order)}. "
                         f"Return the four lists of `state` with one value per variable, in the same order.")
    leaves = list(old_leaves)
    for k, i in enumerate(order):
        leaves[i] = jnp.asarray(values[k]).astype(jnp.asarray(old_leaves[i]).dtype)
    return leaves


def from_keras(custom: CustomStep, state: TrainState, keras_state, extras: dict) -> TrainState:
    """The TrainState after a step that returned `keras_state` (and left the other optimizers' `extras`)."""
    trainable, non_trainable, optimizer_vars = keras_state[0], keras_state[1], keras_state[2]
    params = _placed(custom.layout.train_order, trainable, jax.tree.leaves(state.params), "trainable_variables")
    model_state = _placed(custom.layout.non_train_order, non_trainable, jax.tree.leaves(state.model_state),
                          "non_trainable_variables")
    main, old_extras = _opt_parts(custom, state.opt_state)
    main_leaves = jax.tree.leaves(main)
    main = jax.tree.unflatten(jax.tree.structure(main), _placed(range(len(main_leaves)), optimizer_vars, main_leaves,
                                                                "optimizer_variables"))
    opt_state = (main, {name: list(extras.get(name, old_extras[name])) for name in old_extras}) if custom.extras \
        else main
    return TrainState(jax.tree.unflatten(jax.tree.structure(state.params), params),
                      jax.tree.unflatten(jax.tree.structure(state.model_state), model_state), opt_state, state.step + 1)


def flat_logs(logs) -> dict:
    """The step's logs as {name: float32 scalar}; a nested dict (Keras's compile_metrics) is flattened."""
    if not isinstance(logs, dict):
        raise TypeError(f"train_step / test_step must return (logs, state) with logs a dict of scalars; got logs "
                        f"{describe(logs)}. Return e.g. ({{'loss': loss}}, state).")
    flat = {}
    for name, value in logs.items():
        if isinstance(value, dict):
            flat.update(flat_logs(value))
            continue
        value = jnp.asarray(value)
        if value.shape != ():
            raise ValueError(f"The step's log {name!r} is {describe(value)}; batchfit logs one number per name. "
                             f"Reduce it (e.g. jnp.mean) before returning it.")
        flat[name] = value.astype(jnp.float32)
    return flat


def log_rows(custom: CustomStep, rows, logs: dict, n):
    """Totals rows after one step: a metric's running value replaces its row, any other log adds (n*v, n)."""
    out = []
    for i, name in enumerate(("loss", *custom.names)):
        value = logs.get(name)
        if value is None:
            out.append(rows[i])
        elif name in custom.running:
            out.append(jnp.stack([value, jnp.float32(1.0)]))
        else:
            out.append(rows[i] + jnp.stack([n * value, n]))
    return jnp.stack(out).astype(jnp.float32)


def as_data(batch: Batch):
    """Keras's `data`: (x, y), (x, y, sample_weight) when there are weights, or x alone without targets."""
    if batch.y is None:
        return batch.x
    return (batch.x, batch.y) if batch.w is None else (batch.x, batch.y, batch.w)


def _metric_values(values, old) -> tuple:
    """The metrics' variables a step returned, in the carry's dtypes (a scan carry keeps its types)."""
    return tuple(_placed(range(len(old)), values, old, "metrics_variables"))


def _num_samples(batch: Batch):
    return jnp.float32(jax.tree.leaves(batch.x)[0].shape[0])


def custom_train_step(custom: CustomStep, state: TrainState, totals, batch: Batch):
    """The user's train_step on the named state: (state, totals, batch) -> (state, totals, logs["loss"])."""
    keras_state = to_keras(custom, state, totals.states[0])
    main, extras = _opt_parts(custom, state.opt_state)
    bound = {id(opt): list(extras[name]) for name, opt in custom.extras}
    bound["loss_scale"] = scale_of(main)          # what the model's optimizer.scale_loss multiplies by
    with _stateless.binding(bound):
        logs, new = custom.train(keras_state, as_data(batch))
    logs = flat_logs(logs)
    new_extras = {name: bound[id(opt)] for name, opt in custom.extras}
    state = from_keras(custom, state, new, new_extras)
    metric_values = _metric_values(new[3], totals.states[0])
    totals = Totals(log_rows(custom, totals.rows, logs, _num_samples(batch)), (metric_values,))
    return state, totals, logs.get("loss", jnp.float32(0.0))


def custom_eval_step(custom: CustomStep, state: TrainState, totals, batch: Batch):
    """The user's test_step: (state, totals, batch) -> (totals, logs["loss"]); the weights are unchanged."""
    if custom.test is None:
        raise ValueError("This model defines train_step but not test_step: evaluate() and validation need "
                         "test_step(self, state, data) -> (logs, state), with state = (trainable_variables, "
                         "non_trainable_variables, metrics_variables). Define it, or leave validation out.")
    trainable, non_trainable, _, metric_values = to_keras(custom, state, totals.states[0])
    logs, new = custom.test((trainable, non_trainable, metric_values), as_data(batch))
    logs = flat_logs(logs)
    metric_values = _metric_values(new[2], totals.states[0])
    totals = Totals(log_rows(custom, totals.rows, logs, _num_samples(batch)), (metric_values,))
    return totals, logs.get("loss", jnp.float32(0.0))


def custom_predict_step(custom: CustomStep, state: TrainState, x):
    """The user's predict_step on one batch x [B, ...]: its outputs (the non-trainable values it returns
    are dropped: predict changes no state)."""
    trainable, non_trainable, _, _ = to_keras(custom, state, ())
    returned = custom.predict((trainable, non_trainable), x)
    if not isinstance(returned, (tuple, list)) or len(returned) != 2:
        raise TypeError(f"predict_step must return (outputs, non_trainable_variables), as Keras's JAX "
                        f"predict_step does; got {describe(returned)}. Return e.g. (y_pred, state[1]).")
    return returned[0]


def logged(custom: CustomStep, mode: str) -> tuple:
    """`custom.names` with None for each log that mode's step ("train" or "test") does not report:
    the names the loop reads the Totals rows with (a None row is not reported)."""
    logs = custom.train_logs if mode == "train" else custom.test_logs
    return tuple(name if name in logs else None for name in custom.names)
