"""History: what fit returns. Per-epoch logs, and every raw batch loss of every epoch."""

from __future__ import annotations

import numpy as np

from batchfit.callbacks.base import Callback

__all__ = ["History"]


class History(Callback):
    """`history[key][e]`: the logged value of epoch e (Keras); `batch_history[key][e]`: raw batch values.

    `history["loss"][e]` is the batch-size-weighted mean of the losses of epoch e's batches,
    each measured before its own update; `batch_history["loss"][e]` lists those losses.
    """

    epoch_ends_in_order = False      # it only records: fit may hand it epoch e once epoch e + 1 runs

    def __init__(self):
        super().__init__()
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.batch_history: dict[str, list[list[float]]] = {}

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_batch_losses(self, epoch, batch_losses):
        for key, values in batch_losses.items():
            self.batch_history.setdefault(key, []).append(np.asarray(values, np.float64).tolist())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"
