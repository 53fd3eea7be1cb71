"""Process-level measurements: first fit call in a fresh process, the compilation cache, whole jobs, RSS.

Each measurement is a fresh `python` process with its own environment (a temporary
BATCHFIT_CACHE_DIR, or BATCHFIT_COMPILATION_CACHE=0 and no JAX cache dir); repeats of
different kinds are interleaved. Run as `python benchmarks/procs.py first_fit|floor_first_epoch
WORKLOAD QUICK` or `python benchmarks/procs.py rss`, this file is the probe that such a
process runs, printing one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = os.path.join(HERE, "jobs")
# How the floor's first epoch orders the samples: a host permutation, the arrays permuted once
# inside the jit, as benchmarks/jobs/seed1_jax.py does (batchfit's fit shuffles by default).
FLOOR_FIRST_EPOCH_OPTION = "host_permutation+permute_once"


# ----- the probes (run inside the child) -------------------------------------------------

def _probe_first_fit(name: str, quick: bool) -> dict:
    """batchfit: build and compile() the workload's model, then its first fit call and a second one."""
    start = time.perf_counter()
    import jax
    jax_imported = time.perf_counter()
    import batchfit  # noqa: F401
    imported = time.perf_counter()
    jax.devices()                          # the backend's start-up (milliseconds) is nobody's first call
    backend = time.perf_counter()
    sys.path.insert(0, HERE)
    from workloads import WORKLOADS, batchfit_model, make_data
    w = WORKLOADS[name]
    x, y = make_data(w, quick)
    data = time.perf_counter()
    model = batchfit_model(w)
    built = time.perf_counter()
    model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0)
    first = time.perf_counter()
    model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0)
    second = time.perf_counter()
    return {"import_s": imported - start, "import_jax_s": jax_imported - start,
            "import_batchfit_after_jax_s": imported - jax_imported, "backend_s": backend - imported,
            "build_compile_s": built - data, "first_fit_s": first - built, "second_fit_s": second - first,
            "cache_dir": jax.config.jax_compilation_cache_dir}


def _probe_floor_first_epoch(name: str, quick: bool) -> dict:
    """The hand-written floor: its first epoch (NumPy weights and x/y to the device, trace, compile, run,
    losses on the host), then a second one, shuffled as a hand-written job shuffles (FLOOR_FIRST_EPOCH_OPTION)."""
    start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    jax_imported = time.perf_counter()
    jax.devices()
    backend = time.perf_counter()
    sys.path.insert(0, HERE)
    import baselines
    from workloads import WORKLOADS, make_data
    w = WORKLOADS[name]
    x, y = make_data(w, quick)
    data = time.perf_counter()
    weights = baselines.glorot_weights(w)
    epoch = baselines.epoch_fn(w, FLOOR_FIRST_EPOCH_OPTION)       # its dropout keys are drawn here
    built = time.perf_counter()
    # batchfit's first fit creates its weights; the floor's first epoch copies them to the device
    state, xd, yd = baselines.init_state(weights), jnp.asarray(x), jnp.asarray(y)
    state, losses = epoch(state, xd, yd)
    np.asarray(losses)
    first = time.perf_counter()
    state, losses = epoch(state, jnp.asarray(x), jnp.asarray(y))
    np.asarray(losses)
    second = time.perf_counter()
    return {"import_s": jax_imported - start, "import_jax_s": jax_imported - start, "backend_s": backend - jax_imported,
            "build_s": built - data, "first_epoch_s": first - built, "second_epoch_s": second - first,
            "cache_dir": jax.config.jax_compilation_cache_dir}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe_rss(tob_calls=2000, fit_calls=50) -> dict:
    """A warm-up fit call (its compile is not growth), then tob_calls train_on_batch and fit_calls fit calls."""
    sys.path.insert(0, HERE)
    from workloads import WORKLOADS, batchfit_model, make_data
    w = WORKLOADS["seed1"]
    x, y = make_data(w)
    model = batchfit_model(w)
    nb = len(x) // w.batch_size
    samples = {"built": _rss_bytes()}
    model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0)
    samples["warm_up_fit"] = _rss_bytes()
    for i in range(tob_calls):
        sl = slice((i % nb) * w.batch_size, (i % nb + 1) * w.batch_size)
        float(model.train_on_batch(x[sl], y[sl]))
        if (i + 1) in (1, 100, 500, 1000, 1500, tob_calls):
            samples[f"tob_{i + 1}"] = _rss_bytes()
    for j in range(fit_calls):
        model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0)
        if (j + 1) in (1, 10, 25, fit_calls):
            samples[f"fit_{j + 1}"] = _rss_bytes()
    return {"rss_bytes": samples, "tob_calls": tob_calls, "fit_calls": fit_calls}


# ----- the coordinator side ----------------------------------------------------------------

def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "BATCHFIT_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _run(args, env, timeout=300):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _summarize(runs: dict) -> dict:
    out = {}
    for mode, rows in runs.items():
        keys = rows[0].keys() if rows and isinstance(rows[0], dict) else []
        out[mode] = {"runs": rows}
        for k in keys:
            if isinstance(rows[0][k], (int, float)):
                out[mode][f"median_{k}"] = _median([r[k] for r in rows])
    return out


