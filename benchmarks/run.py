"""batchfit's benchmark suite (the targets of issue 20): every system timed in the same run, interleaved.

    python benchmarks/run.py                 # the full suite, about 15 minutes on 2 cores
    python benchmarks/run.py --quick         # a smaller, faster check (a few minutes)
    python benchmarks/run.py --workloads seed1,seed2 --systems batchfit,floor --out /tmp/b

Writes RESULTS.md (table, targets, shuffle options, profiles, machine) and results.json
to --out (default: this folder) and prints one JSON line per measurement as it goes.
Nothing here asserts anything about time.

Method: each framework runs in its own worker process (JAX: batchfit, the hand-written
floor and the jitted-step loop; PyTorch; Keras 3 on TensorFlow), so no framework's
threads or imports touch another's. Per workload the JAX systems' rounds run first, then
PyTorch's and Keras's (a Keras call slows the JAX systems after it: time_workload).
Per workload, every system's first call (trace and compile) is timed apart, then warm-up calls fix how many calls make one timed repeat
(about --repeat-seconds of work), then the repeats go round-robin over all systems,
starting at a different system each round, so that machine noise hits all of them alike (at
least --repeats rounds, more on a workload whose rounds are short: repeats_for).
Reported: the median over the repeats of the time per call, divided by the steps (batches)
per call. Fit-like calls are one epoch (`fit(x, y, epochs=1)`, what users call) and end
with their losses on the host; `*_epochs` rows are one `fit(epochs=R)` divided by R.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workloads import FAST_SHUFFLE_OPTIONS, SHUFFLE_OPTIONS, WORKLOADS, num_batches  # noqa: E402

GROUPS = ("batchfit", "floor", "shuffle", "loops", "torch", "keras", "procs", "input", "profile")
_START = time.perf_counter()


def emit(record: dict) -> None:
    print(json.dumps({**record, "t": round(time.perf_counter() - _START, 2)}), flush=True)


class Worker:
    """A worker process speaking JSON lines (see worker.py)."""

    def __init__(self, framework: str, log_dir: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
        env.update(JAX_PLATFORMS="cpu", BATCHFIT_COMPILATION_CACHE="0",      # first calls compile for real
                   KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self.framework = framework
        self.log_path = os.path.join(log_dir, f"worker-{framework}.log")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), framework],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "w"), env=env, text=True)
        self.ready = False

    def wait_ready(self):
        if not self.ready:
            self._read()
            self.ready = True
        return self

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            with open(self.log_path) as f:
                raise RuntimeError(f"{self.framework} worker died:\n{f.read()[-3000:]}")
        return json.loads(line)

    def request(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.pop("ok", True):
            raise RuntimeError(f"{self.framework} worker, {cmd}: {reply['error']}")
        return reply

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def plan(name: str, quick: bool, groups: set) -> dict:
    """framework -> {system key: loop steps (loops) or None (fit-like)} for one workload."""
    w = WORKLOADS[name]
    nb = num_batches(w.samples(quick), w.batch_size)
    jax_cap, torch_cap, keras_cap = (200, 100, 50) if quick else (1000, 500, 200)
    jax_sys, torch_sys, keras_sys = {}, {}, {}
    full = not quick                    # --quick keeps what the targets need and drops the diagnostic rows
    if "floor" in groups:
        jax_sys["floor[noshuffle]"] = None
        if full:
            jax_sys["floor_slices[noshuffle]"] = None
        options = SHUFFLE_OPTIONS if full and name != "heavy" and "shuffle" in groups \
            else FAST_SHUFFLE_OPTIONS if full else FAST_SHUFFLE_OPTIONS[:2]
        jax_sys.update({f"floor_shuffle:{opt}[shuffle]": None for opt in options})
    if "batchfit" in groups:
        variants = ("bf_fit", "bf_fit_device", "bf_fit_epochs", "bf_fit_spe1") if full \
            else ("bf_fit", "bf_fit_epochs", "bf_fit_spe1") if name == "seed2" else ("bf_fit", "bf_fit_epochs")
        for tag in ("noshuffle", "shuffle"):
            jax_sys.update({f"{system}[{tag}]": None for system in variants})
    if "loops" in groups and (full or name in ("seed1", "seed2")):      # the targets: loss read, seed1 and seed2
        reads = (True, False) if full else (True,)
        for read in reads:
            for key in ("jit_loop", *(("bf_tob",) if "batchfit" in groups else ())):
                jax_sys[key + ("_read" if read else "")] = min(nb, jax_cap)
    if "torch" in groups:
        torch_sys["torch_loop"] = min(nb, torch_cap)
        if full or name == "seed1":
            torch_sys["torch_loop_1thread"] = min(nb, torch_cap)
    if "keras" in groups:
        keras_sys["keras_fit[shuffle]"] = None
        if name in ("seed1", "mlp") and full:
            keras_sys["keras_fit_epochs[shuffle]"] = None
        if "loops" in groups and (full or name == "seed2"):
            keras_sys["keras_tob"] = min(nb, keras_cap)
    return {"jax": jax_sys, "torch": torch_sys, "keras": keras_sys}


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


_ORDER = ("floor[noshuffle]", "bf_fit[noshuffle]", "bf_fit_device[noshuffle]", "bf_fit_epochs[noshuffle]",
          "bf_fit_spe1[noshuffle]", "floor_slices[noshuffle]", "floor_shuffle:", "bf_fit[shuffle]",
          "bf_fit_device[shuffle]", "bf_fit_epochs[shuffle]", "bf_fit_spe1[shuffle]", "jit_loop_read", "bf_tob_read",
          "jit_loop", "bf_tob", "torch_loop", "keras_fit", "keras_tob")


def _cyclic_position(system: dict):
    """Systems that are compared sit next to each other, so every round times them seconds apart."""
    key = system["key"]
    fast = any(opt in key for opt in FAST_SHUFFLE_OPTIONS)
    rank = next((i for i, prefix in enumerate(_ORDER) if key.startswith(prefix)), len(_ORDER))
    return rank, fast, key


def time_workload(name: str, workers: dict, args, errors: list) -> list[dict]:
    """First call, warm-up and calibration, then interleaved repeats of every system of one workload.

    A failing PyTorch or Keras system is dropped (and listed in `errors`); a failing JAX one stops the run.
    """
    systems = []
    for framework, wanted in plan(name, args.quick, args.groups).items():
        if not wanted or framework not in workers:
            continue
        try:
            reply = workers[framework].request("setup", workload=name, quick=args.quick, wanted=wanted)
        except RuntimeError as e:
            if framework == "jax":
                raise
            errors.append({"workload": name, "framework": framework, "error": str(e)[-2000:]})
            continue
        emit({"event": "setup", "workload": name, "framework": framework, "setup_s": reply["setup_s"]})
        systems += [dict(s, framework=framework, workload=name) for s in reply["systems"]]

    systems.sort(key=_cyclic_position)

    def run(s, m):
        try:
            seconds = workers[s["framework"]].request("run", key=s["key"], m=m)["seconds"]
            if s["framework"] != "jax":
                time.sleep(args.settle)     # PyTorch's and TensorFlow's pools spin a while after work
            return seconds
        except RuntimeError as e:
            if s["framework"] == "jax":
                raise
            errors.append({"workload": name, "key": s["key"], "error": str(e)[-2000:]})
            emit({"event": "error", **errors[-1]})
            return None

    for s in list(systems):
        s["first_call_s"], warm = run(s, 1), run(s, 1)
        if s["first_call_s"] is None or warm is None:
            systems.remove(s)
            continue
        if warm < 1.0 and not args.quick:
            warm = min(warm, run(s, 1) or warm)
        minimum = 3 if s["key"].split("[")[0].endswith("_epochs") else 1
        s["calls_per_repeat"] = max(minimum, min(5000, math.ceil(args.repeat_seconds / max(warm, 1e-9))))
        s["round_s"] = s["calls_per_repeat"] * warm + (args.settle if s["framework"] != "jax" else 0.0)
        s["repeat_s"] = []
        emit({"event": "first_call", **{k: s[k] for k in ("workload", "key", "first_call_s", "calls_per_repeat")}})
    # The JAX systems' rounds first, then PyTorch's and Keras's: right after a Keras call the JAX
    # worker's systems ran up to 1.6x slower for a while, even after a 1 s pause and an untimed
    # call (the first article's floor: 7.5 us/step in a run without Keras, 11-12 with it), which
    # biased whichever JAX systems came next in a round.
    phases = [[s for s in systems if s["framework"] == "jax"], [s for s in systems if s["framework"] != "jax"]]
    for phase in phases:
        for r in range(repeats_for(phase, args)):
            for i in range(len(phase)):
                s = phase[(i + r) % len(phase)]
                seconds = run(s, s["calls_per_repeat"])
                if seconds is None:
                    continue
                s["repeat_s"].append(seconds / s["calls_per_repeat"])
                emit({"event": "repeat", "workload": name, "key": s["key"], "repeat": r,
                      "us_per_step": 1e6 * s["repeat_s"][-1] / s["steps"]})
    systems = [s for s in systems if s["repeat_s"]]
    for s in systems:
        per_step = [1e6 * t / s["steps"] for t in s["repeat_s"]]
        s.update(us_per_step=_median(per_step), us_per_step_min=min(per_step), us_per_step_max=max(per_step),
                 steps_per_s=1e6 / _median(per_step))
    for framework in {s["framework"] for s in systems}:
        workers[framework].request("teardown")
    return systems


def repeats_for(systems: list, args) -> int:
    """Rounds for one workload: --repeats, or more (up to --max-repeats) while they take at most
    --rounds-seconds. On a small workload a round takes seconds, and a median over more of its
    noisy repeats moves less from run to run."""
    round_s = sum(s["round_s"] for s in systems)
    return max(args.repeats, min(args.max_repeats, int(args.rounds_seconds / max(round_s, 1e-9))))


def machine_info(workers: dict) -> dict:
    import platform
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        root = os.path.dirname(HERE)
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                            capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
        info["src_modified"] = bool(dirty.stdout.strip())
    except OSError:
        pass
    for framework, worker in workers.items():
        info[framework] = worker.request("info")
    return info


def cpu_snapshot() -> dict:
    """Machine-wide busy CPU seconds and this process tree's CPU seconds (waited children)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")      # minus idle and iowait
    t = os.times()
    return {"busy_s": busy, "ours_s": t.user + t.system + t.children_user + t.children_system,
            "wall": time.monotonic(), "loadavg": os.getloadavg()}


