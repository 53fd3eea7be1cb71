"""ModelCheckpoint: save the model (or its weights) every epoch or every `save_freq` batches, as Keras 3.

Files are written atomically and durably (batchfit/saving.py): a run killed during a save leaves the
previous file whole at the path. The writes run in the background (batchfit/_async_writer.py): at a save,
fit only takes a device-side copy of the arrays; one writer thread reads it back, serializes and writes.
A save falling due while the same file is still waiting to be written replaces that wait; fit's end
waits for every write, so the files it leaves are those of a synchronous run (the same arrays and
records; the save date and zip time stamps aside). A failed write raises in fit at the next save or at
fit's end.
"""

from __future__ import annotations

import datetime
import json
import os
import string
import warnings
from typing import NamedTuple

import jax
import numpy as np

from batchfit import saving
from batchfit._async_writer import WRITER, snapshot
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
    batches (counted across epochs, as Keras counts them). Files are written in the background; when
    fit returns they are all written (see the module docstring).
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
        fields = {f for _, f, _, _ in string.Formatter().parse(self.filepath) if f}
        self._reads_logs = save_best_only or bool(fields - {"epoch", "batch"})
        self._batches_seen_since_last_saving, self._last_batch_seen, self._current_epoch = 0, None, 0
        self._plan = False                       # _Plan of this fit's saves; False: not worked out yet

    # ----- when fit gives control ------------------------------------------------------------

    def max_steps_per_execution(self, num_batches: int) -> int | None:
        """No limit: the compiled calls end at the batches it saves after (control_batches); the rest stay fused."""
        return None

    def control_batches(self, epoch: int, first: int, count: int, seen: int):
        """With `save_freq=n`: every n-th batch of the fit, where it saves."""
        return () if self.save_freq == "epoch" else every_nth(self.save_freq, first, count, seen)

    def on_train_begin(self, logs=None):
        """Checks that need the model, before any training step: the direction of `monitor`, the file name."""
        WRITER.wait(self)                        # an earlier fit's writes, if it ended by an exception
        self._plan = False
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
        # The logs are read only when the file name or save_best_only needs them (fit may hand them over
        # unread: reading them waits for the device).
        logs = dict(logs or {}) if self._reads_logs else {}
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IsADirectoryError(f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used "
                                    f"is an existing directory: {filepath}")
        WRITER.check(self)                       # an earlier write failed: say so before going on
        plan = self._layout()
        if plan is None:                         # no training state to copy (or weights outside it)
            (self.model.save_weights if self.save_weights_only else self.model.save)(filepath, overwrite=True)
            self._say(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")
            return
        leaves = self.model._slot.leaves
        copied = snapshot([leaves[i] for i in plan.indices])
        done = f"\nEpoch {epoch + 1}: finished saving model to {filepath}" if self.verbose > 0 else None
        WRITER.submit(("file", os.path.abspath(filepath)), lambda: _write(filepath, plan, copied.arrays(), done),
                      owner=self, what=f"ModelCheckpoint's file {filepath}")

    def _layout(self) -> "_Plan | None":
        """What a save copies out of the training state, worked out at this fit's first save."""
        if self._plan is False:
            self._plan = _plan(self.model, self.save_weights_only)
        return self._plan

    def on_train_end(self, logs=None):
        """Wait for the files still being written (raising a failed write's error)."""
        WRITER.wait(self)

    def on_train_interrupt(self):
        WRITER.wait(self, raise_errors=False)     # KeyboardInterrupt is on its way: a failed write warns

    def on_train_exit(self):
        """After fit, normally or by an exception: the files pending are written before fit returns."""
        WRITER.wait(self, raise_errors=False)

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


# ----- saving from a copy of the training state, in the writer thread -------------------------------


class _Plan(NamedTuple):
    """Which arrays a save copies (`indices` into the slot's leaves: params, model_state, opt_state, step)
    and how the file is made of them: `weights` (get_weights order), `parts` (.keras: prefix -> positions,
    "optimizer/step" included), `keys` (the positions that hold PRNG keys), `entry` (.keras: its config)."""

    indices: tuple
    weights: tuple
    parts: dict
    keys: frozenset
    entry: dict | None


def _plan(model, weights_only: bool) -> _Plan | None:
    """The _Plan of `model`'s saves, or None when they cannot be made from its training state (then saves
    go through model.save / save_weights, synchronously)."""
    slot, graph = getattr(model, "_slot", None), getattr(model, "_graph", None)
    if slot is None or graph is None or not model.built:
        return None
    state = slot.state
    where = {id(v): i for i, v in enumerate(graph.variables)}
    weights = [where.get(id(v)) for v in model._weight_variables()]
    num_variables = len(jax.tree.leaves((state.params, state.model_state)))
    if None in weights or len(graph.variables) != num_variables:
        return None
    if weights_only:
        return _Plan(tuple(weights), tuple(range(len(weights))), {}, frozenset(), None)
    from batchfit import models
    models._check_savable(model)
    model._take_edits()
    entry = saving.to_json({**models.model_entry(model), "compile_config": models.compile_config(model)},
                           f"The config of '{model.name}'")
    num_params = len(jax.tree.leaves(state.params))
    parts = {"model_state": tuple(range(num_params, num_variables))}
    if entry["compile_config"] is not None and state.opt_state is not None:
        num_optimizer = len(jax.tree.leaves(state.opt_state))
        parts["optimizer"] = tuple(range(num_variables, num_variables + num_optimizer))
        parts["optimizer/step"] = (num_variables + num_optimizer,)
    leaves = slot.leaves
    keys = frozenset(i for i, leaf in enumerate(leaves) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
    return _Plan(tuple(range(len(leaves))), tuple(weights), parts, keys, entry)


def _pack(prefix: str, arrays: list, positions, keys) -> tuple[dict, list]:
    """saving.pack of host arrays, a PRNG key's data recorded as "prng_key" as model.save records it."""
    packed, manifest = saving.pack(prefix, [arrays[i] for i in positions])
    for entry, i in zip(manifest, positions):
        if i in keys:
            entry[0], entry[1] = "prng_key", list(entry[1][:-1])
    return packed, manifest


def _write(filepath: str, plan: _Plan, arrays: list, done: str | None) -> None:
    """Write what model.save_weights (plan.entry None) or model.save would write, from `arrays`."""
    weights, manifest = _pack("weights", arrays, plan.weights, plan.keys)
    if plan.entry is None:
        weights["manifest"] = np.array(json.dumps({"format": "batchfit-weights", "version": 1, "weights": manifest}))
        saving.write_file(filepath, lambda f: np.savez(f, **weights))
    else:
        manifests = {"weights": manifest}
        for prefix, positions in plan.parts.items():
            if prefix == "optimizer/step":
                weights[prefix] = np.asarray(arrays[positions[0]])
                continue
            more, manifests[prefix] = _pack(prefix, arrays, positions, plan.keys)
            weights.update(more)
        from batchfit import __version__
        metadata = {"format": saving.KERAS_FORMAT, "version": saving.KERAS_VERSION, "batchfit_version": __version__,
                    "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"), "arrays": manifests}
        saving.write_archive(filepath, plan.entry, metadata, weights)
    if done is not None:
        print(done)
