"""Input-pipeline benchmark: streaming against the fused in-memory path, and an epoch over a memmap.

    python benchmarks/input.py             # the full run (about 4 minutes; writes a 4.2 GB temp file)
    python benchmarks/input.py --quick     # small sizes, to check that it runs
    python benchmarks/input.py --maps      # only the map placements against the fused path: input_maps.json
    python benchmarks/input.py --workers   # a non-traceable per-row map serially, on threads, on 2 processes:
                                           # input_workers.json (rows/s), interleaved

1. Throughput on the second article's workload (100,000 x 10 samples, Dense(128, relu) ->
   Dense(1), Adam, MSE, batches of 32): steps/s of fit on in-memory arrays (the fused
   device path), of the article's bf.data pipeline, of a generator of NumPy batches, and of
   two other streamed inputs, and of the usual per-row placement of a map
   (`shuffle -> map(f) -> batch`) with a traceable `f` (standardize: batched by batchfit), a
   NumPy-written `f` (`np.where`: traced on NumPy proxies, batched), a NumPy `f` with an `if` on the
   row's values (every path traced, each row taking its own: batched) and a non-traceable `f` (the
   same `if` on a Python float of the value: per row, serially, with num_parallel_calls=AUTOTUNE
   (threads or one at a time, whichever maps faster), and on 2 spawned processes of this script's
   own, which batchfit does not use: see --workers); and that non-traceable `f` alone, in a Python loop over
   the rows sliced beforehand (no pipeline, no training), whose rate is the ceiling of any per-row map of it
   on one core. The variants run interleaved, `--repeats` rounds, so that a
   busy machine slows all of them alike; the ratio reported is the median of the per-round
   ratios to the fused path.
2. Memory: a float32 memmap of --memmap-gb GB is written to a temp dir (free space is
   checked first, the file is deleted afterwards) and a fresh process trains one epoch on it
   with fit(x_memmap, y, batch_size=1024), in file order and shuffled; the peak RSS of that
   process (ru_maxrss) is reported.

Writes benchmarks/input.json and benchmarks/INPUT.md, and refreshes the input section of
RESULTS.md (the partial runs write only their own JSON and Markdown). Asserts nothing (STYLE.md rule 9).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
FEATURES = 256                   # memmap rows of 256 float32: 1 KiB each
ARRAYS, GENERATOR = "arrays (fused, in memory)", "generator of NumPy batches (streamed)"
SIZES = {False: (100_000, 3), True: (20_000, 1)}      # --quick -> (samples, epochs per timing)
ARTICLE = "article pipeline: from_tensor_slices.shuffle.batch.prefetch (fused)"
MEAN, STD = np.full(10, 0.5), np.full(10, 0.29)       # the features are uniform on [0, 1)
TRACEABLE_MAP = "per-row map, traceable f: shuffle.map(standardize).batch.prefetch"
NUMPY_MAP = "per-row map, NumPy f: shuffle.map(np.where).batch.prefetch"
BRANCH_MAP = "per-row map, NumPy f with an if: shuffle.map(clip_if_outlier).batch.prefetch"
PYTHON_MAP = "per-row map, non-traceable f: shuffle.map(cap_outliers).batch.prefetch"
PYTHON_THREADS = "per-row map, non-traceable f, num_parallel_calls=AUTOTUNE"
PYTHON_PROCESSES = "per-row map, non-traceable f on 2 processes (this script's pool, not batchfit's)"
F_ALONE = "f alone, no pipeline, no training: the ceiling (cap_outliers over pre-sliced rows, rows/s / 32)"
MAPS = (TRACEABLE_MAP, "batched map, traceable f: shuffle.batch.map(standardize).prefetch", NUMPY_MAP,
        "batched map, NumPy f: shuffle.batch.map(np.where).prefetch", BRANCH_MAP, PYTHON_MAP, PYTHON_THREADS,
        PYTHON_PROCESSES)


def standardize(features, target):
    """A traceable per-row map (JAX traces it: batchfit runs it on whole batches)."""
    return (features - MEAN) / STD, target


def keep_above_half(features, target):
    """A NumPy-written per-row map: JAX cannot trace np.where on its own; batchfit traces it on NumPy proxies."""
    return np.where(features > 0.5, features, 0.0), target


def clip_if_outlier(features, target):
    """A NumPy-written per-row map with an `if` on the row's values: batchfit traces both paths (as tf.data's
    AutoGraph makes the `if` a conditional) and each row takes its own."""
    if features.max() > 0.99:
        features = np.minimum(features, 0.99)
    return features, target


def cap_outliers(features, target):
    """A non-traceable per-row map: the same `if` on a Python float of the row's value, so it runs per row."""
    if float(features.max()) > 0.99:
        features = np.minimum(features, 0.99)
    return features, target