def other_load(start: dict, end: dict) -> dict:
    """How much CPU other processes took while the suite ran: noise the interleaving spreads evenly."""
    wall = end["wall"] - start["wall"]
    others = max(0.0, (end["busy_s"] - start["busy_s"]) - (end["ours_s"] - start["ours_s"]))
    return {"wall_s": wall, "other_processes_cpu_s": others,
            "other_processes_share_of_machine": others / (wall * (os.cpu_count() or 1)),
            "loadavg_start": start["loadavg"], "loadavg_end": end["loadavg"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer samples, repeats and systems (a few minutes)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--systems", default=",".join(GROUPS), help=f"comma list of groups: {', '.join(GROUPS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per system (default 9; quick 5)")
    p.add_argument("--max-repeats", type=int, default=None,
                   help="timed repeats per system on a workload whose rounds are short (default 25; quick 5)")
    p.add_argument("--rounds-seconds", type=float, default=60.0,
                   help="a workload gets more than --repeats rounds while they take at most this long (default 60)")
    p.add_argument("--repeat-seconds", type=float, default=None,
                   help="work per timed repeat, in seconds (default 0.1; quick 0.02)")
    p.add_argument("--settle", type=float, default=0.2,
                   help="pause after each PyTorch / Keras repeat, so their spinning threads never overlap "
                        "the next system (seconds; default 0.2)")
    p.add_argument("--out", default=HERE, help="folder for RESULTS.md and results.json")
    args = p.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    args.groups = set(g for g in args.systems.split(",") if g)
    if unknown or args.groups - set(GROUPS):
        p.error(f"unknown workloads {unknown} or systems {sorted(args.groups - set(GROUPS))}")
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.max_repeats = max(args.repeats, args.max_repeats or (5 if args.quick else 25))
    args.repeat_seconds = args.repeat_seconds or (0.02 if args.quick else 0.1)
    return args


def optional_frameworks(groups: set) -> tuple[dict, dict]:
    """Which optional workers to start, and why the others are missing."""
    wanted, missing = {}, {}
    checks = {"torch": ("torch",), "keras": ("keras", "tensorflow")}
    for framework, modules in checks.items():
        if framework not in groups:
            continue
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        if absent:
            missing[framework] = f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
        else:
            wanted[framework] = True
    return wanted, missing


def main(argv=None):
    import procs
    import report
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started, snapshot = time.perf_counter(), cpu_snapshot()
    optional, missing = optional_frameworks(args.groups)
    log_dir = tempfile.mkdtemp(prefix="bf-bench-logs-")
    workers = {"jax": Worker("jax", log_dir)}
    workers.update({framework: Worker(framework, log_dir) for framework in optional})   # start in parallel
    for framework in list(workers):
        try:
            workers[framework].wait_ready()
        except RuntimeError as e:
            if framework == "jax":
                raise
            missing[framework] = f"worker failed to start: {str(e)[-300:]}"
            del workers[framework]
    results = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "quick": args.quick,
               "repeats": args.repeats, "max_repeats": args.max_repeats, "rounds_seconds": args.rounds_seconds,
               "repeat_seconds": args.repeat_seconds, "missing": missing,
               "machine": machine_info(workers), "systems": [], "floor_checks": {}, "profiles": [], "errors": []}
    emit({"event": "machine", **results["machine"], "missing": missing})
    try:
        for name in args.workloads:
            results["systems"] += time_workload(name, workers, args, results["errors"])
            if "floor" in args.groups and "batchfit" in args.groups:
                results["floor_checks"][name] = workers["jax"].request("floor_check", workload=name, quick=args.quick)
                emit({"event": "floor_check", "workload": name, **results["floor_checks"][name]})
        if "shuffle" in args.groups:
            sizes = sorted({WORKLOADS[w].samples(args.quick) for w in args.workloads})
            results["permutation_costs"] = workers["jax"].request("permutation_costs", sizes=sizes,
                                                                  repeats=args.repeats)
            emit({"event": "permutation_costs", **results["permutation_costs"]})
        if "profile" in args.groups and "batchfit" in args.groups:
            for name, what in (("seed1", "fit_shuffle"), ("seed2", "fit_shuffle"), ("seed2", "tob_read")):
                if name in args.workloads:
                    calls = {"fit_shuffle": 20 if args.quick else 100, "tob_read": 500 if args.quick else 3000}[what]
                    if name == "seed2" and what == "fit_shuffle":
                        calls //= 10
                    prof = workers["jax"].request("profile", workload=name, quick=args.quick, what=what,
                                                  calls=calls, top=12)
                    results["profiles"].append({"workload": name, **prof})
                    emit({"event": "profile", "workload": name, "what": what,
                          "total_us_per_call": prof["total_us_per_call"]})
        if "input" in args.groups and "batchfit" in args.groups:
            results["input"] = workers["jax"].request("input_throughput", repeats=3 if args.quick else 7)
            emit({"event": "input", **results["input"]})
    finally:
        for worker in workers.values():
            worker.close()
    if "procs" in args.groups:
        n = 1 if args.quick else 5
        # Per workload, batchfit's first fit and the floor's first epoch: 3 rounds (heavy's pair of
        # processes takes about 10 s); the cache's rounds, on seed1 only, are shorter.
        results["first_fit"] = procs.first_fit(n, 1 if args.quick else 3, args.workloads, emit, args.quick)
        results["jobs"] = procs.jobs(n, "keras" in optional and not args.quick, emit, args.quick)
        results["rss"] = procs.rss(emit)
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["load_during_run"] = other_load(snapshot, cpu_snapshot())
    results["targets"] = report.targets(results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    markdown = report.markdown(results)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(markdown)
    print(report.table(results))
    emit({"event": "done", "elapsed_s": results["elapsed_s"], "out": args.out})


if __name__ == "__main__":
    main()
