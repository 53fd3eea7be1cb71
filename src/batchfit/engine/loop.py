"""The only Python loop: dispatch one compiled chunk after another, hand logs to callbacks.

Nothing here reads the device per step. Logs are copied to the host once per dispatch,
and only when a callback wants per-batch logs; otherwise once per epoch. The loop's place
(a Cursor) and the state (a Slot) are the Position that fit can be stopped at and resumed from.
"""

from __future__ import annotations

import _signal
import collections.abc
import signal
import threading
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np

from batchfit.engine._start import restore
from batchfit.engine.compiled import Executables, device_int
from batchfit.engine.state import Position, Slot, copy_tree, read_totals, to_host, zero_totals
from batchfit.engine.step import Totals

__all__ = ["FitPlan", "Cursor", "run_fit", "run_evaluate", "run_predict"]


class FitPlan(NamedTuple):
    """The settings of one fit call, validated by the caller."""

    epochs: int
    initial_epoch: int
    steps_per_execution: int
    metric_names: tuple
    accumulate_steps: int = 1     # batches per update (gradient accumulation); 1: an update per batch
    loss_name: str | None = "loss"  # None: row 0 is not logged (a custom train_step that reports no "loss")


_NO_LOSSES = np.zeros(0, np.float32)        # a fresh epoch's prior_losses (only ever concatenated)


