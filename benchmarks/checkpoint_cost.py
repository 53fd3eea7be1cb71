"""What a checkpoint every 100 batches costs (issue 23): the second article's workload, one epoch per fit
call, without callbacks and with ModelCheckpoint / BackupAndRestore saving every 100 batches.

    python benchmarks/checkpoint_cost.py [--quick] [--repeats N] [--epochs E] [--where] [--out DIR]

Model and data as benchmarks/workloads.py's seed2 (100,000 x 10, Dense(128, relu) -> Dense(1), MSE, Adam,
batch 32: 3,125 batches, so 31 saves per epoch). Repeats alternate between the systems; the figure is each
system's median epoch over the median without callbacks. Saves are written in the background and fit's end
waits for the last one, so with one epoch per fit call that last write is inside the figure; `--epochs E`
spreads it over E epochs (the epoch figure of a longer fit). The order of the systems rotates from one
repeat to the next, so that no system always runs after the same one (a fit can pay for the work its
predecessor left running). `--where` adds two variants of each saving row, to show where its time goes:
"write dropped" (the callback cuts, copies and captures at every save, but no file is written) and
"no fsync" (written, with os.fsync a no-op). Prints JSON lines; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import batchfit as bf  # noqa: E402
from workloads import WORKLOADS, batchfit_model, make_data  # noqa: E402


class _Cuts(bf.callbacks.Callback):
    """Only ends the compiled calls every 100 batches (what any every-100-batches callback costs before it works)."""

    def control_batches(self, epoch, first, count, seen):
        return bf.callbacks.every_nth(100, first, count, seen)


class _Hook(_Cuts):
    """Ends the calls every 100 batches and takes on_train_batch_end there (fit then reads the running logs)."""

    def max_steps_per_execution(self, num_batches):
        return None

    def on_train_batch_end(self, batch, logs=None):
        pass


def systems(folder: str) -> dict:
    return {
        "no callback": lambda: [],
        "calls cut every 100 batches, nothing saved": lambda: [_Cuts()],
        "cut + on_train_batch_end every 100 batches, nothing saved": lambda: [_Hook()],
        "ModelCheckpoint(save_freq=100, weights)": lambda: [bf.callbacks.ModelCheckpoint(
            os.path.join(folder, "w.weights.h5"), save_weights_only=True, save_freq=100)],
        "ModelCheckpoint(save_freq=100, .keras)": lambda: [bf.callbacks.ModelCheckpoint(
            os.path.join(folder, "m.keras"), save_freq=100)],
        "BackupAndRestore(save_freq=100)": lambda: [bf.callbacks.BackupAndRestore(
            os.path.join(folder, "backup"), save_freq=100)],
    }


_SAVING = ("ModelCheckpoint(save_freq=100, weights)", "ModelCheckpoint(save_freq=100, .keras)",
           "BackupAndRestore(save_freq=100)")


def with_variants(made: dict) -> dict:
    """`made` plus, for each saving row, the variants of `--where`: {name: (make callbacks, patch or None)}."""
    from batchfit._async_writer import WRITER
    rows = {name: (make, None) for name, make in made.items()}
    for name in _SAVING:
        rows[f"{name}, write dropped"] = (made[name], (WRITER, "submit", lambda *args, **kwargs: None))
        rows[f"{name}, no fsync"] = (made[name], (os, "fsync", lambda fd: None))
    return rows


def patched(patch):
    """A context within which `setattr(*patch)` holds (None: nothing changes)."""
    return contextlib.nullcontext() if patch is None else mock.patch.object(*patch)


CHECKPOINT_HEADING = "## A checkpoint every 100 batches (issue 23)"


def checkpoint_section(r: dict) -> str:
    ratios = r.get("round_ratio_median", {})
    rows = [f"| {name} | {r['median_s'][name] * 1e3:,.1f} ms | {r['over_no_callback'][name]:.3f} x | "
            f"{ratios.get(name, float('nan')):.3f} x |" for name in r["median_s"]]
    return "\n".join([CHECKPOINT_HEADING, "", f"`python benchmarks/checkpoint_cost.py`: {r['workload']}, one epoch "
                      f"per fit call ({r['samples']:,} samples, so 31 saves per epoch), {r['repeats']} alternating "
                      f"repeats of {r.get('epochs', 1)} epoch(s) per fit call, medians per epoch. Saves are written "
                      "in the background; fit's end waits for the last one. Issue 23's limit: 1.05 x.", "",
                      "| callbacks | epoch | / no callback | median of the rounds' ratios |", "|---|---:|---:|---:|", *rows])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 samples, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 5; 3 with --quick)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit call (default 1); figures per epoch")
    parser.add_argument("--where", action="store_true", help="add each saving row without its writes, and "
                                                              "without fsync")
    parser.add_argument("--out", default=HERE, help="write checkpoint_cost.json here (default: this folder, which "
                                                     "also refreshes RESULTS.md's section)")
    args = parser.parse_args(argv)
    workload = WORKLOADS["seed2"]
    x, y = make_data(workload, quick=args.quick)
    repeats = args.repeats or (3 if args.quick else 5)
    model = batchfit_model(workload)
    times = {}
    with tempfile.TemporaryDirectory() as folder:
        made = systems(folder)
        rows = with_variants(made) if args.where else {name: (make, None) for name, make in made.items()}
        names = list(rows)
        for name, (callbacks, patch) in rows.items():          # first calls: compile every chunk shape
            with patched(patch):
                model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0, callbacks=callbacks())
            times[name] = []
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                callbacks, patch = rows[name]
                with patched(patch):
                    start = time.perf_counter()
                    model.fit(x, y, batch_size=workload.batch_size, epochs=args.epochs, verbose=0,
                              callbacks=callbacks())
                    times[name].append((time.perf_counter() - start) / args.epochs)
            print(json.dumps({k: round(v[-1], 4) for k, v in times.items()}), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["no callback"]
    summary = {"workload": workload.title, "samples": len(x), "repeats": repeats, "epochs": args.epochs,
               "order": "rotated each repeat",
               "median_s": {k: round(v, 4) for k, v in medians.items()},
               "over_no_callback": {k: round(v / base, 3) for k, v in medians.items()},
               "round_ratio_median": {k: round(statistics.median(a / b for a, b in zip(v, times["no callback"])), 3)
                                      for k, v in times.items()}, "times": times}
    print(json.dumps({k: v for k, v in summary.items() if k != "times"}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "checkpoint_cost.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    if os.path.abspath(args.out) == HERE:
        import pathlib
        from report import refresh_section
        refresh_section(pathlib.Path(HERE) / "RESULTS.md", CHECKPOINT_HEADING, checkpoint_section(summary))
    return summary


if __name__ == "__main__":
    main()