def first_fit(repeats: int, workload_repeats: int, workloads, log, quick: bool = False) -> dict:
    """First fit call in a fresh process: batchfit against the floor's first epoch, and the cache.

    Per workload, cache off (BATCHFIT_COMPILATION_CACHE=0, no JAX cache dir): batchfit's first
    fit call ("cache_off") and the hand-written floor's first epoch ("floor"), `workload_repeats`
    rounds, the two side by side in each round (which goes first alternates). On the first
    article's workload also `repeats` rounds with a cold cache ("cache_cold", a new cache dir
    each time; not in --quick) and a warm one ("cache_warm": the second process on one dir).
    Returns {workload: {mode: {"runs": [...], "median_<field>": ...}}}.
    """
    tmp = tempfile.mkdtemp(prefix="bf-bench-cache-")
    warm_dir = os.path.join(tmp, "warm")
    cache_off = _env(BATCHFIT_COMPILATION_CACHE="0")
    try:
        _run([__file__, "first_fit", "seed1", str(quick)], _env(BATCHFIT_CACHE_DIR=warm_dir))   # fills the cache
        seed1_modes = {"cache_cold": lambda r: _env(BATCHFIT_CACHE_DIR=os.path.join(tmp, f"cold{r}")),
                       "cache_warm": lambda r: _env(BATCHFIT_CACHE_DIR=warm_dir)}
        if quick:
            del seed1_modes["cache_cold"]
        runs = {w: {"cache_off": [], "floor": []} for w in workloads}
        runs.setdefault("seed1", {}).update({m: [] for m in seed1_modes})
        for r in range(max(repeats, workload_repeats)):
            plan = []
            if r < workload_repeats:
                for w in workloads:
                    pair = [("cache_off", "first_fit", w, cache_off), ("floor", "floor_first_epoch", w, cache_off)]
                    plan += pair[::-1] if r % 2 else pair
            if r < repeats:
                plan += [(mode, "first_fit", "seed1", env(r)) for mode, env in seed1_modes.items()]
            for mode, probe, w, env in plan:
                wall, out = _run([__file__, probe, w, str(quick)], env)
                row = {**json.loads(out.strip().splitlines()[-1]), "process_wall_s": wall}
                runs[w][mode].append(row)
                log({"event": "first_fit", "workload": w, "mode": mode, "repeat": r, **row})
        return {w: _summarize({m: rows for m, rows in modes.items() if rows}) for w, modes in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def jobs(repeats: int, with_keras: bool, log, quick: bool = False) -> dict:
    """Wall time of `python <job>.py` from process start, for the first article's whole job."""
    tmp = tempfile.mkdtemp(prefix="bf-bench-jobs-")
    warm_dir = os.path.join(tmp, "warm")
    try:
        bf_job = os.path.join(HERE, os.pardir, "examples", "seed1_fit.py")   # the article's example, ported
        _run([bf_job], _env(BATCHFIT_CACHE_DIR=warm_dir))
        modes = {
            "batchfit (cache off)": (bf_job, lambda r: _env(BATCHFIT_COMPILATION_CACHE="0")),
            "batchfit (cache cold: first run)": (bf_job, lambda r: _env(BATCHFIT_CACHE_DIR=os.path.join(tmp, f"c{r}"))),
            "batchfit (cache warm: next runs)": (bf_job, lambda r: _env(BATCHFIT_CACHE_DIR=warm_dir)),
            "hand-written JAX": (os.path.join(JOBS, "seed1_jax.py"), lambda r: _env()),
        }
        if with_keras:
            modes["Keras 3 / TensorFlow"] = (os.path.join(JOBS, "seed1_keras.py"), lambda r: _env())
        if quick:
            del modes["batchfit (cache cold: first run)"]
        else:
            _run([modes["hand-written JAX"][0]], _env())              # page cache warm for every job alike
        runs = {m: [] for m in modes}
        for r in range(repeats):
            for mode, (script, env) in modes.items():
                wall, out = _run([script], env(r))
                runs[mode].append({"wall_s": wall, "printed": out.strip().splitlines()[-1]})
                log({"event": "job", "mode": mode, "repeat": r, "wall_s": wall})
        return _summarize(runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rss(log) -> dict:
    """RSS after a warm-up fit and 100 train_on_batch calls, after 2000, and after 50 fit calls more."""
    _, out = _run([__file__, "rss"], _env(BATCHFIT_COMPILATION_CACHE="0"))
    result = json.loads(out.strip().splitlines()[-1])
    s = result["rss_bytes"]
    end = f"fit_{result['fit_calls']}"
    tob_end = f"tob_{result['tob_calls']}"
    result["growth"] = {
        "after first 100 train_on_batch -> after all calls": s[end] / s["tob_100"] - 1,
        "train_on_batch 100 -> 2000": s[tob_end] / s["tob_100"] - 1,
        "fit calls 1 -> 50 (after the train_on_batch calls)": s[end] / s[tob_end] - 1,
        "built -> warm-up fit (compile: not growth, for reference)": s["warm_up_fit"] / s["built"] - 1,
    }
    log({"event": "rss", **result})
    return result


if __name__ == "__main__":
    if sys.argv[1] == "rss":
        print(json.dumps(_probe_rss()))
    else:                                   # first_fit|floor_first_epoch WORKLOAD QUICK
        probe = {"first_fit": _probe_first_fit, "floor_first_epoch": _probe_floor_first_epoch}[sys.argv[1]]
        print(json.dumps(probe(sys.argv[2], sys.argv[3] == "True")))
