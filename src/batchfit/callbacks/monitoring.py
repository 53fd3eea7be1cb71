"""Callbacks that watch the logs and act: EarlyStopping, TerminateOnNaN, ReduceLROnPlateau,
LearningRateScheduler, with Keras 3's arguments, defaults and rules.

The learning rate lives in the optimizer state, so `model.optimizer.learning_rate = x`
between epochs changes the next update without recompiling anything.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from batchfit.callbacks.base import Callback

__all__ = ["EarlyStopping", "TerminateOnNaN", "ReduceLROnPlateau", "LearningRateScheduler"]

# The metric names Keras 3 knows a direction for (each metric's `_direction`), plus compile()'s
# aliases; mode="auto" reads them after stripping "val_".
_HIGHER_IS_BETTER = frozenset("""accuracy acc auc binary_accuracy binary_io_u categorical_accuracy
    concordance_correlation cosine_similarity f1_score fbeta_score pearson_correlation precision
    precision_at_recall r2_score recall recall_at_precision sensitivity_at_specificity
    sparse_categorical_accuracy sparse_top_k_categorical_accuracy specificity_at_sensitivity
    top_k_categorical_accuracy""".split())
_LOWER_IS_BETTER = frozenset("""loss binary_crossentropy categorical_crossentropy categorical_hinge
    hinge kl_divergence kld logcosh mean_absolute_error mae mean_absolute_percentage_error mape
    mean_squared_error mse mean_squared_logarithmic_error msle poisson root_mean_squared_error rmse
    sparse_categorical_crossentropy squared_hinge""".split())


class _MonitorCallback(Callback):
    """Keras's MonitorCallback: which way `monitor` improves, and by how much it must."""

    def __init__(self, monitor="val_loss", mode="auto", min_delta=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto mode.", stacklevel=3)
            mode = "auto"
        self.monitor, self.mode = monitor, mode
        self.min_delta = abs(min_delta)
        self.monitor_op = None
        self.best = None

    def _set_monitor_op(self):
        """np.less or np.greater, from `mode` or (auto) the metric's name; min_delta signed as Keras."""
        name = self.monitor.removeprefix("val_")
        if self.mode == "min" or (self.mode == "auto" and name in _LOWER_IS_BETTER):
            self.monitor_op = np.less
        elif self.mode == "max" or (self.mode == "auto" and name in _HIGHER_IS_BETTER):
            self.monitor_op = np.greater
        else:
            raise ValueError(
                f"{type(self).__name__} callback received monitor={self.monitor}, but batchfit isn't able to "
                f"automatically determine whether that metric should be maximized or minimized. Pass "
                f"`mode='max'` in order to monitor based on the highest metric value, or pass `mode='min'` "
                f"in order to use the lowest value.")
        self.min_delta = -abs(self.min_delta) if self.monitor_op is np.less else abs(self.min_delta)

    def _is_improvement(self, monitor_value, reference_value) -> bool:
        if reference_value is None:
            return True
        return bool(self.monitor_op(monitor_value - self.min_delta, reference_value))

    def _monitored(self, logs, what: str):
        """logs[monitor], or None with Keras's warning listing the logs there are."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{what} conditioned on metric `{self.monitor}` which is not available. "
                          f"Available metrics are: {','.join(list((logs or {}).keys()))}", stacklevel=3)
        return value


class EarlyStopping(_MonitorCallback):
    """Stop training when `monitor` has not improved for `patience` epochs (Keras 3's rules).

    An improvement is a change of more than `min_delta` in the direction of `mode` ("auto":
    from the name, e.g. "val_loss" down, "val_accuracy" up). With `baseline`, the wait only
    resets once the value also beats the baseline. Epochs before `start_from_epoch` are not
    looked at. `restore_best_weights=True` keeps a host copy of the weights of the best epoch
    (read only when a new best arrives) and puts them back when training ends, stopped early
    or not, as Keras 3 does.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience, self.verbose, self.baseline = patience, verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self._set_monitor_op()        # a monitor of unknown direction fails here, before any step
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best = self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "Early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        # Keras also copies the weights at the first monitored epoch before comparing; that epoch
        # is always a new best (best starts as None), so the copy below is the same one.
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class TerminateOnNaN(Callback):
    """Stop training right after the first batch whose loss is NaN or infinite (Keras 3).

    It asks fit for control after every batch (one step per compiled call under
    steps_per_execution="auto"), so training stops after exactly that batch, as in Keras.
    With a fixed steps_per_execution=K it looks once per call, as Keras does.
    `raise_error=True` raises a RuntimeError instead, skipping the other callbacks' on_train_end.
    """

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")      # the epoch's running mean: not finite from the bad batch on
        if loss is None or math.isfinite(loss):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. "
                               f"Terminating training immediately.")
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


def _check_settable(model, who: str):
    """Fail before any step when the learning rate cannot be set (it follows a schedule)."""
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError(f"{who} needs a compiled model: call model.compile(optimizer=..., loss=...) first.")
    try:
        optimizer.learning_rate = optimizer.learning_rate
    except (TypeError, ValueError) as error:     # a schedule's rate, or a raw optax transformation's
        raise type(error)(f"{who} sets model.optimizer.learning_rate between epochs, but: {error}") from None


class ReduceLROnPlateau(_MonitorCallback):
    """Multiply the learning rate by `factor` once `monitor` has not improved for `patience` epochs.

    Keras 3's rules: improvements beyond `min_delta` reset the wait; after a reduction the wait
    pauses for `cooldown` epochs; the rate never goes below `min_lr`. Logs get "learning_rate"
    (the rate of the epoch that ended). The rate is set in the optimizer state: no recompiling.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}. "
                             f"Pass a factor in (0, 1), e.g. 0.1 or 0.5.")
        self.factor, self.min_lr, self.patience = factor, min_lr, patience
        self.verbose, self.cooldown = verbose, cooldown
        self.cooldown_counter = self.wait = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._set_monitor_op()
        _check_settable(self.model, "ReduceLROnPlateau")
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = self.model.optimizer.learning_rate
        current = self._monitored(logs, "Learning rate reduction")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, epoch) -> bool:
        optimizer = self.model.optimizer
        old_lr = optimizer.learning_rate
        if not old_lr > np.float32(self.min_lr):
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        optimizer.learning_rate = new_lr
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
        return True


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch's start to `schedule(epoch, lr)` (or `schedule(epoch)`).

    `epoch` is 0-based and `lr` the current rate; the schedule returns a float. Logs get
    "learning_rate" at each epoch's end, as Keras 3 adds it. No recompiling: the rate is set in
    the optimizer state.

    >>> scheduler = LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr * 0.9)
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"`schedule` must be a function schedule(epoch, lr) -> float (or schedule(epoch)); "
                            f"got {type(schedule).__name__} {schedule!r}.")
        self.schedule, self.verbose = schedule, verbose

    def on_train_begin(self, logs=None):
        _check_settable(self.model, "LearningRateScheduler")

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        try:
            learning_rate = self.schedule(epoch, optimizer.learning_rate)
        except TypeError:      # schedule(epoch), Keras's older form
            learning_rate = self.schedule(epoch)
        if not isinstance(learning_rate, (float, np.float32, np.float64)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {learning_rate!r} "
                             f"({type(learning_rate).__name__}) at epoch {epoch}. Return e.g. float(value).")
        optimizer.learning_rate = learning_rate
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {learning_rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.learning_rate
