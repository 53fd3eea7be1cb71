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
"no fsync" (written, with os.fsync a no-op).

In the same rounds run three hand-written JAX floors (baselines.py's step, no batchfit), to show what cutting
every 100 batches costs before any library: the epoch in one jit(lax.scan) call, cut into calls of 100 steps,
and in one call that hands out the state after every 100 steps. Their figure is each one's median epoch over
the one-call floor's. Prints JSON lines; asserts nothing about time.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import baselines  # noqa: E402
import batchfit as bf  # noqa: E402
from workloads import WORKLOADS, batchfit_model, make_data  # noqa: E402

EVERY = 100                    # batches between two cuts or saves
FLOOR_ONE_CALL = "floor: one jit(lax.scan) call per epoch"
FLOOR_CUT = "floor: cut into calls of 100 steps"
FLOOR_SNAPSHOTS = "floor: one call, the state after every 100 steps as extra outputs"


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


def fit_rows(model, x, y, batch_size: int, rows: dict) -> dict:
    """name -> run(epochs): one fit call of `epochs` epochs with the row's callbacks (and patch) in place."""
    def runner(callbacks, patch):
        def run(epochs):
            with patched(patch):
                model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks())
        return run
    return {name: runner(*row) for name, row in rows.items()}


# ----- the hand-written JAX floors: baselines.py's step and scans, no batchfit ----------------------------


def _one_call_epoch(workload):
    """The reference: run.py's unshuffled floor epoch, one jit(lax.scan) call, its losses read at the end."""
    run = baselines.epoch_fn(workload, "none")

    def epoch(state, x, y):
        state, losses = run(state, x, y)
        return state, np.asarray(losses)
    return epoch


def _cut_epoch(step, batch_size: int, n: int):
    """An epoch as calls of EVERY steps (each slicing its rows from the device arrays) and one for the tail.

    What any loop that ends its compiled call every 100 batches pays, without a library: the calls are
    dispatched back to back and the losses read once at the end, as fit reads them.
    """
    span = EVERY * batch_size
    num_blocks, cut = n // span, n // span * span
    block = jax.jit(lambda state, x, y, start: baselines._scan_rows(
        step, state, *(lax.dynamic_slice_in_dim(a, start, span) for a in (x, y)), batch_size), donate_argnums=0)
    tail = jax.jit(lambda state, x, y: baselines._scan_rows(step, state, x[cut:], y[cut:], batch_size),
                   donate_argnums=0)

    def epoch(state, x, y):
        parts = []
        for b in range(num_blocks):
            state, losses = block(state, x, y, np.int32(b * span))
            parts.append(losses)
        if cut < n:
            state, losses = tail(state, x, y)
            parts.append(losses)
        return state, np.concatenate(jax.device_get(parts))
    return epoch


def _snapshot_epoch(step, batch_size: int, n: int):
    """An epoch in one call that also outputs the state after every EVERY steps, copied to the host at the end.

    A nested scan: the outer one over blocks of EVERY batches, each block's output its final carry (params,
    Adam moments, count), then the tail as its own scan in the same jit: the checkpoints' data without a cut.
    """
    span = EVERY * batch_size
    num_blocks, cut = n // span, n // span * span

    def run(state, x, y):
        xs, ys = (a[:cut].reshape((num_blocks, EVERY, batch_size) + a.shape[1:]) for a in (x, y))

        def block(carry, data):
            carry, losses = lax.scan(step, carry, data)
            return carry, (carry, losses)
        state, (snapshots, losses) = lax.scan(block, state, (xs, ys))
        losses = losses.reshape(-1)
        if cut < n:
            state, tail = baselines._scan_rows(step, state, x[cut:], y[cut:], batch_size)
            losses = jnp.concatenate([losses, tail])
        return state, snapshots, losses
    jitted = jax.jit(run, donate_argnums=0)

    def epoch(state, x, y):
        state, snapshots, losses = jitted(state, x, y)
        jax.device_get(snapshots)
        return state, np.asarray(losses)
    return epoch