class Cursor:
    """The loop's place in fit: the epoch, the batches of it done, and what they left on the device.

    `reports` are the epoch's chunk reports (compiled.Executables.fit_chunk), read on demand;
    `prior_losses` are the batch losses a resumed epoch had before this call; `totals` (step.Totals):
    the epoch's running rows and stateful metrics' state (None at an epoch's start: its first dispatch
    takes Executables.fresh_totals; a resumed position's metric state None: reset_state()'s values).
    `start_place`: the data_place of the position resumed from; `data_place(epoch, batch)`: a stream's place;
    `validation_order(epoch)`: the validation fields of a Position (engine/validation.Validation.order; None:
    no validation data).
    """

    def __init__(self, plan: FitPlan, seed: int, start: Position | None = None, num_batches: int | None = None,
                 data_seeds: tuple = (), validation_order: Callable | None = None):
        self.plan, self.seed, self.data_seeds, self.validation_order = plan, seed, data_seeds, validation_order
        self.width, self.start_place, self.data_place = 2 * (1 + len(plan.metric_names)), None, None
        if start is None:
            self.begin(plan.initial_epoch)
        else:
            self.resume(start, num_batches)

    def resume(self, start: Position, num_batches: int | None) -> None:
        """Move to `start` (a Position a callback restored at fit start), checked against this fit."""
        _check_start(start, self.plan, num_batches)
        self.seed, self.epoch, self.batch, self.data_seeds = start.seed, start.epoch, start.batch, start.data_seeds
        self.totals = Totals(start.totals, start.metric_states)
        self.prior_losses = np.asarray(start.batch_losses, np.float32)
        self.accumulated, self.reports, self.start_place = start.accumulated, [], start.data_place

    def begin(self, epoch: int) -> None:
        self.epoch, self.batch, self.totals = epoch, 0, None
        self.prior_losses = _NO_LOSSES
        self.accumulated, self.reports = None, []

    def end_epoch(self) -> "Cursor":
        """The epoch just dispatched (its logs read on demand), the cursor now at the next one's start."""
        ended = object.__new__(Cursor)
        ended.__dict__.update(self.__dict__)
        self.begin(self.epoch + 1)
        return ended

    def advance(self, last_batch: int, totals, report) -> None:
        self.batch, self.totals = last_batch + 1, totals
        self.reports.append(report)

    def running_logs(self, report) -> dict:
        """The running logs after a chunk, with `batch_loss`: the raw loss of its last batch."""
        host = to_host(report, np.float64)
        return {**read_totals(host[-self.width:].reshape(-1, 2), self._names), "batch_loss": float(host[-self.width - 1])}

    def results(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """(the epoch's logs so far, every batch loss so far, the totals): one host copy per chunk."""
        hosts = [to_host(r) for r in self.reports]
        losses = np.concatenate([self.prior_losses, *(h[:-self.width] for h in hosts)])
        rows = zero_totals(len(self.plan.metric_names)) if self.totals is None else self.totals.rows
        totals = hosts[-1][-self.width:].reshape(-1, 2) if hosts else np.asarray(rows)
        return read_totals(totals, self._names), losses, totals

    def position(self, slot: Slot) -> Position:
        """A copy of where training stands: the state's arrays copied on the device (training
        donates the originals), the loop's place on the host (reading it waits for the device)."""
        _, losses, totals = self.results()
        states = None if self.totals is None else self.totals.states
        return Position(copy_tree(slot.state), self.epoch, self.batch, self.seed, np.array(totals, np.float32),
                        losses.astype(np.float32), copy_tree(self.accumulated),
                        None if states is None else jax.tree.map(np.array, states), self.data_seeds,
                        *(self.validation_order(self.epoch) if self.validation_order else (None, None, None)),
                        data_place=None if self.data_place is None else self.data_place(self.epoch, self.batch))

    @property
    def _names(self):
        return (self.plan.loss_name, *self.plan.metric_names)


class _RunningLogs(collections.abc.Mapping):
    """Cursor.running_logs(report), read from the device when a callback first looks at them: a callback
    that does not (a checkpoint saving every n batches) lets the loop dispatch on without waiting."""

    def __init__(self, cursor: "Cursor", report):
        self._cursor, self._report, self._logs = cursor, report, None

    def _read(self) -> dict:
        if self._logs is None:
            self._logs = self._cursor.running_logs(self._report)
        return self._logs

    __getitem__ = lambda self, key: self._read()[key]
    __iter__ = lambda self: iter(self._read())
    __len__ = lambda self: len(self._read())
    __bool__ = lambda self: True                # `logs or {}` (CallbackList) must not read them
    __repr__ = lambda self: repr(self._read())


def _check_start(position: Position, plan: FitPlan, num_batches: int | None) -> None:
    """A position to resume from, checked against this call's metrics and data."""
    if position.totals.shape != (1 + len(plan.metric_names), 2):
        raise ValueError(f"set_position(): the position was taken with {position.totals.shape[0] - 1} metrics; "
                         f"this model has {len(plan.metric_names)}. Compile it as it was.")
    if num_batches is not None and position.batch > num_batches:
        raise ValueError(f"set_position(): the position is at batch {position.batch} of epoch {position.epoch}, "
                         f"but an epoch of this data has {num_batches} batches. Pass the same data and "
                         f"batch_size as the run it was taken from.")


def _check_states(states, initial) -> None:
    """The stateful metrics' state a position brought back, checked against this model's metrics."""
    layout = lambda tree: (jax.tree.structure(tree), [(np.shape(a), np.result_type(a)) for a in jax.tree.leaves(tree)])
    if layout(states) != layout(initial):
        raise ValueError("set_position(): the position's metric state does not fit this model's metrics (other "
                         "metrics, or other variables in them). Compile it as it was.")


def _throttle(outputs: list, max_in_flight: int | None):
    """Wait until at most `max_in_flight` dispatches are unfinished (streams: bounds the chunks held)."""
    if max_in_flight and len(outputs) >= max_in_flight:
        jax.block_until_ready(outputs[-max_in_flight])


def _run_epoch(exe: Executables, slot: Slot, feed, cursor: Cursor, callbacks, should_stop: Callable,
               interrupts: "_Interrupts | None" = None) -> None:
    """Dispatch the rest of the cursor's epoch; the state goes back into `slot` after every dispatch."""
    k = cursor.plan.accumulate_steps
    want_begin, want_end = callbacks.wants("on_train_batch_begin"), callbacks.wants("on_train_batch_end")
    if k > 1 and cursor.accumulated is None:
        cursor.accumulated = exe.zero_accumulated(slot.leaves)
    if cursor.totals is None:
        cursor.totals = exe.fresh_totals
    elif cursor.totals.states is None:
        cursor.totals = cursor.totals._replace(states=exe.initial_totals.states)
    else:                                   # a resumed position's metric state
        _check_states(cursor.totals.states, exe.initial_totals.states)
    for piece in feed.epoch(cursor.epoch):
        _throttle(cursor.reports, feed.max_in_flight)
        chunk = piece.chunk
        if want_begin:
            callbacks.on_train_batch_begin(chunk.first)
        slot.leaves, totals, cursor.accumulated, report = exe.fit_chunk(
            slot.leaves, cursor.totals, cursor.accumulated, piece.data, device_int(chunk.start), piece.order,
            device_int(chunk.first), num_steps=chunk.num_steps, tail=chunk.tail, batch_size=piece.batch_size,
            accumulate=k)
        cursor.advance(chunk.last, totals, report)
        if want_end:
            callbacks.on_train_batch_end(chunk.last, _RunningLogs(cursor, report))
        if interrupts is not None:
            interrupts.check()
        if should_stop():
            return


def _finish_group(exe: Executables, slot: Slot, cursor: Cursor) -> None:
    """The epoch (or training) ends inside an accumulation group: update with what it has."""
    if cursor.plan.accumulate_steps > 1 and cursor.batch % cursor.plan.accumulate_steps:
        slot.leaves, _ = exe.apply_accumulated(slot.leaves, cursor.accumulated)
    cursor.accumulated = None


def run_fit(exe: Executables, slot: Slot, source, cursor: Cursor, callbacks, should_stop: Callable,
            validate: Callable | None = None) -> None:
    """Train from the cursor's place to the end of epoch `plan.epochs - 1` on `source`.

    `slot` holds the state before and after every dispatch; `validate(slot) -> logs` runs at
    each epoch's end. The source prepares epoch e + 1 while the device runs epoch e (the next
    order of in-memory arrays, the next chunks of a stream). When no callback needs epoch e to
    have ended before epoch e + 1 starts (callbacks.epoch_ends_can_wait) and there is no
    validation, epoch e's logs are read once epoch e + 1 is dispatched, so the device never
    waits for the host between epochs.

    After on_train_begin, a callback with `restore_position(resumes_mid_epoch) -> Position | None`
    (BackupAndRestore) may move the start (engine/_start.py). Ctrl-C stops at the next step boundary:
    callbacks with `on_train_interrupt()` run (the state and cursor are consistent), then KeyboardInterrupt
    propagates.
    """
    callbacks.on_train_begin()
    try:
        restore(callbacks, slot, source, cursor, validate)        # engine/_start.py: before any step
        with _interrupts_at_step_boundaries() as interrupts:
            try:
                logs = _run_epochs(exe, slot, source, cursor, callbacks, should_stop, validate, interrupts)
            except KeyboardInterrupt:
                if not interrupts.forced:          # a second Ctrl-C may have cut a dispatch: nothing to save
                    for hook in callbacks.listeners("on_train_interrupt"):
                        hook()
                raise
        callbacks.on_train_end(logs)
    finally:                                       # background checkpoint writes end before fit returns or raises
        for hook in callbacks.listeners("on_train_exit"):
            hook()


def _run_epochs(exe: Executables, slot: Slot, source, cursor: Cursor, callbacks, should_stop: Callable,
                validate: Callable | None, interrupts: "_Interrupts") -> dict:
    """run_fit's epochs; returns the last epoch's logs."""
    plan = cursor.plan
    epochs = range(cursor.epoch, plan.epochs)
    defer = validate is None and callbacks.epoch_ends_can_wait()
    logs, pending = {}, None
    feed = source.feed(epochs, plan.steps_per_execution, first_batch=cursor.batch, control=callbacks.control_batches())
    try:
        for epoch in epochs:
            callbacks.on_epoch_begin(epoch)
            _run_epoch(exe, slot, feed, cursor, callbacks, should_stop, interrupts)
            _finish_group(exe, slot, cursor)
            if pending is not None:
                logs, pending = _end_epoch(pending, slot, callbacks, validate), None
            if not cursor.batch:
                warnings.warn(f"The input ran out of data at epoch {epoch}; training stops. A generator is "
                              f"consumed once: pass a re-iterable input (a list, a bf.data.Dataset) or "
                              f"steps_per_epoch with enough batches for every epoch.", UserWarning, stacklevel=4)
                break
            ended = cursor.end_epoch()
            if defer and not should_stop():
                pending = ended
                continue
            logs = _end_epoch(ended, slot, callbacks, validate)
            interrupts.check()
            if should_stop():
                break
    finally:
        feed.close()
        if pending is not None:
            logs = _end_epoch(pending, slot, callbacks, validate)
    return logs


class _Interrupts:
    """Ctrl-C during fit: the first is noted (and raised at the next step boundary), a second raises now."""

    def __init__(self):
        self.requested = self.forced = False

    def handle(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """At a step boundary: raise the KeyboardInterrupt a Ctrl-C asked for."""
        if self.requested:
            raise KeyboardInterrupt


_RUNNING: list = []        # the _Interrupts of the fits running in the main thread (innermost last)


def _on_sigint(signum, frame):
    """The SIGINT handler once a fit has run: a running fit notes it; otherwise Python's default behaviour."""
    if _RUNNING:
        _RUNNING[-1].handle(signum, frame)
    else:
        signal.default_int_handler(signum, frame)


class _interrupts_at_step_boundaries:
    """Catch SIGINT while fit runs (main thread, with Python's default handler or this module's): a
    KeyboardInterrupt raised inside a dispatch would leave the slot holding donated buffers. The handler is
    installed once and acts as Python's default one outside fit; a handler of the user's own is left alone.
    A class rather than a contextmanager, and `_signal.getsignal` (signal.getsignal converts a handler
    function through an enum lookup that fails): fit enters this on every call."""

    def __enter__(self) -> _Interrupts:
        self.interrupts, self.watch = _Interrupts(), False
        if threading.current_thread() is threading.main_thread():
            current = _signal.getsignal(signal.SIGINT)
            if current is signal.default_int_handler:
                signal.signal(signal.SIGINT, _on_sigint)
            self.watch = current is signal.default_int_handler or current is _on_sigint
        if self.watch:
            _RUNNING.append(self.interrupts)
        return self.interrupts

    def __exit__(self, *exc) -> None:
        if self.watch:
            _RUNNING.remove(self.interrupts)


def _end_epoch(ended: Cursor, slot: Slot, callbacks, validate) -> dict:
    """Read an epoch's logs (and validate), and hand them to the callbacks."""
    logs, batch_losses, _ = ended.results()
    if validate is not None:
        logs.update({f"val_{k}": v for k, v in validate(slot).items()})
    for cb in callbacks.callbacks:     # a stream of unknown length: after its first epoch, its batch count is `steps`
        if cb.params.get("steps", 0) is None:
            cb.params["steps"] = len(batch_losses)
    callbacks.on_epoch_batch_losses(ended.epoch, {"loss": batch_losses})
    callbacks.on_epoch_end(ended.epoch, logs)
    return logs


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


def run_evaluate(exe: Executables, leaves: list, source, steps_per_execution: int, metric_names, callbacks) -> dict:
    """Sample-weighted means of the loss and metrics over one pass of `source`, at fixed weights,
    with Keras's test hooks (on_test_begin, on_test_batch_begin / _end per dispatch, on_test_end)."""
    names = ("loss", *metric_names)
    totals, outputs = exe.fresh_totals, []
    want_begin, want_end = callbacks.wants("on_test_batch_begin"), callbacks.wants("on_test_batch_end")
    callbacks.on_test_begin()
    for piece in _one_pass(source, steps_per_execution, outputs):
        chunk = piece.chunk
        if want_begin:
            callbacks.on_test_batch_begin(chunk.first)
        totals = exe.eval_chunk(leaves, totals, piece.data, device_int(chunk.start), piece.order,
                                num_steps=chunk.num_steps, tail=chunk.tail, batch_size=piece.batch_size)
        outputs.append(totals.rows)
        if want_end:
            callbacks.on_test_batch_end(chunk.last, read_totals(totals.rows, names))
        if _RUNNING:                     # validation inside fit (main thread): Ctrl-C acts at this batch boundary
            _RUNNING[-1].check()
    if not outputs:        # a one-shot input (fit's validation generator) has run out: Keras warns, no val_*
        warnings.warn("Your input ran out of data; interrupting training. Make sure that your dataset or generator "
                      "can generate at least `steps_per_epoch * epochs` batches. You may need to use the "
                      "`.repeat()` function when building your dataset.", UserWarning, stacklevel=2)
        callbacks.on_test_end({})
        return {}
    logs = read_totals(totals.rows, names)
    callbacks.on_test_end(logs)
    return logs


def run_predict(exe: Executables, leaves: list, source, steps_per_execution: int, callbacks):
    """The model's outputs on one pass of `source`, as NumPy arrays (one pytree leaf per output),
    with Keras's predict hooks (on_predict_batch_end gets {"outputs": ...} of the dispatch)."""
    outs = []
    want_begin, want_end = callbacks.wants("on_predict_batch_begin"), callbacks.wants("on_predict_batch_end")
    callbacks.on_predict_begin()
    for piece in _one_pass(source, steps_per_execution, outs):
        chunk = piece.chunk
        if want_begin:
            callbacks.on_predict_batch_begin(chunk.first)
        outs.append(exe.predict_chunk(leaves, piece.data.x, device_int(chunk.start), num_steps=chunk.num_steps,
                                      tail=chunk.tail, batch_size=piece.batch_size))
        if want_end:
            callbacks.on_predict_batch_end(chunk.last, {"outputs": jax.tree.map(np.asarray, outs[-1])})
    callbacks.on_predict_end()
    return jax.tree.map(lambda *a: np.concatenate([to_host(b) for b in a]), *outs)
