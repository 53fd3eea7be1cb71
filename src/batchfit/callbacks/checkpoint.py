"""ModelCheckpoint: save the model (or its weights) every epoch or every `save_freq` batches, as Keras 3.

Files are written atomically and durably by model.save / save_weights (batchfit/saving.py): a run
killed during a save leaves the previous file whole at the path.
"""

from __future__ import annotations

import os
import string
import warnings

import numpy as np

from batchfit.callbacks.base import Callback, every_nth

__all__ = ["ModelCheckpoint"]

# Keras's metrics whose `_direction` is "up" (mode="auto" maximises them); losses and errors go down.
_UP = {"accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
       "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "auc", "precision", "recall",
       "precision_at_recall", "recall_at_precision", "sensitivity_at_specificity", "specificity_at_sensitivity",
       "f1_score", "fbeta_score", "r2_score", "iou", "mean_iou", "binary_iou", "one_hot_iou", "one_hot_mean_iou",
       "cosine_similarity", "pearson_correlation", "concordance_correlation"}
_DOWN_ENDINGS = ("loss", "error", "crossentropy", "hinge", "divergence", "poisson", "logcosh", "mse", "mae",
                 "mape", "msle")


def monitor_direction(monitor: str, mode: str, owner: str) -> int:
    """+1 to maximise `monitor`, -1 to minimise it (Keras's MonitorCallback rules for `mode`)."""
    if mode == "max":
        return 1
    if mode == "min":
        return -1
    name = monitor.removeprefix("val_")
    if name in _UP:
        return 1
    if name == "loss" or name.endswith(_DOWN_ENDINGS):
        return -1
    raise ValueError(f"{owner} callback received monitor={monitor}, but batchfit isn't able to automatically "
                     f"determine whether that metric should be maximized or minimized. Pass `mode='max'` in order "
                     f"to monitor based on the highest metric value, or pass `mode='min'` in order to use the "
                     f"lowest value.")


class ModelCheckpoint(Callback):
    """Save the model or its weights at the end of every epoch or every `save_freq` batches (Keras 3).

    `filepath` may hold `{epoch:02d}` (1-based, as Keras), `{batch}` (1-based, with an integer
    `save_freq`) and any logs key (`{val_loss:.2f}`); it ends in `.keras` (model.save) or, with
    `save_weights_only=True`, in `.weights.h5` (model.save_weights). With `save_best_only=True`, a
    save happens only when `monitor` improves on the best so far (or on `initial_value_threshold`).
    With an integer `save_freq`, fit cuts its fused calls so that control returns at exactly those
    batches (counted across epochs, as Keras counts them).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"ModelCheckpoint mode '{mode}' is unknown, fallback to auto mode.", stacklevel=2)
            mode = "auto"
        self.mode, self.best, self.monitor_op = mode, initial_value_threshold, None
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer))
                                     or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}. Expected save_freq are 'epoch' or integer "
                             f"values >= 1 (a number of batches).")
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        _check_suffix(self.filepath, save_weights_only)
        self._batches_seen_since_last_saving, self._last_batch_seen, self._current_epoch = 0, None, 0

    # ----- when fit gives control ------------------------------------------------------------

    def max_steps_per_execution(self, num_batches: int) -> int | None:
        """No limit: the compiled calls end at the batches it saves after (control_batches); the rest stay fused."""
        return None

    def control_batches(self, epoch: int, first: int, count: int, seen: int):
        """With `save_freq=n`: every n-th batch of the fit, where it saves."""
        return () if self.save_freq == "epoch" else every_nth(self.save_freq, first, count, seen)

    def on_train_begin(self, logs=None):
        """Checks that need the model, before any training step: the direction of `monitor`, the file name."""
        if self.save_best_only:
            self.monitor_op = monitor_direction(self.monitor, self.mode, "ModelCheckpoint")
        names = list(getattr(self.model, "metrics_names", None) or [])
        known = {"epoch", "batch", "batch_loss", "learning_rate", "lr", *names}
        fields = [f for _, f, _, _ in string.Formatter().parse(self.filepath) if f]
        unknown = [f for f in fields if f not in known and f.removeprefix("val_") not in known]
        if names and unknown:
            raise ValueError(f"ModelCheckpoint's filepath '{self.filepath}' names {unknown}, which fit's logs will "
                             f"not hold; the logs hold {names} (and their 'val_' forms with validation data), and "
                             f"'epoch', 'batch'. Fix the field names.")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch: int) -> bool:
        """Keras's count: batches since the last save, across epochs (an index that did not grow starts an epoch)."""
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            added = batch + 1
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    # ----- what to save, and where -----------------------------------------------------------

    def _should_save_model(self, epoch: int, logs: dict, filepath: str) -> bool:
        if not self.save_best_only:
            self._say(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            return True
        if np.ndim(current) > 0:
            warnings.warn(f"Can save best model only when `monitor` is a scalar value. Received: {current}. "
                          f"Falling back to `save_best_only=False`.", stacklevel=3)
            return True
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self.monitor_op is None:
            self.monitor_op = monitor_direction(self.monitor, self.mode, "ModelCheckpoint")
        if self.best is None or self.monitor_op * (current - self.best) > 0:
            self._say(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, saving model "
                      f"to {filepath}")
            self.best = current
            return True
        self._say(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save_model(self, epoch: int, batch: int | None, logs) -> None:
        logs = dict(logs or {})
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IsADirectoryError(f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used "
                                    f"is an existing directory: {filepath}")
        folder = os.path.dirname(filepath)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)
        self._say(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")

    def _get_file_path(self, epoch: int, batch: int | None, logs: dict) -> str:
        """`filepath` with `epoch` (1-based), `batch` (1-based, batch saves) and the logs filled in."""
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {e}. The logs '
                           f'hold {sorted(logs)}.') from None

    def _say(self, message: str) -> None:
        if self.verbose > 0:
            print(message)


def _check_suffix(filepath: str, save_weights_only: bool) -> None:
    if save_weights_only and not filepath.endswith(".weights.h5"):
        raise ValueError(f"When using `save_weights_only=True` in `ModelCheckpoint`, the filepath provided must "
                         f"end in `.weights.h5` (Keras weights format). Received: filepath={filepath}")
    if not save_weights_only and not filepath.endswith(".keras"):
        hint = (" batchfit does not write Keras's legacy HDF5 format." if filepath.endswith(".h5") else "")
        raise ValueError(f"The filepath provided must end in `.keras` (Keras model format).{hint} Received: "
                         f"filepath={filepath}")
