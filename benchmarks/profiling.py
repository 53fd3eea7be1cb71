"""Where batchfit's host time goes: cProfile over repeated fit / train_on_batch calls.

Times are per call of the profiled entry point (per fit call, or per train_on_batch
call), in microseconds of host time; cProfile slows Python code down, so read them as
shares, not as absolute costs. Device work shows up as time inside the jitted call or
inside the first host read that waits for it.
"""

from __future__ import annotations

import cProfile
import pstats

from workloads import Workload, batchfit_model, make_data


def _label(func) -> str:
    filename, line, name = func
    for marker in ("/batchfit/", "/jax/", "/jaxlib/", "/numpy/", "/flax/", "/optax/"):
        if marker in filename:
            return f"{marker.strip('/')}/{filename.split(marker, 1)[1]}:{line}({name})"
    return f"{filename.rsplit('/', 1)[-1]}:{line}({name})" if filename != "~" else name


def _rows(stats, keys, per):
    return [{"function": _label(f), "ncalls_per_call": stats.stats[f][1] / per,
             "tottime_us": 1e6 * stats.stats[f][2] / per, "cumtime_us": 1e6 * stats.stats[f][3] / per}
            for f in keys]


def profile(w: Workload, quick: bool, what: str, calls: int, top: int) -> dict:
    """cProfile `calls` warm calls of `what` ("fit_shuffle", "fit_noshuffle", "tob_read", "tob").

    Returns the top functions by own time, and batchfit's own functions by cumulative time.
    """
    import jax

    x, y = make_data(w, quick)
    model = batchfit_model(w)
    if what.startswith("fit"):
        shuffle = what == "fit_shuffle"

        def call():
            return model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0, shuffle=shuffle)
    else:
        read = what == "tob_read"
        xb, yb = x[:w.batch_size], y[:w.batch_size]

        def call():
            loss = model.train_on_batch(xb, yb)
            if read:
                float(loss)
            return loss
    for _ in range(3):
        jax.block_until_ready(call())
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_own = sorted(stats.stats, key=lambda f: -stats.stats[f][2])[:top]
    ours = [f for f in stats.stats if "/batchfit/" in f[0]]
    by_cum = sorted(ours, key=lambda f: -stats.stats[f][3])[:top]
    total = sum(v[2] for v in stats.stats.values())
    return {"what": what, "calls": calls, "total_us_per_call": 1e6 * total / calls,
            "top_own_time": _rows(stats, by_own, calls), "batchfit_cumulative": _rows(stats, by_cum, calls)}
