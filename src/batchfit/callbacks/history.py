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

    def plot(self, metrics=None, ax=None):
        """Draw each logged curve against the epoch: `name` solid, `val_name` dashed in the same colour.

        Args:
          metrics: names to draw ("loss", "accuracy", ...; their "val_" twins come along), or None
            for every name logged, "learning_rate" included.
          ax: a matplotlib Axes to draw on; None: a new figure's.
        Returns the Axes. matplotlib is imported only here.
        """
        import matplotlib.pyplot as plt

        names = [k for k in self.history if not k.startswith("val_")] if metrics is None else (
            [metrics] if isinstance(metrics, str) else list(metrics))
        unknown = [n for n in names if n not in self.history and f"val_{n}" not in self.history]
        if unknown:
            raise ValueError(f"History.plot(): no logs named {unknown}; logged: {list(self.history)}. "
                             f"Pass some of those names, or metrics=None for all of them.")
        if ax is None:
            _, ax = plt.subplots()
        epochs = [e + 1 for e in self.epoch]
        for name in names:
            color = None
            for key, style in ((name, "-"), (f"val_{name}", "--")):
                if key in self.history:
                    values = self.history[key]
                    xs = epochs if len(epochs) == len(values) else range(1, len(values) + 1)
                    (line,) = ax.plot(xs, values, style, color=color, label=key)
                    color = line.get_color()
        ax.set_xlabel("epoch")
        ax.set_ylabel(names[0] if len(names) == 1 else "value")
        ax.legend()
        return ax

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"
