"""The only Python loop: dispatch one compiled chunk after another, hand logs to callbacks.

Nothing here reads the device per step. Logs are copied to the host once per dispatch,
and only when a callback wants per-batch logs; otherwise once per epoch.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np

from batchfit.data.arrays import plan_chunks
from batchfit.engine.compiled import Executables
from batchfit.engine.state import read_totals, zero_totals

# The small ints and zero totals the compiled calls take are kept on the device: a Python int
# or NumPy argument is copied to the device on every call, several us each, on a call that
# runs a small model's whole epoch in a few hundred.
_DEVICE_INTS: dict = {}
_DEVICE_INTS_KEPT = 4096


def _on_device(value: int):
    """`value` as an int32 device scalar, made once (past _DEVICE_INTS_KEPT values: an np.int32,
    the same signature to jit)."""
    found = _DEVICE_INTS.get(value)
    if found is None:
        found = np.int32(value)
        if len(_DEVICE_INTS) < _DEVICE_INTS_KEPT:
            found = _DEVICE_INTS[value] = jax.device_put(found)
    return found


@functools.cache
def _zero_totals(num_metrics: int):
    """state.zero_totals on the device (the compiled calls never donate their totals)."""
    return jax.device_put(zero_totals(num_metrics))


__all__ = ["FitPlan", "QuietPlan", "DataRefused", "run_fit", "prepare_quiet", "run_quiet", "run_evaluate",
           "run_predict"]


class DataRefused(Exception):
    """The compiled call refused its data: the value checks it was asked to run failed, and no step ran."""


class FitPlan(NamedTuple):
    """The settings of one fit call, validated by the caller."""

    epochs: int
    initial_epoch: int
    steps_per_execution: int
    metric_names: tuple
    accumulate_steps: int = 1     # batches per update (gradient accumulation); 1: an update per batch


def _read_report(report) -> np.ndarray:
    """A chunk's report on the host (waits for the call); DataRefused when the call refused its
    data (the report's last value is 0)."""
    host = np.asarray(report)
    if not host[-1]:
        raise DataRefused()
    return host


def _split_report(report, plan: FitPlan) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's report on the host, as float64: (its batch losses, its running totals [rows, 2])."""
    width = 2 * (1 + len(plan.metric_names)) + 1
    host = np.asarray(_read_report(report), np.float64)
    return host[:-width], host[-width:-1].reshape(-1, 2)


def _host_logs(report, plan: FitPlan) -> dict:
    """The running logs after a chunk, with `batch_loss`: the raw loss of its last batch."""
    losses, totals = _split_report(report, plan)
    return {**read_totals(totals, ("loss", *plan.metric_names)), "batch_loss": float(losses[-1])}


def _epoch_results(reports: list, plan: FitPlan) -> tuple[dict, np.ndarray]:
    """(the epoch's logs, every batch loss) from its chunks' reports: one host copy each."""
    return _epoch_logs([_split_report(r, plan) for r in reports], plan)


def _epoch_logs(parts: list, plan: FitPlan) -> tuple[dict, np.ndarray]:
    """_epoch_results from the reports on the host (_split_report)."""
    losses = parts[0][0] if len(parts) == 1 else np.concatenate([batch for batch, _ in parts])
    return read_totals(parts[-1][1], ("loss", *plan.metric_names)), losses


def _throttle(outputs: list, max_in_flight: int | None):
    """Wait until at most `max_in_flight` dispatches are unfinished (streams: bounds the chunks held)."""
    if max_in_flight and len(outputs) >= max_in_flight:
        jax.block_until_ready(outputs[-max_in_flight])


def _run_epoch(exe: Executables, state, feed, epoch, plan: FitPlan, callbacks, publish, should_stop, check=0):
    """Dispatch one epoch's pieces; returns the state and each call's report (device arrays, read later).

    `check`: the value checks the first call runs on its data first (compiled._data_ok); that
    call's report is read before any other call is dispatched."""
    totals = _zero_totals(len(plan.metric_names))
    want_begin = callbacks is not None and callbacks.wants("on_train_batch_begin")
    want_end = callbacks is not None and callbacks.wants("on_train_batch_end")
    reports, k = [], plan.accumulate_steps
    acc = exe.zero_accumulated(state) if k > 1 else None
    for piece in feed.epoch(epoch):
        _throttle(reports, feed.max_in_flight)
        if check and reports:                  # the checked call is read (DataRefused) before the next
            _split_report(reports[0], plan)
            check = 0
        chunk = piece.chunk
        if want_begin:
            callbacks.on_train_batch_begin(chunk.first)
        if k > 1:
            state, totals, acc, report = exe.fit_chunk_accumulate(
                state, totals, acc, piece.data, _on_device(chunk.start), piece.order, _on_device(check),
                _on_device(chunk.first), accumulate=k,
                num_steps=chunk.num_steps, tail=chunk.tail, batch_size=piece.batch_size)
        else:
            state, totals, report = _fit_chunk(exe, state, totals, piece.data, chunk, piece.order, check,
                                               piece.batch_size)
        reports.append(report)
        publish(state)
        if want_end:
            callbacks.on_train_batch_end(chunk.last, _host_logs(report, plan))
        if should_stop():
            break
    if k > 1 and reports and (chunk.last + 1) % k:    # the epoch ends inside a group: update with it
        if check:
            _split_report(reports[0], plan)
        state, _ = exe.apply_accumulated(state, acc)
        publish(state)
    return state, reports


def _fit_chunk(exe: Executables, state, totals, data, chunk, rows, check: int, batch_size: int):
    run = exe.fit_chunk(num_steps=chunk.num_steps, tail=chunk.tail, batch_size=batch_size)
    return run(state, totals, data, _on_device(chunk.start), rows, _on_device(check))


def _learn_steps(callbacks, num_batches: int):
    """A stream of unknown length: after the first epoch, its batch count is the callbacks' `steps`."""
    for cb in callbacks.callbacks:
        if cb.params.get("steps", 0) is None:
            cb.params["steps"] = num_batches


def run_fit(exe: Executables, state: list, source, plan: FitPlan, callbacks,
            publish: Callable, should_stop: Callable, validate: Callable | None = None, check: int = 0) -> list:
    """Train for epochs [initial_epoch, epochs) on `source`; `publish(state)` after every dispatch.

    `state`: the TrainState as the compiled calls take it (the list of its leaves). `check`:
    value checks (compiled._data_ok bits) the first compiled call runs on the source's arrays;
    DataRefused when they fail, with no step run and the state published unchanged.

    The source prepares epoch e + 1 while the device runs epoch e (the next order of
    in-memory arrays, the next chunks of a stream); the logs of epoch e are read after that.
    """
    epochs = range(plan.initial_epoch, plan.epochs)
    callbacks.on_train_begin()
    logs = {}
    feed = source.feed(epochs, plan.steps_per_execution)
    try:
        for epoch in epochs:
            callbacks.on_epoch_begin(epoch)
            state, reports = _run_epoch(exe, state, feed, epoch, plan, callbacks, publish, should_stop, check)
            check = 0
            if not reports:
                warnings.warn(f"The input ran out of data at epoch {epoch}; training stops. A generator is "
                              f"consumed once: pass a re-iterable input (a list, a bf.data.Dataset) or "
                              f"steps_per_epoch with enough batches for every epoch.", UserWarning, stacklevel=3)
                break
            logs, batch_losses = _epoch_results(reports, plan)
            if validate is not None:
                logs.update({f"val_{k}": v for k, v in validate(state).items()})
            _learn_steps(callbacks, len(batch_losses))
            callbacks.on_epoch_batch_losses(epoch, {"loss": batch_losses})
            callbacks.on_epoch_end(epoch, logs)
            if should_stop():
                break
    finally:
        feed.close()
    callbacks.on_train_end(logs)
    return state


class QuietPlan(NamedTuple):
    """What run_quiet needs besides the data and the state, prepared once (prepare_quiet): a
    fit call repeated on the same arrays (model._Repeat) looks nothing up again."""

    plan: FitPlan
    batch_size: int
    calls: tuple          # one (chunk, its compiled call, chunk.start on the device) per compiled call of an epoch
    zeros: object         # the totals each epoch starts from, on the device
    check: int            # the value checks of the first call (compiled._data_ok bits)
    check_bits: object    # `check` on the device


def prepare_quiet(exe: Executables, plan: FitPlan, rows: int, batch_size: int, check: int = 0) -> QuietPlan:
    """run_quiet's plan for epochs of `rows` samples in batches of `batch_size`."""
    calls = tuple((chunk, exe.fit_chunk(num_steps=chunk.num_steps, tail=chunk.tail, batch_size=batch_size),
                   _on_device(chunk.start)) for chunk in plan_chunks(rows, batch_size, plan.steps_per_execution))
    return QuietPlan(plan, batch_size, calls, _zero_totals(len(plan.metric_names)), check, _on_device(check))


def run_quiet(quiet: QuietPlan, state: list, source, history, publish: Callable) -> list:
    """run_fit on in-memory arrays (an ArraySource) with no callback but `history`, no validation
    and an update per batch: the same compiled calls and the same History, with nothing in
    between. On a small model, each layer of run_fit (hooks, feed, pieces, per-epoch logs)
    costs microseconds run cold right after the device, and together a tenth of the epoch.

    Epoch e's reports are read once epoch e + 1 is dispatched (the checked call's, before the
    next dispatch); the History takes them in when it is first read. What can be done before
    the last read is: while the device runs, it costs nothing.
    """
    plan, size, calls = quiet.plan, quiet.batch_size, quiet.calls
    epochs, k = range(plan.initial_epoch, plan.epochs), len(calls)
    data, check, bits = source.data(k * len(epochs)), quiet.check, quiet.check_bits
    reports, hosts = [], []
    for epoch in epochs:
        order, totals = source.order(epoch), quiet.zeros
        for chunk, run, start in calls:
            if check and reports:          # the checked call is read (DataRefused) before the next
                _read_report(reports[0])
                check, bits = 0, _on_device(0)
            state, totals, report = run(state, totals, data, start, chunk.rows(order, size), bits)
            reports.append(report)
            publish(state)
        source.draw_next(epoch, epoch + 1 if epoch + 1 < plan.epochs else None, plan.initial_epoch)
        if len(reports) > k:
            hosts += [_read_report(report) for report in reports[len(hosts):-k]]   # the epoch before
    history.on_train_begin()
    history.on_epochs_later([(epoch, functools.partial(_quiet_results, hosts, i * k, (i + 1) * k, plan))
                             for i, epoch in enumerate(epochs)])
    hosts += [_read_report(report) for report in reports[len(hosts):]]      # waits; DataRefused
    return state


def _quiet_results(hosts: list, start: int, end: int, plan: FitPlan) -> tuple[dict, dict]:
    """(logs, batch losses) of the epoch whose reports are hosts[start:end] (run_quiet)."""
    logs, batch_losses = _epoch_logs([_split_report(host, plan) for host in hosts[start:end]], plan)
    return logs, {"loss": batch_losses}


def _one_pass(source, steps_per_execution: int, outputs: list):
    """The pieces of one pass over `source`, throttled on `outputs` (the caller's dispatch results)."""
    key = source.next_key()
    feed = source.feed([key], steps_per_execution)
    try:
        for piece in feed.epoch(key):
            _throttle(outputs, feed.max_in_flight)
            yield piece
    finally:
        feed.close()


def run_evaluate(exe: Executables, state: list, source, steps_per_execution: int, metric_names) -> dict:
    """Sample-weighted means of the loss and metrics over one pass of `source`, at fixed weights."""
    totals, losses = _zero_totals(len(metric_names)), []
    for piece in _one_pass(source, steps_per_execution, losses):
        chunk = piece.chunk
        totals, chunk_losses = exe.eval_chunk(state, totals, piece.data, _on_device(chunk.start), piece.order,
                                              num_steps=chunk.num_steps, tail=chunk.tail, batch_size=piece.batch_size)
        losses.append(chunk_losses)
    return read_totals(totals, ("loss", *metric_names))


def run_predict(exe: Executables, state: list, source, steps_per_execution: int):
    """The model's outputs on one pass of `source`, as NumPy arrays (one pytree leaf per output)."""
    outs = []
    for piece in _one_pass(source, steps_per_execution, outs):
        outs.append(exe.predict_chunk(state, piece.data.x, _on_device(piece.chunk.start),
                                      num_steps=piece.chunk.num_steps,
                                      tail=piece.chunk.tail, batch_size=piece.batch_size))
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(b) for b in a]), *outs)
