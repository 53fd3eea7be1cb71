"""Progress output in Keras 3's format: verbose=1 a progress bar, verbose=2 a line per epoch.

Every pass ends with one plain line that holds everything, as Keras prints it when stdout
is not a terminal: ``32/32 - 1s - 31ms/step - 1,032 steps/s - loss: 0.2000 - mae: 0.1000``.
verbose=1 prints ``Epoch 1/3`` when an epoch starts and that line when it ends; in a terminal
or a notebook a rich bar runs in between and is cleared before the line is printed (so the
terminal's width never cuts it). verbose=2 prints one line per epoch, ``Epoch 1/3 - 32/32 - ...``,
and ``Evaluate - ...`` / ``Predict - ...`` for evaluate and predict.
"""

from __future__ import annotations

import functools
import math
import sys
import time

from batchfit.callbacks.base import Callback

__all__ = ["ProgbarLogger"]

_UPDATES_PER_EPOCH = 10
_NOT_SHOWN = ("batch_loss", "outputs")
_BATCH_END = {"fit": "on_train_batch_end", "test": "on_test_batch_end", "predict": "on_predict_batch_end"}


def interactive() -> bool:
    """Whether stdout redraws a bar in place, decided as Keras decides: a terminal or a notebook kernel.

    (Keras also says yes whenever the `posix` module is loaded, i.e. on every Linux and macOS
    run, which fills logs and pipes with backspaces; batchfit leaves that out.)
    """
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:            # a closed stream
        return False
    return "ipykernel" in sys.modules     # Jupyter and Colab, where rich draws the bar as a widget


def format_value(value) -> str:
    """A log value as Keras's progress bar prints it: 4 decimals, or 4 significant digits when tiny.

    >>> format_value(0.2), format_value(0.0001234), format_value("n/a")
    ('0.2000', '1.2340e-04', 'n/a')
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4f}" if abs(number) > 1e-3 else f"{number:.4e}"


def format_logs(logs: dict) -> str:
    """`loss: 0.2000 - mae: 0.1000`: every log but the raw batch loss and predict's outputs."""
    return " - ".join(f"{k}: {format_value(v)}" for k, v in logs.items() if k not in _NOT_SHOWN)


def format_time_per_step(seconds: float) -> str:
    """Keras's per-step time: whole seconds, milliseconds or microseconds.

    >>> format_time_per_step(2.4), format_time_per_step(0.031), format_time_per_step(0.0000452)
    ('2s/step', '31ms/step', '45us/step')
    """
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def progress_line(steps: int, total: int | None, elapsed: float, logs: dict) -> str:
    """The final line of a pass, as Keras prints it without a terminal, plus the step rate.

    >>> progress_line(32, 32, 0.992, {"loss": 0.2, "mae": 0.1})
    '32/32 - 1s - 31ms/step - 32 steps/s - loss: 0.2000 - mae: 0.1000'
    """
    total = steps if total is None else total
    count = f"{steps:>{len(str(total))}}/{total}"
    per_step = format_time_per_step(elapsed / steps if steps else 0.0)
    rate = steps / max(elapsed, 1e-9)
    logs = format_logs(logs or {})
    return f"{count} - {elapsed:.0f}s - {per_step} - {rate:,.0f} steps/s" + (f" - {logs}" if logs else "")


@functools.cache
def _live_bar_class():
    """A rich Progress that draws `12/30 ━━━━━━━━━━ 0:00:01` and, below it, the running logs,
    which wrap at the terminal's width instead of squeezing the bar or being cut."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.text import Text

    class LiveBar(Progress):
        def __init__(self):
            super().__init__(MofNCompleteColumn(), BarColumn(bar_width=20), TimeElapsedColumn(),
                             transient=True)

        def get_renderables(self):
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                yield Text(task.fields.get("info", ""))
    return LiveBar


class ProgbarLogger(Callback):
    """Keras's progress output for one fit, evaluate or predict call (`mode` "fit", "test", "predict").

    Reads `params["epochs"]` and `params["steps"]` (None when the data does not say how many
    batches it has). It listens to batch ends only when it draws a bar, which it asks to update
    about ten times per pass, or when it must count the batches itself.
    """

    def __init__(self, verbose: int = 1, mode: str = "fit"):
        super().__init__()
        if mode not in _BATCH_END:
            raise ValueError(f"`mode` must be one of {list(_BATCH_END)}; got {mode!r}.")
        self.verbose, self.mode = verbose, mode
        self.live = verbose == 1 and interactive()      # a bar that redraws, or only the final lines
        self._progress = self._task = None
        self._start = 0.0
        self._seen = 0
        if mode == "test":      # only evaluate's output listens to the test hooks: fit's validation is silent
            self.on_test_begin, self.on_test_end = self._test_begin, self._test_end

    def set_params(self, params: dict):
        super().set_params(params)
        hook = _BATCH_END[self.mode]
        if self.live or params.get("steps") is None:
            setattr(self, hook, self._batch_end)
        else:                   # nothing to draw or count: fit copies no logs for this callback
            self.__dict__.pop(hook, None)

    def max_steps_per_execution(self, num_batches):
        return max(1, math.ceil(num_batches / _UPDATES_PER_EPOCH)) if self.live else None

    def _begin(self, header: str | None = None):
        self._start, self._seen = time.perf_counter(), 0
        if self.verbose == 1 and header:
            print(header, flush=True)
        if not self.live:
            return
        self._progress = _live_bar_class()()      # transient: cleared before the final line is printed
        self._progress.start()
        self._task = self._progress.add_task("", total=self.params.get("steps"), info="")

    def _batch_end(self, batch, logs=None):
        self._seen = batch + 1
        if self._progress is None:
            return
        rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
        logs = format_logs(logs or {})
        self._progress.update(self._task, completed=self._seen,
                              info=f"{rate:,.0f} steps/s" + (f" - {logs}" if logs else ""))

    def _end(self, title: str, logs):
        elapsed = time.perf_counter() - self._start
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        steps = self.params.get("steps") or self._seen    # Keras: the target, else the batches seen
        line = progress_line(steps, steps, elapsed, logs)
        print(f"{title} - {line}" if self.verbose == 2 else line, flush=True)

    def _epochs(self, epoch):
        return f"Epoch {epoch + 1}/{self.params.get('epochs') or '?'}"

    def on_epoch_begin(self, epoch, logs=None):
        self._begin(self._epochs(epoch))

    def on_epoch_end(self, epoch, logs=None):
        self._end(self._epochs(epoch), logs)

    def _test_begin(self, logs=None):
        self._begin()

    def _test_end(self, logs=None):
        self._end("Evaluate", logs)

    def on_predict_begin(self, logs=None):
        self._begin()

    def on_predict_end(self, logs=None):
        self._end("Predict", {})
