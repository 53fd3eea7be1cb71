"""What a timed system is, and the JAX-side systems: batchfit's entry points and the hand-written floor.

A system is one way to train a workload. `call()` does one unit of work (one epoch for
fit-like systems, one pass over `steps` NumPy batches for per-batch loops) and returns
only when its results are on the host; `run(m)` times m units. The worker times them,
the coordinator interleaves them.
"""

from __future__ import annotations

import time

import numpy as np

from workloads import Workload, batchfit_model, make_data, num_batches

__all__ = ["System", "jax_systems", "floor_check", "permutation_costs"]


class System:
    """One timed system. kind: "fit" (call = one epoch) or "loop" (call = `steps` batches)."""

    def __init__(self, key, kind, steps, call, shuffle=None, run=None, note=""):
        self.key, self.kind, self.steps, self.shuffle, self.note = key, kind, steps, shuffle, note
        self.call, self._run = call, run

    def run(self, m: int) -> float:
        """Seconds for m units of work (m epochs or m passes)."""
        if self._run is not None:
            return self._run(m)
        start = time.perf_counter()
        for _ in range(m):
            self.call()
        return time.perf_counter() - start


def _batches(batch_size, steps):
    return [slice(i * batch_size, (i + 1) * batch_size) for i in range(steps)]


# ----- batchfit -----------------------------------------------------------------------

def _bf_fit_systems(w, x, y, xd, yd, shuffle, wanted):
    steps = num_batches(len(x), w.batch_size)
    tag = "shuffle" if shuffle else "noshuffle"
    out = []

    def add(name, make_model, data, note, multi=False):
        key = f"{name}[{tag}]"
        if key not in wanted:
            return
        model = make_model()

        def fit(epochs, model=model):
            return model.fit(*data, batch_size=w.batch_size, epochs=epochs, verbose=0, shuffle=shuffle)

        def run(m):
            start = time.perf_counter()
            if multi:
                fit(m)
            else:
                for _ in range(m):
                    fit(1)
            return time.perf_counter() - start
        out.append(System(key, "fit", steps, lambda: fit(1), shuffle, run, note))

    add("bf_fit", lambda: batchfit_model(w), (x, y), "model.fit(x, y, epochs=1) per call, NumPy x and y")
    add("bf_fit_device", lambda: batchfit_model(w), (xd, yd),
        "model.fit(x, y, epochs=1) per call, x and y already jax arrays")
    add("bf_fit_epochs", lambda: batchfit_model(w), (x, y), "one model.fit(x, y, epochs=R), time / R", multi=True)
    add("bf_fit_spe1", lambda: batchfit_model(w, steps_per_execution=1), (x, y),
        "model.fit(x, y, epochs=1) per call, compile(steps_per_execution=1)")
    return out


def _loop(step_fn, x, y, batch_size, steps, read):
    """One pass over `steps` NumPy batches; read=True converts each loss to a Python float."""
    import jax
    slices = _batches(batch_size, steps)

    def call():
        loss = None
        for sl in slices:
            loss = step_fn(x[sl], y[sl])
            if read:
                float(loss)
        jax.block_until_ready(loss)
    return call


def _bf_loop_systems(w, x, y, wanted):
    out = []
    for read in (True, False):
        key = "bf_tob_read" if read else "bf_tob"
        if key in wanted:
            model = batchfit_model(w)
            out.append(System(key, "loop", wanted[key],
                              _loop(model.train_on_batch, x, y, w.batch_size, wanted[key], read),
                              note="model.train_on_batch(xb, yb) over NumPy batches"
                                   + (", float(loss) every step" if read else ", loss not read")))
    return out


# ----- the floor ----------------------------------------------------------------------

