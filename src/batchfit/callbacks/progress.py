"""Progress display: verbose=1 a rich bar (running logs, steps/s), verbose=2 a line per epoch.

fit shows a bar per epoch; evaluate and predict (mode "test" / "predict") one bar for their pass.
"""

from __future__ import annotations

import math
import time

from batchfit.callbacks.base import Callback

__all__ = ["ProgbarLogger"]

_UPDATES_PER_EPOCH = 10


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k not in ("batch_loss", "outputs"))


class ProgbarLogger(Callback):
    """Keras's progress output. Asks for about ten updates per pass, not one per batch."""

    def __init__(self, verbose: int = 1, mode: str = "fit"):
        super().__init__()
        self.verbose, self.mode = verbose, mode
        self._progress = self._task = None
        self._start = 0.0
        if mode == "test":      # only evaluate's bar listens to the test hooks: fit's validation reads no logs for it
            self.on_test_begin, self.on_test_batch_end, self.on_test_end = (
                self._test_begin, self._test_batch_end, self._test_end)

    def max_steps_per_execution(self, num_batches):
        return max(1, math.ceil(num_batches / _UPDATES_PER_EPOCH)) if self.verbose == 1 else None

    def _begin(self, title: str):
        self._start = time.perf_counter()
        if self.verbose != 1:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
        self._progress.start()
        self._task = self._progress.add_task(title, total=self.params.get("steps"), info="")

    def _update(self, batch, logs):
        if self._progress is None:
            return
        rate = (batch + 1) / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, completed=batch + 1,
                              info=f"{format_logs(logs or {})} - {rate:,.0f} steps/s")

    def _end(self, title: str, logs):
        elapsed = time.perf_counter() - self._start
        steps = self.params.get("steps") or 1
        summary = f"{format_logs(logs or {})} - {steps / max(elapsed, 1e-9):,.0f} steps/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=steps, info=summary)
            self._progress.stop()
            self._progress = None
        elif self.verbose == 2:
            print(f"{title} - {elapsed:.2f}s - {summary}", flush=True)

    def _epochs(self, epoch):
        return f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}"

    def on_epoch_begin(self, epoch, logs=None):
        self._begin(self._epochs(epoch))

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._end(self._epochs(epoch), logs)

    def _test_begin(self, logs=None):
        self._begin("Evaluate")

    def _test_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def _test_end(self, logs=None):
        self._end("Evaluate", logs)

    def on_predict_begin(self, logs=None):
        self._begin("Predict")

    def on_predict_batch_end(self, batch, logs=None):
        self._update(batch, {})

    def on_predict_end(self, logs=None):
        self._end("Predict", {})
