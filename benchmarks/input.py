"""Input-pipeline benchmark: streaming against the fused in-memory path, and an epoch over a memmap.

    python benchmarks/input.py             # the full run (about 3 minutes; writes a 4.2 GB temp file)
    python benchmarks/input.py --quick     # small sizes, to check that it runs

1. Throughput on the second article's workload (100,000 x 10 samples, Dense(128, relu) ->
   Dense(1), Adam, MSE, batches of 32): steps/s of fit on in-memory arrays (the fused
   device path), of the article's bf.data pipeline, of a generator of NumPy batches, and of
   two other streamed inputs. The variants run interleaved, `--repeats` rounds, so that a
   busy machine slows all of them alike; the ratio reported is the median of the per-round
   ratios to the fused path.
2. Memory: a float32 memmap of --memmap-gb GB is written to a temp dir (free space is
   checked first, the file is deleted afterwards) and a fresh process trains one epoch on it
   with fit(x_memmap, y, batch_size=1024), in file order and shuffled; the peak RSS of that
   process (ru_maxrss) is reported.

Writes benchmarks/input.json and benchmarks/INPUT.md, and refreshes the input section of
RESULTS.md. Asserts nothing (STYLE.md rule 9).
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
    return {
        ARRAYS: lambda m, e: m.fit(x, y, batch_size=batch_size, epochs=e, verbose=0),
        "article pipeline: from_tensor_slices.shuffle.batch.prefetch (fused)": lambda m, e: m.fit(
            pipeline, epochs=e, verbose=0),
        GENERATOR: lambda m, e: m.fit(
            batches(e, False), steps_per_epoch=steps, epochs=e, verbose=0),
        "generator of NumPy batches, shuffled (streamed)": lambda m, e: m.fit(
            batches(e, True), steps_per_epoch=steps, epochs=e, verbose=0),
        "article pipeline with a .map before .prefetch (streamed)": lambda m, e: m.fit(mapped, epochs=e, verbose=0),
    }


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
    return {name: {"steps_per_s_median": float(np.median(r)), "steps_per_s_best": float(np.max(r)),
                   "ratio_to_fused_median": float(np.median(np.array(r) / base)),
                   "steps_per_s_all": [round(v) for v in r]}
            for name, r in rates.items()}


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
    lines = ["# Input pipeline benchmark", "",
             f"`python benchmarks/input.py{' --quick' if results['quick'] else ''}` on {results['machine']['cpus']} "
             f"CPUs ({results['machine']['backend']}, jax {results['machine']['jax']}); load average at the start "
             f"{results['machine']['load_average'][0]:.1f}, at the end {results['load_average_end'][0]:.1f}.", "",
             f"## Throughput: the second article's workload ({results['samples']:,} x 10, batch 32, "
             f"{results['epochs']} epochs per timing, {results['repeats']} interleaved rounds)", "",
             "| input | steps/s (median) | steps/s (best) | ratio to fused (median) |", "|---|---:|---:|---:|"]
    for name, r in results["throughput"].items():
        lines.append(f"| {name} | {r['steps_per_s_median']:,.0f} | {r['steps_per_s_best']:,.0f} | "
                     f"{r['ratio_to_fused_median']:.2f} |")
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
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="where input.json and INPUT.md go")
    parser.add_argument("--child-memmap", help=argparse.SUPPRESS)
    parser.add_argument("--shuffle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memmap:
        memmap_child(args.child_memmap, args.shuffle)
        return {}
    samples, epochs = SIZES[args.quick]
    repeats = args.repeats or (2 if args.quick else 7)
    results = {"quick": args.quick, "machine": machine(), "samples": samples, "epochs": epochs, "repeats": repeats}
    results["throughput"] = throughput(samples, epochs, repeats)
    results["memmap"] = memmap_rss(args.memmap_gb or (0.2 if args.quick else 4.2))
    results["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "input.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "INPUT.md").write_text(report(results))
    sys.path.insert(0, str(HERE))
    from report import refresh_input_section      # RESULTS.md carries these numbers too
    refresh_input_section(args.out / "RESULTS.md", args.out / "input.json")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