def article_model():
    import batchfit as bf
    model = bf.Sequential([bf.layers.Dense(128, activation="relu", input_shape=(10,)), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    return model


def variants(x, y, batch_size):
    """name -> fit(model, epochs) for each input type, on the same data."""
    import batchfit as bf
    n = len(x)
    steps = -(-n // batch_size)

    def batches(epochs, shuffle):
        rng = np.random.default_rng(0)
        for _ in range(epochs):
            order = rng.permutation(n) if shuffle else None
            for i in range(0, n, batch_size):
                rows = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
                yield x[rows], y[rows]

    batched = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer_size=10000).batch(batch_size)
    pipeline = batched.prefetch(buffer_size=bf.data.AUTOTUNE)
    mapped = batched.map(lambda a, b: (a, b)).prefetch(buffer_size=bf.data.AUTOTUNE)
    rows = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer_size=10000)
    auto = bf.data.AUTOTUNE
    maps = dict(zip(MAPS[:-1], (rows.map(standardize).batch(batch_size).prefetch(auto),
                               rows.batch(batch_size).map(standardize).prefetch(auto),
                               rows.map(keep_above_half).batch(batch_size).prefetch(auto),
                               rows.batch(batch_size).map(keep_above_half).prefetch(auto),
                               rows.map(clip_if_outlier).batch(batch_size).prefetch(auto),
                               rows.map(cap_outliers).batch(batch_size).prefetch(auto),
                               rows.map(cap_outliers, num_parallel_calls=auto).batch(batch_size).prefetch(auto))))

    def on_processes(epochs):               # the rows mapped by process_pool(), batched as batch() does
        for _ in range(epochs):
            yield from stack_batches(process_map(cap_outliers, iter(rows), process_pool()), batch_size)
    return {
        ARRAYS: lambda m, e: m.fit(x, y, batch_size=batch_size, epochs=e, verbose=0),
        ARTICLE: lambda m, e: m.fit(pipeline, epochs=e, verbose=0),
        GENERATOR: lambda m, e: m.fit(
            batches(e, False), steps_per_epoch=steps, epochs=e, verbose=0),
        "generator of NumPy batches, shuffled (streamed)": lambda m, e: m.fit(
            batches(e, True), steps_per_epoch=steps, epochs=e, verbose=0),
        "article pipeline with a .map before .prefetch (streamed)": lambda m, e: m.fit(mapped, epochs=e, verbose=0),
        **{name: (lambda m, e, ds=ds: m.fit(ds, epochs=e, verbose=0)) for name, ds in maps.items()},
        PYTHON_PROCESSES: lambda m, e: m.fit(on_processes(e), steps_per_epoch=steps, epochs=e, verbose=0),
        F_ALONE: f_alone(x, y),
    }


def f_alone(x, y):
    """cap_outliers on every row in a tight loop, timed like a fit: the most any per-row map of it can give on one core.

    Each row is what the map gets (an (x[i], y[i]) pair of NumPy row views, in a shuffled order), sliced before
    the timing; no pipeline, no batching, no training. Its steps/s (rows/s / batch size) over the fused path's is
    the ceiling ratio of a serial per-row map of this `f`.
    """
    rows = [(x[i], y[i]) for i in np.random.default_rng(0).permutation(len(x))]

    def run(model, epochs):
        for _ in range(epochs):
            for features, target in rows:
                cap_outliers(features, target)
    return run


def throughput(samples: int, epochs: int, repeats: int, batch_size: int = 32, names=None) -> dict:
    """name -> steps/s of each input variant (all, or those in `names`; the arrays always), interleaved."""
    rng = np.random.default_rng(0)
    x, y = rng.random((samples, 10)), rng.random((samples, 1))      # float64, as in the article
    steps = epochs * -(-samples // batch_size)
    runs = {name: (article_model(), fit) for name, fit in variants(x, y, batch_size).items()
            if names is None or name in names or name == ARRAYS}
    for model, fit in runs.values():
        fit(model, 1)                                                # compile outside the timings
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, fit) in runs.items():
            start = time.perf_counter()
            fit(model, epochs)
            rates[name].append(steps / (time.perf_counter() - start))
    base = np.array(rates[ARRAYS])
    results = {name: {"steps_per_s_median": float(np.median(r)), "steps_per_s_best": float(np.max(r)),
                      "ratio_to_fused_median": float(np.median(np.array(r) / base)),
                      "steps_per_s_all": [round(v) for v in r]}
               for name, r in rates.items()}
    if F_ALONE in results:
        results[F_ALONE]["rows_per_s_median"] = results[F_ALONE]["steps_per_s_median"] * samples * epochs / steps
    return results


_POOL = []                       # the spawned process pool of this script, started once


def process_pool(workers: int = 2):
    """A pool of `workers` spawned processes (never forked: this process has started JAX), kept for the run."""
    if not _POOL:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        _POOL.append(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
        atexit.register(_POOL[0].shutdown, cancel_futures=True)
    return _POOL[0]


def map_group(fn, packed):
    """One worker task: `fn` on each row of a packed group of elements, the results packed again."""
    return pack([fn(*row) for row in unpack(packed)])


def pack(elements: list):
    """A group of (x, y) elements as two stacked arrays (cheap to send), or the list when they do not stack."""
    try:
        return "stacked", tuple(np.stack(parts) for parts in zip(*elements))
    except ValueError:
        return "list", elements


def unpack(packed):
    kind, data = packed
    return zip(*data) if kind == "stacked" else data


def process_map(fn, elements, pool, workers: int = 2, group: int = 256):
    """`fn` of each element on the pool's processes, groups of `group` elements per task, in the input order."""
    import collections
    import itertools
    pending = collections.deque()
    while chunk := list(itertools.islice(elements, group)):
        pending.append(pool.submit(map_group, fn, pack(chunk)))
        if len(pending) >= 2 * workers:
            yield from unpack(pending.popleft().result())
    while pending:
        yield from unpack(pending.popleft().result())


def stack_batches(elements, batch_size: int):
    """(x, y) elements stacked `batch_size` at a time, the last batch smaller (what Dataset.batch gives)."""
    import itertools
    while chunk := list(itertools.islice(elements, batch_size)):
        yield tuple(np.stack(parts) for parts in zip(*chunk))


def python_map_workers(samples: int, repeats: int, batch_size: int = 32) -> dict:
    """Rows/s of `shuffle.map(cap_outliers).batch` (no training): serially, on 2 threads, with AUTOTUNE
    (batchfit's num_parallel_calls: threads or serial, timed) and on 2 spawned processes (process_map),
    interleaved, each round starting with another system: whether workers help on this machine."""
    import batchfit as bf
    rng = np.random.default_rng(0)
    x, y = rng.random((samples, 10)), rng.random((samples, 1))
    rows = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(buffer_size=10000, seed=0)
    pipelines = {"serial": lambda: iter(rows.map(cap_outliers).batch(batch_size)),
                 "2 threads": lambda: iter(rows.map(cap_outliers, num_parallel_calls=2).batch(batch_size)),
                 "AUTOTUNE": lambda: iter(rows.map(cap_outliers, num_parallel_calls=bf.data.AUTOTUNE)
                                                  .batch(batch_size)),
                 "2 processes (spawn)": lambda: stack_batches(
                     process_map(cap_outliers, iter(rows), process_pool()), batch_size)}
    for run in pipelines.values():
        sum(1 for _ in run())                                     # start the workers outside the timings
    rates = {name: [] for name in pipelines}
    names = list(pipelines)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            sum(1 for _ in pipelines[name]())
            rates[name].append(samples / (time.perf_counter() - start))
    base = np.array(rates["serial"])
    return {name: {"rows_per_s_median": float(np.median(r)), "ratio_to_serial_median": float(np.median(r / base)),
                   "rows_per_s_all": [round(v) for v in r]}
            for name, r in ((name, np.array(r)) for name, r in rates.items())}


def workers_report(results: dict) -> str:
    """The --workers results as a RESULTS.md section."""
    machine = results["machine"]
    lines = ["## A non-traceable per-row map on workers (issue 26)", "",
             f"`python benchmarks/input.py --workers` on {machine['cpus']} CPUs; load average at the start "
             f"{machine['load_average'][0]:.1f}: `shuffle.map(cap_outliers).batch(32)` over "
             f"{results['samples']:,} rows of 10, no training, {results['repeats']} interleaved rounds.", "",
             "| system | rows/s (median) | ratio to serial (median) |", "|---|---:|---:|"]
    for name, r in results["workers"].items():
        lines.append(f"| {name} | {r['rows_per_s_median']:,.0f} | {r['ratio_to_serial_median']:.2f} |")
    return "\n".join(lines) + "\n"


def generator_against_arrays(repeats: int) -> dict:
    """run.py's input target: the generator of NumPy batches against the same arrays in memory.

    Always the full 100,000 samples and 3 epochs per timing (a fraction of a second each): with
    --quick's 20,000 samples and one epoch, each fit call's fixed cost would weigh 15x more.
    """
    samples, epochs = SIZES[False]
    return {"samples": samples, "epochs": epochs, "repeats": repeats,
            "throughput": throughput(samples, epochs, repeats, names=(GENERATOR,))}


def write_memmap(directory: pathlib.Path, gigabytes: float) -> tuple[pathlib.Path, pathlib.Path, int]:
    """x.npy (float32 [rows, 256]) written block by block with plain writes (no mapping), and y.npy."""
    rows = int(gigabytes * 1e9) // (FEATURES * 4)
    x_path, y_path = directory / "x.npy", directory / "y.npy"
    rng = np.random.default_rng(0)
    with open(x_path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (rows, FEATURES)})
        block = 1 << 16
        for start in range(0, rows, block):
            f.write(rng.random((min(block, rows - start), FEATURES), dtype=np.float32).tobytes())
    np.save(y_path, rng.random((rows, 1), dtype=np.float32))
    return x_path, y_path, rows


def memmap_child(directory: str, shuffle: bool) -> None:
    """Runs in a fresh process: one epoch over the memmap; prints JSON with the peak RSS."""
    import batchfit as bf
    x = np.load(pathlib.Path(directory) / "x.npy", mmap_mode="r")
    y = np.load(pathlib.Path(directory) / "y.npy")
    model = bf.Sequential([bf.layers.Dense(16, activation="relu", input_shape=(FEATURES,)), bf.layers.Dense(1)],
                          seed=0)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x[:4096], y[:4096], batch_size=1024, epochs=1, verbose=0)   # compile; an in-memory copy of 4 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=1024, epochs=1, shuffle=shuffle, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"file_gb": x.nbytes / 1e9, "rows": len(x), "shuffle": shuffle, "seconds": seconds,
                      "gb_per_s": x.nbytes / 1e9 / seconds, "loss": history.history["loss"][0],
                      "peak_rss_before_fit_mb": before,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memmap_rss(gigabytes: float) -> dict:
    root = tempfile.gettempdir()
    free = shutil.disk_usage(root).free / 1e9
    if free < gigabytes * 1.5 + 1:
        return {"skipped": f"{free:.1f} GB free in {root}; need {gigabytes * 1.5 + 1:.1f} GB"}
    directory = pathlib.Path(tempfile.mkdtemp(prefix="batchfit-memmap-"))
    try:
        start = time.perf_counter()
        _, _, rows = write_memmap(directory, gigabytes)
        results = {"write_seconds": time.perf_counter() - start, "runs": []}
        for shuffle in (False, True):
            out = subprocess.run([sys.executable, __file__, "--child-memmap", str(directory)]
                                 + (["--shuffle"] if shuffle else []),
                                 capture_output=True, text=True, check=True)
            results["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def machine() -> dict:
    import jax
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(), "load_average": os.getloadavg()}


