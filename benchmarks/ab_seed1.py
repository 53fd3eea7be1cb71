"""In-process A/B on the first article's workload: one `fit(x, y, epochs=1)` call against the floor
of the same order (run.py's: in order, and the host permutation applied once when shuffled),
and a pass of `train_on_batch` over the 31 full batches against the hand-written jit(step) loop, alone
and with the two value rules train_on_batch runs on every batch (x finite, y in [0, 1]) written by hand
in NumPy before each step: the floor of any train_on_batch that checks its batch on the host.

The suite (run.py) times each system in turn; at ~250 us a call, a slow drift of the machine
moves one system's median by more than the gap being measured. This script alternates 100-call
blocks of every variant in one process for 25 rounds and reports per-round ratios.

    python benchmarks/ab_seed1.py
"""

import math
import os
import statistics
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402
from systems import _loop  # noqa: E402
from workloads import WORKLOADS, batchfit_model, make_data  # noqa: E402


def main(rounds: int = 25, calls: int = 100) -> None:
    w = WORKLOADS["seed1"]
    x, y = make_data(w)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    models = {name: batchfit_model(w) for name in ("numpy, in order", "jax arrays, in order", "numpy, shuffled")}
    weights = models["numpy, in order"].get_weights()

    def floor(option):      # the floor of run.py: unshuffled, and the fastest shuffled option there
        epoch, holder = baselines.epoch_fn(w, option), {"state": baselines.init_state(weights)}

        def run():
            holder["state"], losses = epoch(holder["state"], xd, yd)
            return np.asarray(losses)
        return run

    def fit(name, a, b, shuffle):
        return lambda: models[name].fit(a, b, batch_size=w.batch_size, epochs=1, verbose=0, shuffle=shuffle)
    variants = {"floor (in order)": floor("none_dynamic_slice"),
                "floor (shuffled)": floor("host_permutation+permute_once"),
                "numpy, in order": fit("numpy, in order", x, y, False),
                "jax arrays, in order": fit("jax arrays, in order", xd, yd, False),
                "numpy, shuffled": fit("numpy, shuffled", x, y, True)}
    loops, steps = {}, len(x) // w.batch_size
    for read in (True, False):
        what = "loss read" if read else "loss not read"
        hand = _hand_step(w, models["numpy, in order"].get_weights())
        loops[f"jit(step) loop, {what}"] = _loop(hand, x, y, w.batch_size, steps, read)
        loops[f"jit(step) + rules, {what}"] = _loop(_with_rules(_hand_step(w, models["numpy, in order"].get_weights())),
                                                    x, y, w.batch_size, steps, read)
        loops[f"train_on_batch, {what}"] = _loop(batchfit_model(w).train_on_batch, x, y, w.batch_size, steps, read)
    times = _alternate(variants, rounds, calls)
    _report({k: v for k, v in times.items() if "shuffled" not in k}, "floor (in order)", "the floor", "call")
    _report({k: v for k, v in times.items() if "shuffled" in k}, "floor (shuffled)", "the shuffled floor", "call")
    times = _alternate(loops, rounds, calls // 10)
    for what in ("loss read", "loss not read"):
        _report({k: v for k, v in times.items() if k.endswith(", " + what)}, f"jit(step) loop, {what}",
                "jit(step)", "pass")


def _hand_step(w, weights):
    step = baselines.jitted_step(w)
    holder = {"state": baselines.init_state(weights)}

    def run(xb, yb):
        holder["state"], loss = step(holder["state"], xb, yb)
        return loss
    return run


def _with_rules(run):
    """`run(xb, yb)` after the value rules, as a user would write them: finite x, targets in [0, 1]."""
    def checked(xb, yb):
        if not math.isfinite(np.vdot(xb, xb)):
            raise ValueError("x has NaN or inf")
        if not 0 <= yb.min() <= yb.max() <= 1:
            raise ValueError("y outside [0, 1]")
        return run(xb, yb)
    return checked


def _alternate(variants: dict, rounds: int, calls: int) -> dict:
    """Per variant, the mean time of one call in each round; rounds alternate `calls`-call blocks."""
    for run in variants.values():
        for _ in range(3):
            run()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def _report(times: dict, base_name: str, base_label: str, unit: str) -> None:
    base = times[base_name]
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"{name:32s} {statistics.median(t):7.0f} us/{unit}   per-round ratio to {base_label} {ratio:.3f}")


if __name__ == "__main__":
    main()
