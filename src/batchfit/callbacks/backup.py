"""BackupAndRestore: a fit started again continues from the last backup, at the exact batch.

Keras restarts the interrupted epoch; batchfit saves the whole Position (weights, optimizer and
RNG state, the data order, the epoch's running totals and batch losses, a gradient-accumulation
group in progress) and the History so far, so the resumed run ends bitwise where a run that was
never stopped ends: same weights, optimizer state and History.
"""

from __future__ import annotations

import copy
import threading
import warnings

import jax
import numpy as np

from batchfit._async_writer import WRITER, snapshot
from batchfit.callbacks.base import Callback, every_nth
from batchfit.checkpoint import TrainingCheckpoints

__all__ = ["BackupAndRestore"]


class BackupAndRestore(Callback):
    """Back up the training position in `backup_dir`; a later `fit` with this callback resumes from it.

    Args:
      backup_dir: a folder for this run's backups only (one file per backup, orbax across processes; see
        batchfit.checkpoint).
      save_freq: "epoch" (at each epoch's end), an integer n (every n batches, counted across
        epochs as Keras counts them; with steps_per_execution="auto" compiled calls end exactly
        there), or False (only when Ctrl-C stops fit).
      double_checkpoint: keep the previous backup too; if the latest cannot be read, restore that one.
      delete_checkpoint: delete `backup_dir` when fit ends normally.

    A fit stopped by Ctrl-C saves its position first. A stream read steps_per_epoch batches an
    epoch, each epoch reading on where the last stopped (Keras's rule), resumes at the exact batch
    too: the backup keeps the place it had reached at that batch (data/_stream_place.py). A one-shot
    iterator (a plain generator) cannot be read again from inside an epoch: with it, backups are made
    at epoch ends only (a warning says so) and the run resumes at the epoch boundary, reading the
    generator passed then from where it is; one that had run out runs out again.
    Put BackupAndRestore after callbacks that add to the epoch logs (learning_rate): the backup
    records the logs as they are when its on_epoch_end runs.

    A bf.data.Dataset whose shuffle(seed=None) / sample_from_datasets(seed=None) steps drew their seeds
    resumes in the same order in a new process: the backup keeps the drawn seeds and the restarted fit
    puts them into the dataset it builds again (data/_seeds.py). That includes the steps a flat_map /
    interleave function or a group_by_window reduce_func builds (their seeds derive from that step's own
    drawn seed: data/_nested.py), the shuffled datasets such a function returns without building them
    when it captures them (closure, defaults, the globals it names, a partial's arguments:
    data/_captured.py), and `validation_data` (its seeds, its order generation, the pass each epoch reads
    and, with validation_steps, the place each epoch's validation reads on from: engine/validation.py),
    so val_* resume bitwise too. A training or validation pipeline with another number of such steps, or
    with a cache() after one, is refused before any step; so is one whose function has returned a
    drawn-seed dataset reached another way (an object's attribute) by the time the seeds are put back
    (after a first batch is read); a resumed one that returns it only later raises at that call. A map
    function that builds such steps (`window(n).map(lambda w: w.shuffle(n))`) is kept like a flat_map's,
    and so are the shuffled datasets a map function or a from_generator generator captures
    (data/_map_seeds.py). Not kept: the place inside a one-shot iterator (a generator) that had been read
    and had not run out (training reads the one passed to the resumed fit on from where it is, with a
    warning that the batches may differ; validation with validation_steps refuses a backup past its
    start), and shuffled datasets that a generator builds, or that a map function or a generator reaches
    another way (an object's attribute): not refused either, unless a flat_map / interleave function
    returns them.

    Backups are written in the background (batchfit/_async_writer.py): at a save, fit copies the
    position on the device and goes on; a save that falls due while the previous backup is still
    waiting to be written replaces it (the backup on disk is then staler, never torn; with
    double_checkpoint the two newest saves are kept waiting, so the previous one is still there).
    Saves are numbered in the order they fall due, so after fit returns the folder holds the steps a
    synchronous run leaves. Fit's end, Ctrl-C and the next fit wait for the writes (with
    delete_checkpoint, fit's end drops the backups not yet started: they are deleted anyway). A
    failed write raises in fit at the next save.
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"`backup_dir` must name a folder for the backups; got {backup_dir!r}. "
                             f"Pass e.g. BackupAndRestore('/tmp/backup').")
        if not (save_freq == "epoch" or save_freq is False
                or (isinstance(save_freq, (int, np.integer)) and not isinstance(save_freq, bool) and save_freq > 0)):
            raise ValueError(f"Invalid value for argument `save_freq`; got save_freq={save_freq!r}. Expected "
                             f"'epoch', a positive integer (a number of batches) or False.")
        self.backup_dir, self.save_freq = backup_dir, save_freq
        self.double_checkpoint, self.delete_checkpoint = bool(double_checkpoint), bool(delete_checkpoint)
        self._store = TrainingCheckpoints(backup_dir, max_to_keep=2 if double_checkpoint else 1)
        self._lock = threading.Lock()
        self._unwritten = []               # (step, read the Position, extra) of the saves not yet written
        self._next_step = None             # the step number of the next save
        self._by_batch = save_freq not in ("epoch", False)
        if self._by_batch:                  # per instance: save_freq="epoch" costs no per-batch host copy
            self.on_train_batch_end = self._on_train_batch_end
        self._reset()

    def _reset(self) -> None:
        self._since_saving = 0             # batches since the last save (Keras's count, across epochs)
        self._epoch, self._done = 0, 0     # the epoch running and its batches done
        self._resumed_at = None            # (epoch, batch) of the position restored, if any
        self._saved_at = None              # (epoch, batch) of the last save
        self._epoch_ended = None           # the last epoch whose on_epoch_end this callback saw
        self._epoch_losses = {}
        self._mid_epoch = True

    def control_batches(self, epoch: int, first: int, count: int, seen: int):
        """With `save_freq=n`, every n-th batch of the fit ends a compiled call (it saves there); the rest stay fused."""
        return every_nth(int(self.save_freq), first, count, seen) if self._by_batch else ()

    # ----- restore ----------------------------------------------------------------

    def restore_position(self, resumes_mid_epoch: bool):
        """Called by fit after on_train_begin: the Position to start from (None: no backup)."""
        WRITER.wait(self, raise_errors=False)     # an earlier fit's backup, if it ended by an exception
        self._reset()
        self._mid_epoch = resumes_mid_epoch
        steps = self._store.steps()
        self._next_step = steps[-1] + 1 if steps else 0
        if self._by_batch and not resumes_mid_epoch:
            warnings.warn(f"BackupAndRestore(save_freq={self.save_freq}): this input cannot be read again from "
                          f"inside an epoch (a one-shot iterator: a generator), so backups "
                          f"are made at epoch ends only and a resumed fit restarts at an epoch boundary. Pass a "
                          f"re-iterable input (a bf.data.Dataset, a list) to resume at the exact batch.",
                          UserWarning, stacklevel=2)
        found = self._store.restore(self.model.get_position().train)
        if found is None:
            return None
        position, extra = found
        self._put_history(extra.get("history"))
        self._since_saving = int(extra.get("since_saving", 0))
        self._resumed_at = self._saved_at = (position.epoch, position.batch)
        self._epoch_ended = position.epoch - 1 if position.batch == 0 else None
        return position

    def _put_history(self, saved) -> None:
        """Put the History of the epochs before the backup into this fit's History."""
        history = getattr(self.model, "history", None)
        if saved is None or history is None:
            return
        history.epoch = list(saved["epoch"])
        history.history = {k: list(v) for k, v in saved["history"].items()}
        history.batch_history = {k: [list(e) for e in v] for k, v in saved["batch_history"].items()}

    # ----- save -------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._done = self._resumed_at[1] if self._resumed_at and self._resumed_at[0] == epoch else 0

    def _on_train_batch_end(self, batch, logs=None):
        self._since_saving += batch + 1 - self._done
        self._done = batch + 1
        if self._since_saving >= self.save_freq and self._mid_epoch:
            self._since_saving = 0
            WRITER.check(self)                    # an earlier backup failed: say so before going on
            self._save()

    def on_epoch_batch_losses(self, epoch, batch_losses):
        self._epoch_losses = {k: np.asarray(v, np.float64).tolist() for k, v in batch_losses.items()}

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_ended = epoch
        if self.save_freq == "epoch" or (self._by_batch and not self._mid_epoch):
            self._save(ended=(epoch, logs or {}))

    def on_train_interrupt(self):
        """Ctrl-C stopped fit at a step boundary: back up the position unless it is already saved, and wait
        until the backups are on disk (a failed write warns: KeyboardInterrupt is on its way)."""
        position = self.model.get_position()
        at = (position.epoch, position.batch)
        # At batch 0, an epoch whose on_epoch_end did not run yet would be missing from the History.
        if at != self._saved_at and not (position.batch and not self._mid_epoch) and not (
                position.batch == 0 and self._epoch_ended != position.epoch - 1):
            self._save(position=position)
        WRITER.wait(self, raise_errors=False)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            WRITER.cancel(self)
            with self._lock:
                self._unwritten = []
            WRITER.wait(self)
            self._store.delete()
        else:
            WRITER.wait(self)

    def on_train_exit(self):
        """After fit, normally or by an exception: the backup pending is written before fit returns."""
        WRITER.wait(self, raise_errors=False)

    def _save(self, position=None, ended=None) -> None:
        """Hand a backup of the position (copied on the device now) to the background writer."""
        if position is None:
            read, self._saved_at = _capture(self.model)
        else:
            read, self._saved_at = (lambda: position), (position.epoch, position.batch)
        extra = {"history": self._history(ended), "since_saving": self._since_saving}
        if self._next_step is None:
            steps = self._store.steps()
            self._next_step = steps[-1] + 1 if steps else 0
        with self._lock:                            # the newest max_to_keep saves wait to be written
            self._unwritten = [*self._unwritten, (self._next_step, read, extra)][-self._store.max_to_keep:]
        self._next_step += 1
        WRITER.submit(("backup", str(self._store.directory)), self._write, owner=self,
                      what=f"BackupAndRestore's backup in {self._store.directory}")

    def _write(self) -> None:
        """In the writer thread: write the saves waiting, oldest first."""
        with self._lock:
            saves, self._unwritten = self._unwritten, []
        for step, read, extra in saves:
            self._store.save(read(), extra, step=step)

    def _history(self, ended) -> dict:
        """The fit's History as JSON, with the epoch `ended` = (epoch, logs) this callback just saw
        (History, the last callback, records it after this one)."""
        history = getattr(self.model, "history", None)
        epochs = list(history.epoch) if history is not None else []
        values = {k: list(v) for k, v in history.history.items()} if history is not None else {}
        batches = {k: [list(e) for e in v] for k, v in history.batch_history.items()} if history is not None else {}
        if ended is not None and ended[0] not in epochs:
            epochs.append(ended[0])
            for key, value in ended[1].items():
                values.setdefault(key, []).append(_number(value))
            for key, losses in self._epoch_losses.items():     # History may have them already
                if len(batches.setdefault(key, [])) < len(epochs):
                    batches[key].append(losses)
        return {"epoch": epochs, "history": values, "batch_history": batches}


