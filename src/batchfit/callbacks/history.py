"""History: what fit returns. Per-epoch logs, and every raw batch loss of every epoch."""

from __future__ import annotations

from typing import Callable

import numpy as np

from batchfit.callbacks.base import Callback

__all__ = ["History"]


def _settled(name: str, doc: str) -> property:
    """A History attribute that first takes in the epochs given to on_epochs_later."""
    def get(self):
        if self._pending:
            self._settle()
        return getattr(self, name)

    def set(self, value):
        if self._pending:
            self._settle()
        setattr(self, name, value)
    return property(get, set, doc=doc)


class History(Callback):
    """`history[key][e]`: the logged value of epoch e (Keras); `batch_history[key][e]`: raw batch values.

    `history["loss"][e]` is the batch-size-weighted mean of the losses of epoch e's batches,
    each measured before its own update; `batch_history["loss"][e]` lists those losses.
    """

    _pending: list | tuple = ()     # (epoch, results) of on_epochs_later, not yet taken in

    def __init__(self):
        super().__init__()
        self._epoch: list[int] = []
        self._history: dict[str, list[float]] = {}
        self._batch_history: dict[str, list[list[float]]] = {}

    epoch = _settled("_epoch", "The indices of the epochs trained, in order.")
    history = _settled("_history", "{key: [the logged value of each epoch]}")
    batch_history = _settled("_batch_history", "{key: [[the raw value of each batch] of each epoch]}")

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_batch_losses(self, epoch, batch_losses):
        for key, values in batch_losses.items():
            self.batch_history.setdefault(key, []).append(np.asarray(values, np.float64).tolist())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def on_epochs_later(self, epochs: list[tuple[int, Callable[[], tuple[dict, dict]]]]):
        """batchfit's quiet fit: these epochs ended. Each `results()` gives that epoch's
        (logs, batch losses), as on_epoch_end and on_epoch_batch_losses would get them; they
        are taken in when the history is first read. A loop of fit calls that never reads
        it skips the work (on a small model, a tenth of the epoch)."""
        self._pending = [*self._pending, *epochs]

    def _settle(self):
        pending, self._pending = self._pending, []
        for epoch, results in pending:
            logs, batch_losses = results()
            self.on_epoch_batch_losses(epoch, batch_losses)
            self.on_epoch_end(epoch, logs)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"
