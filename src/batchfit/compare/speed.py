"""The speed study: four ways to run the same training, timed in the same process.

Every system trains the same model from the same initial weights (`set_weights`) on the
same data and batch size, one optimizer update per batch in every case (no system
accumulates gradients). Each runs one warm-up epoch (trace + compile + run), then
`timing_epochs` timed epochs; the figure is the median epoch. fit is timed from
on_epoch_begin to on_epoch_end (its epoch losses are on the host by then); a loop epoch
ends when its last step has finished (`jax.block_until_ready`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

from batchfit.compare.presets import Config, build_model

__all__ = ["SYSTEMS", "System", "num_ticks", "speed_study"]


class System(NamedTuple):
    key: str
    label: str
    why: str


SYSTEMS = (
    System("fit_fused", 'fit, steps_per_execution="auto"',
           "the whole epoch is one compiled call (lax.scan over the batches, gathered on the "
           "device): one dispatch per epoch, losses copied to the host once per epoch"),
    System("fit_steps_per_execution_1", "fit, steps_per_execution=1",
           "the same compiled step, one dispatch per batch: Python and dispatch overhead every "
           "batch, but no host read, so the device never waits for Python"),
    System("train_on_batch_no_read", "train_on_batch loop, loss not read",
           "per batch: argument checks, a host-to-device copy of the NumPy slice and one "
           "dispatch; JAX's asynchronous dispatch lets Python run ahead of the device"),
    System("train_on_batch_read", "train_on_batch loop, float(loss) each batch",
           "as above plus a device-to-host sync per batch: Python waits for every step, "
           "so nothing overlaps (what the articles' loops do when they print or collect)"),
)


def num_ticks(config: Config) -> int:
    return len(SYSTEMS) * (1 + config.timing_epochs)


def _time_fit(config: Config, data, weights, steps_per_execution, tick) -> list[float]:
    from batchfit.callbacks import Callback

    class EpochTimer(Callback):        # only epoch hooks: fit keeps fusing the whole epoch
        def __init__(self):
            super().__init__()
            self.seconds, self._start = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            tick("speed: fit")

    x, y = data
    timer = EpochTimer()
    model = build_model(config, weights, steps_per_execution)
    model.fit(x, y, batch_size=config.batch_size, epochs=1 + config.timing_epochs,
              shuffle=config.shuffle, seed=config.seed, verbose=0, callbacks=[timer])
    return timer.seconds


def _time_loop(config: Config, data, weights, read: bool, tick) -> list[float]:
    import jax

    x, y = data
    model = build_model(config, weights)
    seconds = []
    for _ in range(1 + config.timing_epochs):
        start = time.perf_counter()
        for first in range(0, config.samples, config.batch_size):
            loss = model.train_on_batch(x[first:first + config.batch_size], y[first:first + config.batch_size])
            if read:
                float(loss)
        jax.block_until_ready(loss)
        seconds.append(time.perf_counter() - start)
        tick("speed: train_on_batch loop")
    return seconds


def _row(system: System, seconds: list[float], num_batches: int, dispatches: int) -> dict:
    median = statistics.median(seconds[1:])
    return {"key": system.key, "label": system.label, "why": system.why,
            "epoch_seconds": seconds, "median_epoch_s": median,
            "steps_per_s": num_batches / median, "us_per_step": 1e6 * median / num_batches,
            "first_epoch_s": seconds[0], "compile_s": max(seconds[0] - median, 0.0),
            "dispatches_per_epoch": dispatches}


def speed_study(config: Config, data, weights, tick: Callable[[str], None]) -> dict:
    """Time the four `SYSTEMS`; rows in SYSTEMS order, plus each one's speed relative to the first."""
    num_batches = len(config.batch_sizes)
    runs = [(_time_fit(config, data, weights, "auto", tick), 1),
            (_time_fit(config, data, weights, 1, tick), num_batches),
            (_time_loop(config, data, weights, False, tick), num_batches),
            (_time_loop(config, data, weights, True, tick), num_batches)]
    rows = [_row(system, seconds, num_batches, dispatches)
            for system, (seconds, dispatches) in zip(SYSTEMS, runs)]
    for row in rows:
        row["speedup_of_fused"] = row["median_epoch_s"] / rows[0]["median_epoch_s"]
    return {"timing_epochs": config.timing_epochs, "num_batches": num_batches,
            "shuffle_in_fit": config.shuffle, "rows": rows}
