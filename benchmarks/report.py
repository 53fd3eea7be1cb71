"""Turn run.py's results into the targets of issue 20, the console table and RESULTS.md."""

from __future__ import annotations

import json
import pathlib

from workloads import WORKLOADS

HERE = pathlib.Path(__file__).parent

NAMES = {
    "floor": "floor: jit(lax.scan) per epoch, contiguous rows",
    "floor_slices": "floor variant: dynamic_slice per batch",
    "bf_fit": "batchfit fit, epochs=1 per call",
    "bf_fit_device": "batchfit fit, epochs=1 per call, jax-array x/y",
    "bf_fit_epochs": "batchfit fit(epochs=R), per epoch",
    "bf_fit_spe1": "batchfit fit, steps_per_execution=1",
    "jit_loop_read": "hand jit(step) loop, float(loss) each step",
    "jit_loop": "hand jit(step) loop, loss not read",
    "bf_tob_read": "batchfit train_on_batch loop, float(loss) each step",
    "bf_tob": "batchfit train_on_batch loop, loss not read",
    "torch_loop": "PyTorch eager loop (randperm order), default threads",
    "torch_loop_1thread": "PyTorch eager loop (randperm order), 1 thread",
    "keras_fit": "Keras-TF fit, epochs=1 per call",
    "keras_fit_epochs": "Keras-TF fit(epochs=R), per epoch",
    "keras_tob": "Keras-TF train_on_batch loop (returns a float)",
}
MAIN_WORKLOADS = ("seed1", "seed2", "mlp")


def _base(key: str) -> str:
    return key.split("[")[0]


def _name(key: str) -> str:
    base = _base(key)
    if base.startswith("floor_shuffle:"):
        return "floor + shuffle: " + base.split(":", 1)[1]
    return NAMES.get(base, base)


def references(results) -> dict:
    """Per workload: the fastest unshuffled and shuffled floors (and which they are), Keras fit."""
    refs = {}
    for s in results["systems"]:
        r = refs.setdefault(s["workload"], {})
        if s["key"] in ("floor[noshuffle]", "floor_slices[noshuffle]"):
            if s["us_per_step"] < r.get("floor", float("inf")):
                r["floor"], r["floor_key"] = s["us_per_step"], s["key"]
        elif s["key"].startswith("floor_shuffle:"):
            if s["us_per_step"] < r.get("floor_shuffle", float("inf")):
                r["floor_shuffle"], r["floor_shuffle_option"] = s["us_per_step"], _base(s["key"]).split(":", 1)[1]
        elif s["key"] == "keras_fit[shuffle]":
            r["keras_fit"] = s["us_per_step"]
    return refs


def _ratios(results):
    refs = references(results)
    for s in results["systems"]:
        r = refs.get(s["workload"], {})
        floor = r.get("floor_shuffle") if s.get("shuffle") else r.get("floor")
        s["x_floor"] = s["us_per_step"] / floor if floor else None
        s["x_keras_fit"] = s["us_per_step"] / r["keras_fit"] if r.get("keras_fit") else None
        s["keras_fit_speedup"] = r["keras_fit"] / s["us_per_step"] if r.get("keras_fit") else None
    return refs


def _paired(results, workload, key, ref_key):
    """The median over rounds of this system's time over the reference's time in the same round."""
    a, b = (next((s["repeat_s"] for s in results["systems"] if s["workload"] == workload and s["key"] == k), None)
            for k in (key, ref_key))
    if not a or not b or len(a) != len(b):
        return None
    sa = next(s["steps"] for s in results["systems"] if s["workload"] == workload and s["key"] == key)
    sb = next(s["steps"] for s in results["systems"] if s["workload"] == workload and s["key"] == ref_key)
    ratios = sorted((x / sa) / (y / sb) for x, y in zip(a, b))
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])


def _get(results, workload, key, field="us_per_step"):
    return next((s[field] for s in results["systems"] if s["workload"] == workload and s["key"] == key), None)


def _target(rows, name, value, limit, lower_is_better=True, unit="x", note="", kind="", workload=""):
    met = None if value is None else (value <= limit if lower_is_better else value >= limit)
    rows.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": met,
                 "comparison": "<=" if lower_is_better else ">=", "note": note, "kind": kind, "workload": workload})