def _floor_systems(w, x, y, xd, yd, weights, wanted):
    import baselines
    steps = num_batches(len(x), w.batch_size)
    out = []
    options = [("floor[noshuffle]", "none", False), ("floor_slices[noshuffle]", "none_dynamic_slice", False)]
    options += [(f"floor_shuffle:{opt}[shuffle]", opt, True) for opt in baselines.SHUFFLE_OPTIONS]
    for key, option, shuffle in options:
        if key not in wanted:
            continue
        epoch = baselines.epoch_fn(w, option)
        holder = {"state": baselines.init_state(weights)}
        data = (x, y) if option == "host_numpy_take" else (xd, yd)

        def call(epoch=epoch, holder=holder, data=data):
            holder["state"], losses = epoch(holder["state"], *data)
            return np.asarray(losses)          # the epoch's losses on the host, as fit's history has them
        out.append(System(key, "fit", steps, call, shuffle, note=f"one jit(lax.scan) per epoch; order: {option}"))
    for read in (True, False):
        key = "jit_loop_read" if read else "jit_loop"
        if key in wanted:
            step = baselines.jitted_step(w)
            holder = {"state": baselines.init_state(weights)}

            def step_fn(xb, yb, step=step, holder=holder):
                holder["state"], loss = step(holder["state"], xb, yb)
                return loss
            loop_n = wanted[key]
            out.append(System(key, "loop", loop_n, _loop(step_fn, x, y, w.batch_size, loop_n, read),
                              note="hand-written jit(step) over NumPy batches"
                                   + (", float(loss) every step" if read else ", loss not read")))
    return out


def jax_systems(w: Workload, quick: bool, wanted: dict) -> list[System]:
    """The JAX-side systems of `w` named in `wanted` (key -> steps for loops, None for fits)."""
    import jax.numpy as jnp
    x, y = make_data(w, quick)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    weights = batchfit_model(w).get_weights()
    systems = _floor_systems(w, x, y, xd, yd, weights, wanted)
    for shuffle in (False, True):
        systems += _bf_fit_systems(w, x, y, xd, yd, shuffle, wanted)
    systems += _bf_loop_systems(w, x, y, wanted)
    return systems


def floor_check(w: Workload, quick: bool) -> dict:
    """Does the floor do batchfit's arithmetic? One unshuffled epoch from the same weights, compared."""
    import baselines
    if w.dropout:
        return {"checked": False, "why": "dropout masks come from different RNG streams"}
    x, y = make_data(w, quick)
    # 1-ulp differences (another fusion order) can flip a ReLU thousands of steps later and
    # then the runs part ways; 512 batches show whether the arithmetic is the same.
    x, y = x[:512 * w.batch_size], y[:512 * w.batch_size]
    model = batchfit_model(w)
    weights = model.get_weights()
    history = model.fit(x, y, batch_size=w.batch_size, epochs=1, verbose=0, shuffle=False)
    state, losses = baselines.epoch_fn(w, "none")(baselines.init_state(weights), x, y)
    floor_weights = [np.asarray(v) for layer in state["params"].values() for v in (layer["kernel"], layer["bias"])]
    bf_losses = np.asarray(history.batch_history["loss"][0])
    return {"checked": True, "num_batches": num_batches(len(x), w.batch_size),
            "max_abs_weight_diff": float(max(np.max(np.abs(a - b))
                                             for a, b in zip(floor_weights, model.get_weights()))),
            "max_abs_batch_loss_diff": float(np.max(np.abs(np.asarray(losses) - bf_losses))),
            "epoch_loss_bf": float(history.history["loss"][0]),
            "epoch_loss_floor": float(np.sum(np.asarray(losses, np.float64) * _batch_sizes(len(x), w.batch_size))
                                      / len(x))}


def _batch_sizes(n, batch_size):
    sizes = np.full(num_batches(n, batch_size), batch_size, np.float64)
    if n % batch_size:
        sizes[-1] = n % batch_size
    return sizes


def permutation_costs(n: int, repeats: int) -> dict:
    """Median seconds to draw one epoch's order of n samples, per method (after a warm-up)."""
    import jax

    import baselines
    out = {}
    for name, fn in baselines.permutation_fns(n).items():
        jax.block_until_ready(fn(0))
        number = max(1, int(0.02 / max(_once(fn), 1e-6)))
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            for i in range(number):
                jax.block_until_ready(fn(r * number + i + 1))
            times.append((time.perf_counter() - start) / number)
        out[name] = float(np.median(times))
    return out


def _once(fn):
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn(12345))
    return time.perf_counter() - start
