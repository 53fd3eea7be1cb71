"""In-process A/B of each special path batchfit keeps: the figure a user sees with the path and without it.

A special path stays only if it buys at least 5% on such a figure (issue 20). Each path is
switched off by replacing the one name it lives in, the figure is timed with and without it in
alternating blocks (per-round ratios shrug off drifts in machine load), and the result goes to
kept_paths.json, which report.py prints in RESULTS.md.

    python benchmarks/kept_paths.py            # about 30 seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from unittest import mock


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import WORKLOADS, batchfit_model, make_data  # noqa: E402

import batchfit._shell as shell  # noqa: E402
import batchfit.data.arrays as arrays  # noqa: E402
import batchfit.engine.state as engine_state  # noqa: E402
import batchfit._target_rules as target_rules  # noqa: E402
from batchfit.callbacks import History  # noqa: E402


PATHS = {
    "epoch e's logs read once epoch e + 1 is dispatched (History.epoch_ends_in_order = False)":
        lambda: mock.patch.object(History, "epoch_ends_in_order", True),
    "finite check by a BLAS sum of squares first (data/arrays.py: _squares_finite)":
        lambda: mock.patch.object(arrays, "_squares_finite", lambda a: False),
    "*_on_batch: a layout's shape checks once, its values every batch (_shell.py: checks_layouts_once)":
        lambda: mock.patch.object(shell.Shell, "checks_layouts_once", False),
    "a batch's targets ranged through a Python list (_target_rules.py: _LIST_RANGE_MAX)":
        lambda: mock.patch.object(target_rules, "_LIST_RANGE_MAX", 0),
    "results read by polling the device value before blocking (engine/state.py: to_host)":
        lambda: mock.patch.object(engine_state, "WAIT_BEFORE_BLOCKING", 0.0),
}


def _figures(workload: str, epochs: int, steps: int):
    """name -> (work, units per call): the user-visible figures each path may move."""
    w = WORKLOADS[workload]
    x, y = make_data(w)
    model = batchfit_model(w)
    batches = [(x[i:i + w.batch_size], y[i:i + w.batch_size]) for i in range(0, steps * w.batch_size, w.batch_size)]

    def fit_epochs():
        model.fit(x, y, batch_size=w.batch_size, epochs=epochs, verbose=0, shuffle=False)

    def fit_call():
        model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0, shuffle=False)

    def train_on_batch_read():
        for xb, yb in batches:
            float(model.train_on_batch(xb, yb))
    return {f"{workload}: fit(epochs={epochs}), per epoch": (fit_epochs, epochs),
            f"{workload}: fit(x, y, epochs=1), per call": (fit_call, 1),
            f"{workload}: train_on_batch, loss read, per step": (train_on_batch_read, steps)}


def measure(path, work, units, rounds: int, calls: int) -> dict:
    """Median time per unit with and without `path`, and the median per-round ratio without / with."""
    for _ in range(3):
        work()
        with path():
            work()
    with_path, without = [], []
    for _ in range(rounds):
        for switched_off, out in ((False, with_path), (True, without)):
            with path() if switched_off else contextlib.nullcontext():
                start = time.perf_counter()
                for _ in range(calls):
                    work()
                out.append((time.perf_counter() - start) / calls / units)
    ratios = [b / a for a, b in zip(with_path, without)]
    return {"with_us": 1e6 * statistics.median(with_path), "without_us": 1e6 * statistics.median(without),
            "without_over_with": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=45)
    parser.add_argument("--workloads", default="seed1,seed2")
    parser.add_argument("--paths", default="", help="only the paths whose name contains this text")
    parser.add_argument("--out", default=os.path.join(HERE, "kept_paths.json"))
    args = parser.parse_args()
    results = []
    for workload in args.workloads.split(","):
        figures = _figures(workload, epochs=20 if workload == "seed1" else 2, steps=31)
        for path_name, path in PATHS.items():
            if args.paths not in path_name:
                continue
            for figure, (work, units) in figures.items():
                calls = 10 if "per call" in figure and workload == "seed1" else 1
                row = {"path": path_name, "figure": figure, **measure(path, work, units, args.rounds, calls)}
                results.append(row)
                print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"command": " ".join(["python", *sys.argv]), "rounds": args.rounds, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
