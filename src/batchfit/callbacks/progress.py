"""Progress display: verbose=1 a rich bar per epoch (running loss, steps/s), verbose=2 a line per epoch."""

from __future__ import annotations

import math
import time

from batchfit.callbacks.base import Callback

__all__ = ["ProgbarLogger"]

_UPDATES_PER_EPOCH = 10


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k != "batch_loss")


class ProgbarLogger(Callback):
    """Keras's progress output. Asks for about ten updates per epoch, not one per batch."""

    def __init__(self, verbose: int = 1):
        super().__init__()
        self.verbose = verbose
        self._progress = None
        self._task = None
        self._start = 0.0

    def max_steps_per_execution(self, num_batches):
        return max(1, math.ceil(num_batches / _UPDATES_PER_EPOCH)) if self.verbose == 1 else None

    def _epochs(self, epoch):
        return f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}"

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.verbose != 1:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
        self._progress.start()
        self._task = self._progress.add_task(self._epochs(epoch), total=self.params.get("steps"), info="")

    def on_train_batch_end(self, batch, logs=None):
        if self._progress is None:
            return
        rate = (batch + 1) / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, completed=batch + 1,
                              info=f"{format_logs(logs or {})} - {rate:,.0f} steps/s")

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        steps = self.params.get("steps") or 1
        summary = f"{format_logs(logs or {})} - {steps / elapsed:,.0f} steps/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=steps, info=summary)
            self._progress.stop()
            self._progress = None
        elif self.verbose == 2:
            print(f"{self._epochs(epoch)} - {elapsed:.2f}s - {summary}", flush=True)
