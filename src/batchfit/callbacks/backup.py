"""BackupAndRestore: a fit started again continues from the last backup, at the exact batch.

Keras restarts the interrupted epoch; batchfit saves the whole Position (weights, optimizer and
RNG state, the data order, the epoch's running totals and batch losses, a gradient-accumulation
group in progress) and the History so far, so the resumed run ends bitwise where a run that was
never stopped ends: same weights, optimizer state and History.
"""

from __future__ import annotations

import warnings

import numpy as np

from batchfit.callbacks.base import Callback, every_nth
from batchfit.checkpoint import TrainingCheckpoints

__all__ = ["BackupAndRestore"]


class BackupAndRestore(Callback):
    """Back up the training position in `backup_dir`; a later `fit` with this callback resumes from it.

    Args:
      backup_dir: a folder for this run's backups only (orbax checkpoints; see batchfit.checkpoint).
      save_freq: "epoch" (at each epoch's end), an integer n (every n batches, counted across
        epochs as Keras counts them; with steps_per_execution="auto" compiled calls end exactly
        there), or False (only when Ctrl-C stops fit).
      double_checkpoint: keep the previous backup too; if the latest cannot be read, restore that one.
      delete_checkpoint: delete `backup_dir` when fit ends normally.

    A fit stopped by Ctrl-C saves its position first. A one-shot iterator (a plain generator) or
    a stream with steps_per_epoch cannot be read again from inside an epoch: with it, backups
    are made at epoch ends only (a warning says so) and the run resumes at the epoch boundary.
    Put BackupAndRestore after callbacks that add to the epoch logs (learning_rate): the backup
    records the logs as they are when its on_epoch_end runs.
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
        self._reset()
        self._mid_epoch = resumes_mid_epoch
        if self._by_batch and not resumes_mid_epoch:
            warnings.warn(f"BackupAndRestore(save_freq={self.save_freq}): this input cannot be read again from "
                          f"inside an epoch (a one-shot iterator, or steps_per_epoch on a stream), so backups "
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
            self._save()

    def on_epoch_batch_losses(self, epoch, batch_losses):
        self._epoch_losses = {k: np.asarray(v, np.float64).tolist() for k, v in batch_losses.items()}

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_ended = epoch
        if self.save_freq == "epoch" or (self._by_batch and not self._mid_epoch):
            self._save(ended=(epoch, logs or {}))

    def on_train_interrupt(self):
        """Ctrl-C stopped fit at a step boundary: back up the position unless it is already saved."""
        position = self.model.get_position()
        at = (position.epoch, position.batch)
        if at == self._saved_at or (position.batch and not self._mid_epoch):
            return
        if position.batch == 0 and self._epoch_ended != position.epoch - 1:
            return       # stopped between an epoch's end and its logs: the History would miss that epoch
        self._save(position=position)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            self._store.delete()

    def _save(self, position=None, ended=None) -> None:
        position = position if position is not None else self.model.get_position()
        extra = {"history": self._history(ended), "since_saving": self._since_saving}
        self._store.save(position, extra)
        self._saved_at = (position.epoch, position.batch)

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


def _number(value):
    """A log value as JSON keeps it: a NumPy or JAX scalar as its Python number (exact), else as it is."""
    return value.item() if isinstance(value, np.generic) or np.ndim(value) == 0 and hasattr(value, "item") else value