def floor_rows(workload, x, y, weights) -> dict:
    """name -> run(epochs) for the three floors, each from `weights` with its own state, on device copies of x, y.

    The data are on the device beforehand and go in order (no shuffle); fit's rows shuffle every epoch (its
    default), so the floors are compared with the one-call floor, not with fit.
    """
    step, n = baselines.make_step(workload), len(x)
    epochs = {FLOOR_ONE_CALL: _one_call_epoch(workload),
              FLOOR_CUT: _cut_epoch(step, workload.batch_size, n),
              FLOOR_SNAPSHOTS: _snapshot_epoch(step, workload.batch_size, n)}
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def runner(epoch):
        holder = {"state": baselines.init_state(weights)}

        def run(num_epochs):
            for _ in range(num_epochs):
                holder["state"], _ = epoch(holder["state"], xd, yd)
        return run
    return {name: runner(epoch) for name, epoch in epochs.items()}


CHECKPOINT_HEADING = "## A checkpoint every 100 batches (issue 23)"


def _table(r: dict, over: str, rounds: str) -> list:
    return [f"| {name} | {r['median_s'][name] * 1e3:,.1f} ms | {ratio:.3f} x | "
            f"{r.get(rounds, {}).get(name, float('nan')):.3f} x |" for name, ratio in r[over].items()]


def checkpoint_section(r: dict) -> str:
    """The RESULTS.md section of a summary: fit's rows over no callback, then the floors over the one-call floor."""
    saves = r["samples"] // 32 // EVERY            # seed2's batches of 32
    lines = [CHECKPOINT_HEADING, "", f"`python benchmarks/checkpoint_cost.py`: {r['workload']}, one epoch "
             f"per fit call ({r['samples']:,} samples, so {saves} saves per epoch), {r['repeats']} alternating "
             f"repeats of {r.get('epochs', 1)} epoch(s) per fit call, medians per epoch. Saves are written "
             "in the background; fit's end waits for the last one. Issue 23's limit: 1.05 x.", "",
             "| callbacks | epoch | / no callback | median of the rounds' ratios |", "|---|---:|---:|---:|",
             *_table(r, "over_no_callback", "round_ratio_median")]
    if "floor_over_one_call" in r:
        lines += ["", "Hand-written JAX without batchfit, timed in the same rounds (baselines.py's step and scans: "
                  "the floor of run.py): the data on the device beforehand, in order (fit's rows shuffle every "
                  f"epoch, its default), the losses read once per epoch; the snapshot floor also copies its {saves} "
                  "states to the host. Each over the one-call floor:", "",
                  "| floor (no batchfit) | epoch | / one call | median of the rounds' ratios |",
                  "|---|---:|---:|---:|", *_table(r, "floor_over_one_call", "floor_round_ratio_median")]
    return "\n".join(lines)


def timed_rounds(rows: dict, repeats: int, epochs: int) -> dict:
    """name -> seconds per epoch of each repeat; every row runs once first (compiles), then the rounds, the
    order rotating from one round to the next so that no row always runs after the same one."""
    for run in rows.values():
        run(1)
    times, names = {name: [] for name in rows}, list(rows)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            rows[name](epochs)
            times[name].append((time.perf_counter() - start) / epochs)
        print(json.dumps({k: round(v[-1], 4) for k, v in times.items()}), flush=True)
    return times


def ratios(times: dict, names, base: str) -> tuple[dict, dict]:
    """Each named row's median over `base`'s median, and the median of its per-round ratios to `base`."""
    medians = {k: statistics.median(times[k]) for k in names}
    return ({k: round(medians[k] / statistics.median(times[base]), 3) for k in names},
            {k: round(statistics.median(a / b for a, b in zip(times[k], times[base])), 3) for k in names})


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
    floors = floor_rows(workload, x, y, model.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        made = systems(folder)
        callbacks = with_variants(made) if args.where else {name: (make, None) for name, make in made.items()}
        fits = fit_rows(model, x, y, workload.batch_size, callbacks)
        times = timed_rounds({**fits, **floors}, repeats, args.epochs)
    over, rounds = ratios(times, fits, "no callback")
    floor_over, floor_rounds = ratios(times, floors, FLOOR_ONE_CALL)
    summary = {"workload": workload.title, "samples": len(x), "repeats": repeats, "epochs": args.epochs,
               "order": "rotated each repeat",
               "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
               "over_no_callback": over, "round_ratio_median": rounds,
               "floor_over_one_call": floor_over, "floor_round_ratio_median": floor_rounds, "times": times}
    print(json.dumps({k: v for k, v in summary.items() if k != "times"}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "checkpoint_cost.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if os.path.abspath(args.out) == HERE:
        import pathlib
        from report import refresh_section
        refresh_section(pathlib.Path(HERE) / "RESULTS.md", CHECKPOINT_HEADING, checkpoint_section(summary))
    return summary


if __name__ == "__main__":
    main()