def report(results: dict) -> str:
    flags = "".join(f" --{flag}" for flag in ("quick", "maps") if results.get(flag))
    lines = ["# Input pipeline benchmark", "",
             f"`python benchmarks/input.py{flags}` on {results['machine']['cpus']} "
             f"CPUs ({results['machine']['backend']}, jax {results['machine']['jax']}); load average at the start "
             f"{results['machine']['load_average'][0]:.1f}, at the end {results['load_average_end'][0]:.1f}.", "",
             f"## Throughput: the second article's workload ({results['samples']:,} x 10, batch 32, "
             f"{results['epochs']} epochs per timing, {results['repeats']} interleaved rounds)", "",
             "| input | steps/s (median) | steps/s (best) | ratio to fused (median) |", "|---|---:|---:|---:|"]
    for name, r in results["throughput"].items():
        lines.append(f"| {name} | {r['steps_per_s_median']:,.0f} | {r['steps_per_s_best']:,.0f} | "
                     f"{r['ratio_to_fused_median']:.2f} |")
    if F_ALONE in results["throughput"]:
        alone = results["throughput"][F_ALONE]
        lines += ["", f"The last row is `cap_outliers` alone ({alone['rows_per_s_median']:,.0f} rows/s): no per-row "
                      f"map of it on one core can pass {alone['ratio_to_fused_median']:.2f}x the fused path."]
    memmap = results["memmap"]
    lines += ["", "## Memory: one epoch over a NumPy memmap on disk", ""]
    if "skipped" in memmap:
        lines.append(f"Skipped: {memmap['skipped']}.")
    else:
        lines += ["| file | order | seconds | GB/s | peak RSS before fit | peak RSS |", "|---|---|---:|---:|---:|---:|"]
        for r in memmap["runs"]:
            order = "shuffled" if r["shuffle"] else "file order"
            lines.append(f"| {r['file_gb']:.2f} GB, {r['rows']:,} rows | {order} "
                         f"| {r['seconds']:.1f} | {r['gb_per_s']:.2f} | {r['peak_rss_before_fit_mb']:,.0f} MB "
                         f"| {r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 7; quick 2)")
    parser.add_argument("--memmap-gb", type=float, default=None, help="memmap size in GB (default 4.2; quick 0.2)")
    parser.add_argument("--maps", action="store_true", help="only the map placements and the fused path")
    parser.add_argument("--workers", action="store_true",
                        help="only: a non-traceable per-row map serially, on threads, on 2 processes (rows/s)")
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="where input.json and INPUT.md go")
    parser.add_argument("--child-memmap", help=argparse.SUPPRESS)
    parser.add_argument("--shuffle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers:
        samples, repeats = SIZES[args.quick][0] // 5, args.repeats or 7
        results = save({"machine": machine(), "samples": samples, "repeats": repeats,
                        "workers": python_map_workers(samples, repeats)}, args.out / "input_workers.json")
        print(workers_report(results))
        return results
    if args.child_memmap:
        memmap_child(args.child_memmap, args.shuffle)
        return {}
    samples, epochs = SIZES[args.quick]
    repeats = args.repeats or (2 if args.quick else 7)
    results = {"quick": args.quick, "maps": args.maps, "machine": machine(), "samples": samples, "epochs": epochs,
               "repeats": repeats}
    results["throughput"] = throughput(samples, epochs, repeats,
                                       names=(ARTICLE, *MAPS, F_ALONE) if args.maps else None)
    results["memmap"] = ({"skipped": "--maps"} if args.maps else
                         memmap_rss(args.memmap_gb or (0.2 if args.quick else 4.2)))
    results["load_average_end"] = os.getloadavg()
    stem = "input_maps" if args.maps else "input"          # a partial run leaves the full one's files alone
    save(results, args.out / f"{stem}.json")
    (args.out / f"{stem.upper()}.md").write_text(report(results))
    if not args.maps:
        sys.path.insert(0, str(HERE))
        from report import refresh_input_section      # RESULTS.md carries these numbers too
        refresh_input_section(args.out / "RESULTS.md", args.out / "input.json")
    return results


def save(results: dict, path: pathlib.Path) -> dict:
    """Write `results` as JSON to `path` and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
