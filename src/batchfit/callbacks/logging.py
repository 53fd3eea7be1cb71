"""Callbacks that write the logs out: CSVLogger (Keras's CSV format) and TensorBoard (event
files written with tensorboardX, no TensorFlow; optional JAX profiler traces)."""

from __future__ import annotations

import collections
import csv
import os
import time

import numpy as np

from batchfit.callbacks.base import Callback, every_nth

__all__ = ["CSVLogger", "TensorBoard"]

_NOT_LOGGED = ("batch_loss",)         # batchfit's raw loss of one batch: Keras has no such log


class CSVLogger(Callback):
    """Stream each epoch's logs to a CSV file, as Keras 3 writes it.

    Columns: "epoch" (0-based), then the first epoch's log names sorted (with "val_<name>"
    columns added when that epoch had no validation logs); missing values are "NA". Rows end
    in "\\r\\n" (Python's csv default, as Keras's). `append=True` continues an existing file
    without writing its header again.

    Args:
      filename: path of the CSV file, e.g. "run/log.csv".
      separator: the string between fields.
      append: True: append if the file exists (to continue training); False: overwrite it.
    """

    epoch_ends_in_order = False        # it only records: fit may hand it epoch e once epoch e + 1 runs

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep, self.filename, self.append = separator, os.fspath(filename), append
        self.writer = self.keys = self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as f:
                self.append_header = not bool(len(f.readline()))
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open(self.filename, "a" if self.append else "w")
        self.writer = self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs.keys())
            if self.keys and not any(key.startswith("val_") for key in self.keys):
                self.keys.extend([f"val_{k}" for k in self.keys])
        if not self.writer:
            dialect = type("CustomDialect", (csv.excel,), {"delimiter": self.sep})
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=dialect)
            if self.append_header:
                self.writer.writeheader()
        row = collections.OrderedDict({"epoch": epoch})
        row.update((key, _csv_value(logs.get(key, "NA"))) for key in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


def _csv_value(value):
    """Keras's handle_value: strings and scalars as they are, 1-D iterables as "[a, b]"."""
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value
    if isinstance(value, collections.abc.Iterable):
        return f'"[{", ".join(map(str, value))}]"'
    return value


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError('TensorBoard needs the tensorboardX package to write event files (no TensorFlow '
                          'needed). Install it with: pip install "batchfit[tensorboard]"') from None
    return SummaryWriter


def _profile_range(profile_batch) -> tuple[int, int]:
    """Keras's profile_batch: 0 (off), N, (start, stop) or "start,stop"; 1-based batches since fit began."""
    message = (f"profile_batch must be a non-negative integer or 2-tuple of positive integers. A pair of positive "
               f"integers signifies a range of batches to profile. Found: {profile_batch!r}")
    if isinstance(profile_batch, str):
        try:
            profile_batch = [int(part) for part in profile_batch.split(",")]
        except ValueError:
            raise ValueError(message) from None
    if isinstance(profile_batch, int) and not isinstance(profile_batch, bool):
        start = stop = profile_batch
    elif isinstance(profile_batch, (tuple, list)) and len(profile_batch) == 2:
        start, stop = profile_batch
    else:
        raise ValueError(message)
    if start < 0 or stop < start:
        raise ValueError(message)
    return start, stop


class TensorBoard(Callback):
    """Write TensorBoard event files as Keras 3 names them, with tensorboardX (no TensorFlow).

    Per epoch, `epoch_<name>` scalars (step: the epoch) into `log_dir/train`, and the
    validation logs, "val_" removed, into `log_dir/validation`; the learning rate as
    `epoch_learning_rate`. `update_freq="batch"` or N also writes `batch_<name>` running logs
    every N batches (step: the batches run since fit began, 1-based). `histogram_freq=N`
    writes a `<weight path>/histogram` of every weight each N epochs. `profile_batch=(start,
    stop)` records a JAX profiler trace (jax.profiler) of those batches into `log_dir/train`.
    `write_graph` is accepted and writes nothing: there is no TensorFlow graph to show.
    Needs tensorboardX: pip install "batchfit[tensorboard]".
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None):
        super().__init__()
        self._writer_class = _summary_writer_class()     # a missing tensorboardX fails here, before fit
        if write_images or embeddings_freq or embeddings_metadata:
            raise ValueError("TensorBoard: write_images, embeddings_freq and embeddings_metadata are not "
                             "supported by batchfit (they need TensorFlow). Leave them at their defaults.")
        if update_freq != "epoch" and update_freq != "batch" and not (
                isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq >= 1):
            raise ValueError(f"`update_freq` must be 'epoch', 'batch' or an integer >= 1; got {update_freq!r}.")
        if not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"`histogram_freq` must be an integer >= 0 (epochs); got {histogram_freq!r}.")
        self.log_dir, self.histogram_freq, self.write_graph = os.fspath(log_dir), histogram_freq, write_graph
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._start_batch, self._stop_batch = _profile_range(profile_batch)
        self._should_trace = not (self._start_batch == 0 and self._stop_batch == 0)
        self._writers, self._is_tracing = {}, False
        self._global_train_batch = self._last_recorded = 0
        self.epoch_ends_in_order = bool(histogram_freq or write_steps_per_second)   # else it only records
        if self.update_freq != "epoch" or self._should_trace:     # else fit copies no batch logs for it
            self.on_train_batch_begin, self.on_train_batch_end = self._batch_begin, self._batch_end

    def max_steps_per_execution(self, num_batches):
        """No limit: the compiled calls end where it writes or traces (control_batches); the rest stay fused."""
        return None

    def control_batches(self, epoch: int, first: int, count: int, seen: int):
        """Every N-th batch of the fit (update_freq=N) and the edges of the profiled range end a call, so fusing
        never moves what is written."""
        ends = set() if self.update_freq == "epoch" else set(every_nth(self.update_freq, first, count, seen))
        if self._should_trace:
            for fit_batch in (self._start_batch - 1, self._stop_batch):   # after the fit's batch number fit_batch
                batch = first + fit_batch - seen - 1
                if first <= batch < first + count:
                    ends.add(batch)
        return ends

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = self._writer_class(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_train_begin(self, logs=None):
        self._global_train_batch = self._last_recorded = 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.write_steps_per_second:          # Keras: updates per second, from optimizer.iterations
            self._epoch_start, self._epoch_iterations = time.perf_counter(), self.model.optimizer.iterations

    def _batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()
        if self._should_trace and not self._is_tracing and self._global_train_batch + 1 == self._start_batch:
            import jax
            jax.profiler.start_trace(os.path.join(self.log_dir, "train"))
            self._is_tracing = True
        self._first_of_call = batch

    def _batch_end(self, batch, logs=None):
        self._global_train_batch += batch - self._first_of_call + 1
        now = self._global_train_batch
        if self.update_freq != "epoch" and now // self.update_freq > self._last_recorded // self.update_freq:
            writer = self._writer("train")
            for name, value in (logs or {}).items():
                if name not in _NOT_LOGGED:
                    writer.add_scalar(f"batch_{name}", value, now)
            if self.write_steps_per_second:
                writer.add_scalar("batch_steps_per_second",
                                  (batch - self._first_of_call + 1) / max(time.perf_counter() - self._batch_start, 1e-9),
                                  now)
            self._last_recorded = now
        if self._is_tracing and now >= self._stop_batch:
            self._stop_trace()

    def _stop_trace(self):
        import jax
        jax.profiler.stop_trace()
        self._is_tracing = False

    def on_test_end(self, logs=None):
        if self.model is not None and self.model.optimizer is not None:
            iterations = self.model.optimizer.iterations
            writer = self._writer("validation")
            for name, value in (logs or {}).items():
                writer.add_scalar(f"evaluation_{name}_vs_iterations", value, iterations)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_") and k not in _NOT_LOGGED}
        if self.model is not None and self.model.optimizer is not None and "learning_rate" not in train:
            train["learning_rate"] = self.model.optimizer.learning_rate
        if self.write_steps_per_second:
            train["steps_per_second"] = ((self.model.optimizer.iterations - self._epoch_iterations)
                                         / max(time.perf_counter() - self._epoch_start, 1e-9))
        for writer_name, values in (("train", train),
                                    ("validation", {k[4:]: v for k, v in logs.items() if k.startswith("val_")})):
            if values:
                writer = self._writer(writer_name)
                for name, value in values.items():
                    writer.add_scalar(f"epoch_{name}", value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        for writer in self._writers.values():
            writer.flush()

    def _log_weights(self, epoch):
        """A histogram of every weight, tagged with its path as Keras does ("dense/kernel/histogram")."""
        writer = self._writer("train")
        for handle, value in zip(self.model.weights, self.model.get_weights()):
            writer.add_histogram(f"{handle.path.replace(':', '_')}/histogram", np.asarray(value), epoch)

    def on_train_end(self, logs=None):
        if self._is_tracing:
            self._stop_trace()
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
