"""The only Python loop: dispatch one compiled chunk after another, hand logs to callbacks.

Nothing here reads the device per step. Logs are copied to the host once per dispatch,
and only when a callback wants per-batch logs; otherwise once per epoch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.data.arrays import epoch_order, permute, plan_chunks
from batchfit.engine.compiled import DeviceData, Executables
from batchfit.engine.state import TrainState, zero_totals

__all__ = ["FitPlan", "run_fit", "run_evaluate", "run_predict"]


class FitPlan(NamedTuple):
    """The settings of one fit call, validated by the caller."""

    epochs: int
    initial_epoch: int
    batch_size: int
    steps_per_execution: int
    shuffle: bool
    seed: int
    metric_names: tuple


def _host_logs(totals: dict, batch_loss=None) -> dict:
    """One device-to-host copy of the accumulators; the divisions happen on the host."""
    logs = {k: float(t / c) if c > 0 else 0.0 for k, (t, c) in jax.device_get(totals).items()}
    if batch_loss is not None:
        logs["batch_loss"] = float(batch_loss)
    return logs


def _run_epoch(exe: Executables, state, data: DeviceData, plan: FitPlan, callbacks, publish, should_stop):
    """Dispatch one epoch's chunks over `data` (already in epoch order); returns device values."""
    n = jax.tree.leaves(data.y)[0].shape[0]
    totals = zero_totals(plan.metric_names)
    want_begin, want_end = callbacks.wants("on_train_batch_begin"), callbacks.wants("on_train_batch_end")
    losses = []
    for chunk in plan_chunks(n, plan.batch_size, plan.steps_per_execution):
        if want_begin:
            callbacks.on_train_batch_begin(chunk.first)
        state, totals, chunk_losses = exe.fit_chunk(
            state, totals, data, chunk.start,
            num_steps=chunk.num_steps, tail=chunk.tail, batch_size=plan.batch_size)
        losses.append(chunk_losses)
        publish(state)
        if want_end:
            callbacks.on_train_batch_end(chunk.last, _host_logs(totals, chunk_losses[-1]))
        if should_stop():
            break
    return state, totals, losses


def run_fit(exe: Executables, state: TrainState, data: DeviceData, plan: FitPlan, callbacks,
            publish: Callable, should_stop: Callable, validate: Callable | None = None) -> TrainState:
    """Train for epochs [initial_epoch, epochs); `publish(state)` after every dispatch.

    While the device runs epoch e, the host draws the order of epoch e + 1; the logs of
    epoch e are read after that, so the two overlap.
    """
    n = jax.tree.leaves(data.y)[0].shape[0]
    next_order = lambda epoch: (epoch_order(n, plan.seed, epoch)
                                if plan.shuffle and epoch < plan.epochs else None)
    callbacks.on_train_begin()
    logs, order = {}, next_order(plan.initial_epoch)
    for epoch in range(plan.initial_epoch, plan.epochs):
        callbacks.on_epoch_begin(epoch)
        epoch_data = data if order is None else permute(data, order)
        state, totals, losses = _run_epoch(exe, state, epoch_data, plan, callbacks, publish, should_stop)
        order = next_order(epoch + 1)
        logs = _host_logs(totals)
        if validate is not None:
            logs.update({f"val_{k}": v for k, v in validate(state).items()})
        batch_losses = np.concatenate([np.asarray(l, np.float64) for l in losses])
        callbacks.on_epoch_batch_losses(epoch, {"loss": batch_losses})
        callbacks.on_epoch_end(epoch, logs)
        if should_stop():
            break
    callbacks.on_train_end(logs)
    return state


def run_evaluate(exe: Executables, state: TrainState, data: DeviceData, batch_size: int,
                 steps_per_execution: int, metric_names) -> dict:
    """Sample-weighted means of the loss and metrics over all of `data`, at fixed weights."""
    n = jax.tree.leaves(data.y)[0].shape[0]
    totals = zero_totals(metric_names)
    for chunk in plan_chunks(n, batch_size, steps_per_execution):
        totals, _ = exe.eval_chunk(state, totals, data, chunk.start,
                                   num_steps=chunk.num_steps, tail=chunk.tail, batch_size=batch_size)
    return _host_logs(totals)


def run_predict(exe: Executables, state: TrainState, x, batch_size: int, steps_per_execution: int):
    """The model's outputs on all of `x`, as NumPy arrays (one pytree leaf per output)."""
    n = jax.tree.leaves(x)[0].shape[0]
    outs = [exe.predict_chunk(state, x, chunk.start, num_steps=chunk.num_steps, tail=chunk.tail,
                              batch_size=batch_size)
            for chunk in plan_chunks(n, batch_size, steps_per_execution)]
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(b) for b in a]), *outs)