# Issue 20's limits, per workload: fit(epochs=R) per epoch and fit(x, y, epochs=1) per call against
# the floor of the same order, the train_on_batch loop (loss read) against the jit(step) loop, and
# the first fit call in a fresh process against the floor's first epoch (cache off).
FIT_EPOCHS_LIMITS = {"seed1": 1.15, "seed2": 1.15, "mlp": 1.05, "heavy": 1.05}
FIT_CALL_LIMITS = {"seed2": 1.15, "seed1": 1.6}
TRAIN_ON_BATCH_LIMITS = {"seed2": 1.3, "seed1": 1.5}
FIRST_FIT_LIMIT, WARM_FIRST_FIT_S, EXAMPLE_LIMIT, GENERATOR_LIMIT, RSS_PERCENT = 1.3, 0.5, 1.2, 0.8, 5.0
ORDERS = (("noshuffle", "in order", "floor"), ("shuffle", "shuffled", "floor_shuffle"))
ORDERS_REF = [(tag, ref) for tag, _, ref in ORDERS]


def _floor_key(refs, w, tag):
    return refs[w]["floor_key"] if tag == "noshuffle" else f"floor_shuffle:{refs[w]['floor_shuffle_option']}[shuffle]"


def _paired_runs(a, b, field_a, field_b):
    """The median over rounds of a's value over b's in the same round (fresh-process runs)."""
    if not a or not b or len(a) != len(b):
        return None
    ratios = sorted(x[field_a] / y[field_b] for x, y in zip(a, b))
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])


def targets(results) -> list[dict]:
    """Every target of issue 20 that this run measured, with its value and whether it is met."""
    refs, rows = _ratios(results), []
    fit_rows = (("bf_fit_epochs", FIT_EPOCHS_LIMITS, "fit(epochs=R) per epoch", "fit_epochs"),
                ("bf_fit", FIT_CALL_LIMITS, "fit(x, y, epochs=1) per call", "fit_call"))
    for key, limits, what, kind in fit_rows:
        for w, limit in limits.items():
            for tag, order, ref in ORDERS:
                bf, floor = _get(results, w, f"{key}[{tag}]"), refs.get(w, {}).get(ref)
                if bf and floor:
                    paired = _paired(results, w, f"{key}[{tag}]", _floor_key(refs, w, tag))
                    _target(rows, f"{w}: {what}, {order} / floor", bf / floor, limit,
                            note=f"{_fmt(bf)} vs {_fmt(floor)} us/step; per-round ratio {_fmt(paired)}",
                            kind=kind, workload=w)
    for w, limit in TRAIN_ON_BATCH_LIMITS.items():
        bf, hand = _get(results, w, "bf_tob_read"), _get(results, w, "jit_loop_read")
        if bf and hand:
            _target(rows, f"{w}: train_on_batch loop / jit(step) loop, loss read each step", bf / hand, limit,
                    note=f"{_fmt(bf, 1)} vs {_fmt(hand, 1)} us/step; per-round ratio "
                         f"{_fmt(_paired(results, w, 'bf_tob_read', 'jit_loop_read'))}",
                    kind="train_on_batch", workload=w)
    ff = results.get("first_fit", {})
    for w, modes in ff.items():
        if "cache_off" in modes and "floor" in modes:
            bf, floor = modes["cache_off"]["median_first_fit_s"], modes["floor"]["median_first_epoch_s"]
            paired = _paired_runs(modes["cache_off"]["runs"], modes["floor"]["runs"], "first_fit_s", "first_epoch_s")
            _target(rows, f"{w}: first fit call, fresh process, cache off / floor's first epoch", bf / floor,
                    FIRST_FIT_LIMIT, note=f"{bf:.2f} vs {floor:.2f} s (median of {len(modes['floor']['runs'])}); "
                    f"per-round ratio {_fmt(paired)}; outside the timings: build + compile() "
                    f"{modes['cache_off']['median_build_compile_s']:.3f} s, the floor's build "
                    f"{modes['floor']['median_build_s']:.3f} s", kind="first_fit", workload=w)
    warm = ff.get("seed1", {}).get("cache_warm")
    if warm:
        cold = ff["seed1"].get("cache_cold")
        _target(rows, "seed1: first fit call, second process, cache warm", warm["median_first_fit_s"],
                WARM_FIRST_FIT_S, unit="s", note=f"import jax + batchfit: {warm['median_import_s']:.2f} s (not in "
                "the target)" + (f"; cold cache (cache written): {cold['median_first_fit_s']:.2f} s" if cold else ""),
                kind="first_fit_warm", workload="seed1")
    jobs = results.get("jobs", {})
    hand = jobs.get("hand-written JAX", {}).get("median_wall_s")
    for mode in ("batchfit (cache off)", "batchfit (cache cold: first run)", "batchfit (cache warm: next runs)"):
        if hand and mode in jobs:
            bf = jobs[mode]["median_wall_s"]
            _target(rows, f"python example.py, {mode} / hand-written JAX", bf / hand, EXAMPLE_LIMIT,
                    note=f"{bf:.2f} vs {hand:.2f} s", kind="example", workload="seed1")
    source = results.get("input")
    if source:
        from input import ARRAYS, GENERATOR
        gen, arrays = source["throughput"][GENERATOR], source["throughput"][ARRAYS]
        _target(rows, "seed2: generator of NumPy batches / the arrays in memory, steps/s",
                gen["ratio_to_fused_median"], GENERATOR_LIMIT, lower_is_better=False,
                note=f"{_fmt(gen['steps_per_s_median'], 0)} vs {_fmt(arrays['steps_per_s_median'], 0)} steps/s "
                     f"(medians); the value is the median of {source['repeats']} per-round ratios; "
                     f"{source['samples']:,} samples, batch 32, {source['epochs']} epoch(s) per fit call",
                kind="input", workload="seed2")
    rss = results.get("rss")
    if rss:
        for k, v in rss["growth"].items():
            if "not growth" not in k:
                _target(rows, f"RSS growth, {k}", 100 * v, RSS_PERCENT, unit="%", kind="rss", workload="seed1")
    return rows


