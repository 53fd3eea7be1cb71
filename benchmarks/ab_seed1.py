"""In-process A/B of one `fit(x, y, epochs=1)` call on the first article's workload, against the floor.

The suite (run.py) times each system in turn; at ~250 us a call, a slow drift of the machine
moves one system's median by more than the gap being measured. This script alternates 100-call
blocks of every variant in one process for 25 rounds and reports per-round ratios.

    python benchmarks/ab_seed1.py
"""

import os
import statistics
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402
from workloads import WORKLOADS, batchfit_model, make_data  # noqa: E402


def main(rounds: int = 25, calls: int = 100) -> None:
    w = WORKLOADS["seed1"]
    x, y = make_data(w)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    models = {name: batchfit_model(w) for name in ("numpy, in order", "jax arrays, in order", "numpy, shuffled")}
    epoch = baselines.epoch_fn(w, "none_dynamic_slice")
    holder = {"state": baselines.init_state(models["numpy, in order"].get_weights())}

    def floor():
        holder["state"], losses = epoch(holder["state"], xd, yd)
        return np.asarray(losses)

    def fit(name, a, b, shuffle):
        return lambda: models[name].fit(a, b, batch_size=w.batch_size, epochs=1, verbose=0, shuffle=shuffle)
    variants = {"floor (in order)": floor,
                "numpy, in order": fit("numpy, in order", x, y, False),
                "jax arrays, in order": fit("jax arrays, in order", xd, yd, False),
                "numpy, shuffled": fit("numpy, shuffled", x, y, True)}
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
    base = times["floor (in order)"]
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"{name:22s} {statistics.median(t):7.0f} us/call   per-round ratio to the floor {ratio:.3f}")


if __name__ == "__main__":
    main()