class _Held:
    """Stands for the model's Slot when a Position is made from a snapshot: `state` is the TrainState."""

    def __init__(self, state):
        self.state = state


def _capture(model):
    """(a function returning the Position where training stands now, its (epoch, batch)).

    The arrays the Position needs (the training state, a gradient-accumulation group, stateful metrics)
    are copied on the device now into one buffer (the next training call donates them); the writer
    thread reads them back and makes the Position with the loop's own Cursor.position. A model that does
    not expose its cursor gives model.get_position() (a copy per array, and a wait for the device)."""
    cursor, slot = getattr(model, "_cursor", None), getattr(model, "_slot", None)
    if cursor is None or slot is None or not all(hasattr(cursor, a) for a in ("reports", "accumulated", "totals")):
        position = model.get_position()
        return (lambda: position), (position.epoch, position.batch)
    held = copy.copy(cursor)
    held.reports = list(cursor.reports)
    parts = (list(slot.leaves), cursor.accumulated, None if cursor.totals is None else cursor.totals.states)
    layout, treedef = jax.tree.structure(parts), slot.treedef
    copied = snapshot(jax.tree.leaves(parts))

    def position():
        leaves = [jax.random.wrap_key_data(a, impl=leaf.key_impl) if leaf.key_impl else a
                  for a, leaf in zip(copied.arrays(), copied.layout)]
        train, held.accumulated, states = jax.tree.unflatten(layout, leaves)
        if held.totals is not None:
            held.totals = held.totals._replace(states=states)
        return held.position(_Held(jax.tree.unflatten(treedef, train)))
    return position, (cursor.epoch, cursor.batch)


def _number(value):
    """A log value as JSON keeps it: a NumPy or JAX scalar as its Python number (exact), else as it is."""
    return value.item() if isinstance(value, np.generic) or np.ndim(value) == 0 and hasattr(value, "item") else value