def _fmt(v, digits=2):
    if v is None:
        return ""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _met(t):
    if t["met"] is False:
        return f"**missed** by {100 * abs(t['value'] / t['limit'] - 1):.0f}%"
    return {True: "met", None: "n/a"}[t["met"]]


def table(results) -> str:
    """The main table, one row per (workload, system), as Markdown."""
    _ratios(results)
    lines = ["| workload | system | order | us/step | spread | steps/s | x floor | Keras fit / this | first call (s) "
             "| calls x repeats |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results["systems"]:
        if s["key"].startswith("floor_shuffle:") and s["us_per_step"] != references(results)[s["workload"]].get(
                "floor_shuffle"):
            continue                         # the other shuffle options have their own table
        order = {True: "shuffled", False: "in order", None: "in order"}[s.get("shuffle")]
        spread = (s["us_per_step_max"] - s["us_per_step_min"]) / s["us_per_step"]
        lines.append(f"| {s['workload']} | {_name(s['key'])} | {order} | {_fmt(s['us_per_step'])} | "
                     f"{100 * spread:.0f}% | {_fmt(s['steps_per_s'], 0)} | {_fmt(s['x_floor'])} | "
                     f"{_fmt(s['keras_fit_speedup'], 1)} | "
                     f"{_fmt(s['first_call_s'], 3)} | {s['calls_per_repeat']} x {len(s['repeat_s'])} |")
    return "\n".join(lines)


def _targets_md(results):
    lines = ["| target | measured | limit | verdict | detail |", "|---|---:|---:|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'], 3)} {t['unit']} | {t['comparison']} {t['limit']} "
                     f"{t['unit']} | {_met(t)} | {t['note']} |")
    return "\n".join(lines)


def _shuffle_md(results):
    refs = references(results)
    lines = ["| workload | ordering | us/step | x unshuffled floor |", "|---|---|---:|---:|"]
    for s in results["systems"]:
        if s["key"].startswith(("floor[", "floor_slices", "floor_shuffle:")):
            floor = refs[s["workload"]].get("floor")
            r = refs[s["workload"]]
            best = (" (fastest: the shuffled floor)" if s["us_per_step"] == r.get("floor_shuffle") else
                    " (fastest: the floor)" if s["key"] == r.get("floor_key") else "")
            lines.append(f"| {s['workload']} | {_name(s['key'])}{best} | {_fmt(s['us_per_step'])} | "
                         f"{_fmt(s['us_per_step'] / floor if floor else None)} |")
    costs = results.get("permutation_costs")
    if costs:
        sizes = list(costs)
        lines += ["", "One epoch's permutation alone (median ms, after a warm-up):", "",
                  "| method | " + " | ".join(f"n = {n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for method in costs[sizes[0]]:
            lines.append(f"| {method} | " + " | ".join(_fmt(1e3 * costs[n][method], 3) for n in sizes) + " |")
    return "\n".join(lines)


def _decomposition_md(results):
    refs = references(results)
    lines = ["Per fit call (one epoch), microseconds. `input` = NumPy x/y minus jax-array x/y (host checks, "
             "conversion, host-to-device copy); `per call` = jax-array x/y per call minus one epoch inside "
             "fit(epochs=R) (argument checks, setup, callbacks, history, host reads); `engine` = one epoch "
             "inside fit(epochs=R) minus the floor's epoch (what the compiled epoch and the per-epoch driver "
             "add: the shuffle, the per-batch slicing, accumulators). Each term is a difference of medians, so terms "
             "smaller than the rows' spread (main table) are noise and can come out negative.", "",
             "| workload | order | floor | fit per call | excess | input | per call | engine |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for w in dict.fromkeys(s["workload"] for s in results["systems"]):
        steps = next(s["steps"] for s in results["systems"] if s["workload"] == w)
        for tag, ref in (("noshuffle", "floor"), ("shuffle", "floor_shuffle")):
            vals = [_get(results, w, f"{k}[{tag}]") for k in ("bf_fit", "bf_fit_device", "bf_fit_epochs")]
            floor = refs.get(w, {}).get(ref)
            if None in vals or floor is None:
                continue
            fit, device, epochs = (v * steps for v in vals)
            floor *= steps
            lines.append(f"| {w} | {tag} | {_fmt(floor, 0)} | {_fmt(fit, 0)} | {_fmt(fit - floor, 0)} | "
                         f"{_fmt(fit - device, 0)} | {_fmt(device - epochs, 0)} | {_fmt(epochs - floor, 0)} |")
    return "\n".join(lines)


def _profiles_md(results):
    parts = []
    for p in results.get("profiles", []):
        parts += [f"**{p['workload']}, {p['what']}** ({p['calls']} calls under cProfile; "
                  f"{_fmt(p['total_us_per_call'], 0)} us of profiled host time per call). A jitted call's C++ "
                  "dispatch (argument flattening, transfers, launch) counts as own time of its Python caller; "
                  "`_value` is a host read waiting for the device.", "",
                  "| function (own time) | calls/call | own us/call | cum us/call |", "|---|---:|---:|---:|"]
        parts += [f"| `{r['function']}` | {_fmt(r['ncalls_per_call'], 1)} | {_fmt(r['tottime_us'], 1)} | "
                  f"{_fmt(r['cumtime_us'], 1)} |" for r in p["top_own_time"]]
        parts += ["", "| batchfit function (cumulative) | calls/call | own us/call | cum us/call |",
                  "|---|---:|---:|---:|"]
        parts += [f"| `{r['function']}` | {_fmt(r['ncalls_per_call'], 1)} | {_fmt(r['tottime_us'], 1)} | "
                  f"{_fmt(r['cumtime_us'], 1)} |" for r in p["batchfit_cumulative"]]
        parts.append("")
    return "\n".join(parts)


FIRST_FIT_MODES = {"cache_off": "batchfit, cache off", "floor": "hand-written floor, no cache",
                   "cache_cold": "batchfit, cache cold (written)", "cache_warm": "batchfit, cache warm (2nd process)"}


def _procs_md(results):
    lines = []
    ff = results.get("first_fit")
    if ff:
        lines += ["First call in a fresh process (medians; seconds). batchfit: build and `compile()` the model, then "
                  "its first `fit(x, y, epochs=1)` (NumPy x/y, shuffled) and a second one. The floor (procs.py, "
                  "without batchfit): NumPy weights and its step function with its dropout keys (`build`), then "
                  "its first epoch (the weights, Adam's zeros and x/y to the device in copies, trace, compile, one "
                  "jit(lax.scan) epoch shuffled by a host permutation, the losses on the host) and a second one. "
                  "Cache off: BATCHFIT_COMPILATION_CACHE=0 and no JAX cache dir. The backend's start-up "
                  "(`jax.devices()`, milliseconds) comes before `build` in both.", "",
                  "| workload | system, cache | runs | import jax | + import batchfit | build (+ compile()) "
                  "| first fit / epoch | second | process wall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for w, modes in ff.items():
            for mode, v in sorted(modes.items(), key=lambda kv: list(FIRST_FIT_MODES).index(kv[0])):
                first = v.get("median_first_fit_s", v.get("median_first_epoch_s"))
                second = v.get("median_second_fit_s", v.get("median_second_epoch_s"))
                build = v.get("median_build_compile_s", v.get("median_build_s"))
                lines.append(f"| {w} | {FIRST_FIT_MODES[mode]} | {len(v['runs'])} | "
                             f"{_fmt(v.get('median_import_jax_s'))} | "
                             f"{_fmt(v.get('median_import_batchfit_after_jax_s'))} | {_fmt(build, 3)} | "
                             f"{_fmt(first, 3)} | {_fmt(second, 4)} | {_fmt(v['median_process_wall_s'])} |")
    jobs = results.get("jobs")
    if jobs:
        lines += ["", "The whole first-article job, `python <job>.py` from process start to exit (batchfit: "
                  "examples/seed1_fit.py; the others: benchmarks/jobs/; "
                  "median seconds):", "", "| job | wall (s) | runs |", "|---|---:|---:|"]
        for mode, v in jobs.items():
            lines.append(f"| {mode} | {_fmt(v['median_wall_s'])} | "
                         f"{', '.join(_fmt(r['wall_s']) for r in v['runs'])} |")
    rss = results.get("rss")
    if rss:
        lines += ["", "Process RSS (MiB), first article's model, cache off: after building, after one warm-up fit "
                  "call (compiles fit), over 2000 train_on_batch calls (loss read), then over 50 fit calls:", "",
                  "| point | RSS MiB |", "|---|---:|"]
        lines += [f"| {k} | {v / 2**20:.1f} |" for k, v in rss["rss_bytes"].items()]
    return "\n".join(lines)


def _spread(results, w, key):
    s = next((s for s in results["systems"] if s["workload"] == w and s["key"] == key), None)
    return f"{100 * (s['us_per_step_max'] - s['us_per_step_min']) / s['us_per_step']:.0f}%" if s else "?"


def _missed_md(results):
    """For each missed target, where the time goes, from this run's decomposition and profiles."""
    refs, lines = references(results), []
    for t in results["targets"]:
        if t["met"] is not False:
            continue
        name, w, kind = t["target"], t["workload"], t["kind"]
        tag = "shuffle" if "shuffled" in name else "noshuffle"
        if kind == "fit_epochs":
            steps = next(s["steps"] for s in results["systems"] if s["workload"] == w)
            epochs, floor = _get(results, w, f"bf_fit_epochs[{tag}]") * steps, refs[w][dict(ORDERS_REF)[tag]] * steps
            lines.append(f"- {name}: {_fmt(epochs - floor, 0)} us per epoch over the floor's {_fmt(floor, 0)} "
                         "(what the compiled epoch and the per-epoch driver add: the shuffle, the per-batch slicing, "
                         f"accumulators); spread of the rows: batchfit {_spread(results, w, f'bf_fit_epochs[{tag}]')}, "
                         f"floor {_spread(results, w, _floor_key(refs, w, tag))}.")
        elif kind == "fit_call":
            steps = next(s["steps"] for s in results["systems"] if s["workload"] == w)
            vals = [_get(results, w, f"{k}[{tag}]") for k in ("bf_fit", "bf_fit_device", "bf_fit_epochs")]
            floor = refs[w][dict(ORDERS_REF)[tag]]
            if None in vals:
                lines.append(f"- {name}: {_fmt((vals[0] - floor) * steps, 0)} us per fit call over the floor's "
                             f"{_fmt(floor * steps, 0)}"
                             + (f", of which {_fmt((vals[2] - floor) * steps, 0)} inside the epoch "
                                "(fit(epochs=R) per epoch minus the floor)" if vals[2] else "")
                             + " (run the full suite for the whole split).")
            else:
                fit, device, epochs = (v * steps for v in vals)
                floor *= steps
                lines.append(f"- {name}: {_fmt(fit - floor, 0)} us per fit call over the floor's "
                             f"{_fmt(floor, 0)}: NumPy input handling {_fmt(fit - device, 0)}, per-call "
                             f"fixed cost {_fmt(device - epochs, 0)}, inside the epoch {_fmt(epochs - floor, 0)}.")
        elif kind == "train_on_batch":
            prof = next((p for p in results.get("profiles", []) if p["what"] == "tob_read"), None)
            hand = _get(results, w, "jit_loop_read")
            text = f"- {name}: {_fmt(hand * t['value'] - hand, 1)} us per call over the hand-written loop."
            if prof and w == prof["workload"]:
                top = ", ".join(f"`{r['function']}` {_fmt(r['tottime_us'], 1)} us" for r in prof["top_own_time"][:4])
                text += f" cProfile ({prof['workload']}, loss read): {top} (own time per call, under the profiler)."
            lines.append(text)
        elif kind == "first_fit":
            bf, floor = results["first_fit"][w]["cache_off"], results["first_fit"][w]["floor"]
            lines.append(f"- {name}: batchfit's first fit {bf['median_first_fit_s']:.2f} s, its second "
                         f"{bf['median_second_fit_s']:.3f} s (so about "
                         f"{bf['median_first_fit_s'] - bf['median_second_fit_s']:.2f} s of tracing, compiling and "
                         f"first-call setup); the floor's first epoch {floor['median_first_epoch_s']:.2f} s, its "
                         f"second {floor['median_second_epoch_s']:.3f} s (about "
                         f"{floor['median_first_epoch_s'] - floor['median_second_epoch_s']:.2f} s).")
        elif kind == "first_fit_warm":
            ff = results["first_fit"]["seed1"]["cache_warm"]
            lines.append(f"- {name}: import jax + batchfit {ff['median_import_s']:.2f} s (not in the target), "
                         f"build + compile() {ff['median_build_compile_s']:.3f} s, first fit "
                         f"{ff['median_first_fit_s']:.2f} s: trace + cache load of the fit step.")
        elif kind == "example" and results.get("first_fit", {}).get("seed1"):
            mode = "cache_warm" if "warm" in name else "cache_cold" if "cold" in name else "cache_off"
            seed1 = results["first_fit"]["seed1"]
            ff = seed1.get(mode) or seed1.get("cache_off") or seed1["cache_warm"]
            lines.append(f"- {name}: {t['note']}; in a fresh process ({mode}) import jax takes "
                         f"{_fmt(ff.get('median_import_jax_s'))} s, import batchfit on top "
                         f"{_fmt(ff.get('median_import_batchfit_after_jax_s'))} s, the first fit call "
                         f"{_fmt(ff['median_first_fit_s'])} s; the hand-written job imports jax and NumPy only.")
        elif kind == "input":
            from input import ARRAYS, GENERATOR
            rates = results["input"]["throughput"]
            lines.append(f"- {name}: steps/s per round, the generator {rates[GENERATOR]['steps_per_s_all']}, "
                         f"the arrays {rates[ARRAYS]['steps_per_s_all']}.")
        else:
            lines.append(f"- {name}: {_fmt(t['value'], 3)} {t['unit']} against {t['limit']} {t['unit']}.")
    return "\n".join(lines) if lines else "Every measured target is met."


def markdown(results) -> str:
    """RESULTS.md: how it was run, the targets, the table, the shuffle study, the processes, the profiles."""
    m = results["machine"]
    machine = [f"- {k}: {v}" for k, v in m.items() if not isinstance(v, dict)]
    machine += [f"- {k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in m.items()
                if isinstance(v, dict) and k != "load_during_run"]
    load = m.get("load_during_run")
    if load:
        machine.append(f"- other processes during the run: {load['other_processes_cpu_s']:.0f} CPU-s in "
                       f"{load['wall_s']:.0f} s of wall time = {100 * load['other_processes_share_of_machine']:.0f}% "
                       f"of the machine; load average {load['loadavg_start'][0]:.2f} at start, "
                       f"{load['loadavg_end'][0]:.2f} at the end")
    missing = [f"- {k}: not measured: {v}" for k, v in results["missing"].items()]
    checks = [f"- {w}: " + (f"max |weight diff| {c['max_abs_weight_diff']:.2e}, max |batch loss diff| "
                            f"{c['max_abs_batch_loss_diff']:.2e} after one unshuffled epoch of "
                            f"{c.get('num_batches', '?')} batches from the same weights"
                            if c["checked"] else f"not compared ({c['why']})")
              for w, c in results["floor_checks"].items()]
    workloads = [f"- **{w.name}**: {w.title}; {w.samples(results['quick'])} samples" for w in WORKLOADS.values()
                 if any(s["workload"] == w.name for s in results["systems"])]
    return "\n".join([
        "# batchfit benchmarks", "",
        f"Generated by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min"
        + (" (**--quick**: smaller data, fewer repeats)" if results["quick"] else "") + ". "
        "Each framework runs in its own worker process; per workload every system's first call (trace + "
        "compile) is timed apart, warm-up calls then fix how many calls make one timed repeat, and the repeats go "
        "round-robin over all systems (starting one system later each round), so machine noise hits all alike; "
        "the JAX systems' rounds first, then PyTorch's and Keras's (right after a Keras call, the JAX systems ran "
        "up to 1.6x slower). "
        f"Numbers are medians over the repeats (at least {results['repeats']} per system; a workload whose rounds "
        f"are short gets more, up to {results.get('max_repeats', results['repeats'])}, while they take at most "
        f"{results.get('rounds_seconds', 0):.0f} s). Fit-like rows time `fit(x, y, epochs=1)` per call with NumPy x/y "
        "(what a user calls); `fit(epochs=R)` rows divide one call by R (R = the calls per repeat, at least 3); "
        "**the targets use both**, each against the floor of the same order. The floor "
        "keeps x/y on the device and ends every epoch call with its losses on the host. `x floor`: this row over "
        "the floor of the same order (in order: the faster unshuffled floor variant; shuffled: the fastest "
        "shuffled floor). "
        "`Keras fit / this`: how many times faster than Keras-TF `fit(epochs=1)` per call, shuffled. `spread`: "
        "(slowest - fastest repeat) / median. Targets also show the median of per-round ratios (both systems "
        "timed seconds apart in each round), which shrugs off slow drifts in machine load. Per-batch "
        "loops time a pass over the first batches of the data (`steps` in results.json).",
        "", "## Machine", "", *machine, *missing, "", "## Workloads", "", *workloads,
        "", "## Targets (issue 20)", "", _targets_md(results), "", "Missed targets, where the time goes:", "",
        _missed_md(results),
        "", "## All systems", "", table(results),
        "", "## Shuffled floor: the options", "", _shuffle_md(results),
        "", "## Process-level measurements", "", _procs_md(results),
        "", "## Where batchfit's fit time goes", "", _decomposition_md(results), "", _profiles_md(results),
        "## Does the floor do batchfit's arithmetic?", "", *checks, "",
        kept_paths_section(HERE / "kept_paths.json"), "",
        recurrent_section(HERE / "recurrent.json"), "",
        input_section(HERE / "input.json"),
    ])


KEPT_HEADING = "## Special paths kept (issue 20: each must buy 5% on a figure a user sees)"

# What issue 20 folded into the one fit path, and why each is gone; the kept ones are measured below.
DELETED = [
    "the quiet fit loop (`run_quiet`, `QuietPlan`) and its lazy History: one loop for every fit",
    "the replay of the last call (`_Repeat`, `SeenArrays`) and `Stage` with its aliased aligned buffers",
    "the quick value tests of `train_on_batch` and the device-side value checks with `DataRefused`: each "
    "value rule is one host function",
    "the seed drawn one call ahead and the garbage-collector pause at import (a process-wide setting)",
    "the device-int cache (chunk offsets and zero totals as device arrays made once): with epoch e's logs read "
    "once epoch e + 1 is dispatched, it bought 1.01x on seed1's fit(epochs=20) per epoch and 1.01x per call "
    "(`python benchmarks/kept_paths.py`, before its removal), below 5%",
]


def kept_paths_section(path) -> str:
    """The A/B of each special path kept (benchmarks/kept_paths.py writes kept_paths.json)."""
    lines = [KEPT_HEADING, "", "Deleted:", "", *[f"- {d}" for d in DELETED], ""]
    if not path.exists():
        return "\n".join(lines + ["Kept paths not measured yet: run `python benchmarks/kept_paths.py`."])
    kept = json.loads(path.read_text())
    lines += [f"Kept, each timed with and without it by `{kept['command']}` ({kept['rounds']} alternating rounds; "
              "`without / with` is the median per-round ratio, above 1.05 where the path buys 5%):", "",
              "| path | figure | with | without | without / with |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['figure']} | {r['with_us']:,.1f} us | {r['without_us']:,.1f} us | "
              f"{r['without_over_with']:.3f} |" for r in kept["rows"]]
    return "\n".join(lines)


RECURRENT_HEADING = "## Recurrent workload (issue 22)"


def recurrent_section(path) -> str:
    """The LSTM text classifier against its hand-written floor (benchmarks/recurrent.py writes recurrent.json)."""
    if not path.exists():
        return f"{RECURRENT_HEADING}\n\nNot measured yet: run `python benchmarks/recurrent.py`."
    r = json.loads(path.read_text())
    rows = [f"| {name} | {seconds * 1e3:,.1f} ms |" for name, seconds in r["median_s"].items()]
    return "\n".join([RECURRENT_HEADING, "", f"`python benchmarks/recurrent.py`: {r['workload']}; {r['repeats']} "
                      "repeats alternating between the two, medians; the floor starts from batchfit's initial "
                      "weights and computes the same losses.", "", "| system | per epoch |", "|---|---:|", *rows, "",
                      f"fit per epoch / floor: **{r['ratio']:.3f} x** (limit 1.15 x); devices {r['devices']}."])


def refresh_recurrent_section(results_md: pathlib.Path, recurrent_json: pathlib.Path) -> None:
    """Put the recurrent section (from `recurrent_json`) into RESULTS.md, before the input section."""
    if not results_md.exists():
        return
    text = results_md.read_text()
    head, rest = (text.split(RECURRENT_HEADING, 1) if RECURRENT_HEADING in text else (text, ""))
    tail = INPUT_HEADING + text.split(INPUT_HEADING, 1)[1] if INPUT_HEADING in text else ""
    if not rest:
        head = text.split(INPUT_HEADING)[0]
    results_md.write_text(f"{head.rstrip()}\n\n{recurrent_section(recurrent_json)}\n\n{tail}")


def refresh_section(results_md: pathlib.Path, heading: str, section: str) -> None:
    """Put `section` (which starts with `heading`) into RESULTS.md in place of its old text, or before the
    input section when it is new."""
    if not results_md.exists():
        return
    text = results_md.read_text()
    if heading in text:
        head, rest = text.split(heading, 1)
        tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
    else:
        head, tail = text.split(INPUT_HEADING, 1)[0], "\n" + INPUT_HEADING + text.split(INPUT_HEADING, 1)[1]
    results_md.write_text(f"{head.rstrip()}\n\n{section}\n{tail}")


INPUT_HEADING = "## Input pipeline (issue 5)"


def refresh_input_section(results_md: pathlib.Path, input_json: pathlib.Path) -> None:
    """Replace RESULTS.md's input section (the last one) with the results in `input_json`."""
    if not results_md.exists():
        return
    text = results_md.read_text()
    head = text.split(INPUT_HEADING)[0].rstrip("\n")
    results_md.write_text(f"{head}\n\n{input_section(input_json)}")


def input_section(path) -> str:
    """The input-pipeline results (benchmarks/input.py writes input.json) as a RESULTS.md section."""
    from input import report as input_report
    if not path.exists():
        return f"{INPUT_HEADING}\n\nNot measured yet: run `python benchmarks/input.py`.\n"
    body = input_report(json.loads(path.read_text())).split("\n", 1)[1].replace("\n## ", "\n### ")
    return f"{INPUT_HEADING}\n{body}"
