"""The convnet workload (issue 24): Keras's MNIST convnet, ms per training step, batchfit's drivers against
a hand-written JAX floor and Keras 3 in the same run.

    python benchmarks/convnet.py [--quick] [--repeats R] [--out DIR] [--tf-python PY]   # write DIR/convnet.json
    python benchmarks/convnet.py --section [DIR/convnet.json]           # print its RESULTS.md section
    python benchmarks/convnet.py --profile [--repeats R] [--out DIR]   # ms per piece, DIR/convnet_profile.json

Model: Conv2D(32, 3x3, relu) -> MaxPooling2D(2) -> Conv2D(64, 3x3, relu) -> MaxPooling2D(2) -> Flatten ->
Dropout(0.5) -> Dense(10, softmax), categorical crossentropy, Adam, batch 128, 28x28x1 inputs (random
data of MNIST's shape, the same in every system). Systems:

* batchfit `fit` with steps_per_execution "auto", 1, and the whole epoch in one compiled loop ("loop");
  batchfit `train_on_batch` over the same batches;
* the same arithmetic by hand in JAX (Keras's Adam, the crossentropy from the logits, dropout), from
  batchfit's initial weights: one `jit(step)` per batch, one `jit(lax.scan)` per epoch, that scan of
  batchfit's loop_safe(step), and that again with batchfit's block_max pooling;
* Keras 3 on JAX (in this process), and Keras 3 on TensorFlow in a subprocess, after the others, when
  TensorFlow is importable here or `--tf-python` names the Python of a virtual environment that has it
  (it is skipped, and the JSON says so, when neither).

Every repeat times one epoch of each in-process system, in an order that rotates (the machine is
shared and noisy); the figures are medians in ms per step and ratios of medians. Nothing is
asserted about time.

--profile times each piece of the training step alone, in a compiled loop of 8 (a lax.scan of
loop_safe(piece), every input shifted by the carry so that nothing is hoisted out of the loop, every
output summed into it), the old and the new form of each rewritten piece side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, CLASSES, SHAPE = 128, 10, (28, 28, 1)


def make_data(n: int):
    """x [n, 28, 28, 1] float32 in [0, 1), y [n, 10] one-hot float32, the same in every process."""
    rng = np.random.default_rng(0)
    x = rng.random((n, *SHAPE), dtype=np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    return x, y


def batchfit_model(steps_per_execution="auto"):
    import batchfit as bf
    layers = bf.layers
    model = bf.Sequential([bf.Input(SHAPE), layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                           layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                           layers.Flatten(), layers.Dropout(0.5), layers.Dense(CLASSES, activation="softmax")], seed=0)
    model.compile(optimizer="adam", loss="categorical_crossentropy", steps_per_execution=steps_per_execution)
    return model


def keras_model(keras):
    layers = keras.layers
    model = keras.Sequential([keras.Input(SHAPE), layers.Conv2D(32, (3, 3), activation="relu"),
                              layers.MaxPooling2D((2, 2)), layers.Conv2D(64, (3, 3), activation="relu"),
                              layers.MaxPooling2D((2, 2)), layers.Flatten(), layers.Dropout(0.5),
                              layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


# ----- the hand-written JAX floor -----------------------------------------------------------

def floor_functions():
    """(step, epoch, safe_epoch, block_epoch): jit(step) of one batch, jit(lax.scan(step)) of an epoch, the same
    scan of batchfit's loop_safe(step) (its convolutions rewritten for XLA:CPU), and that scan with max pooling
    as batchfit's block_max instead of reduce_window; state donated."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from batchfit.engine.driver import loop_safe
    from batchfit.layers.pooling import block_max
    sys.path.insert(0, HERE)
    from baselines import _keras_adam

    def forward(params, x, key, blocks=False):
        h = x
        for kernel, bias in params["convs"]:
            h = jax.nn.relu(lax.conv_general_dilated(h, kernel, (1, 1), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias)
            h = (block_max(h, (2, 2)) if blocks
                 else lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"))
        h = h.reshape(h.shape[0], -1)
        h = jnp.where(jax.random.bernoulli(key, 0.5, h.shape), h / 0.5, 0.0)
        return h @ params["dense"][0] + params["dense"][1]

    def step(state, batch, blocks=False):
        x, y = batch
        key = jax.random.fold_in(jax.random.PRNGKey(1), state["count"])

        def objective(params):
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(forward(params, x, key, blocks)), axis=-1))

        loss, grads = jax.value_and_grad(objective)(state["params"])
        return _keras_adam(grads, state), loss

    def epoch(state, xs, ys):
        return lax.scan(step, state, (xs, ys))

    def safe_epoch(state, xs, ys):
        return lax.scan(loop_safe(step), state, (xs, ys))

    def block_epoch(state, xs, ys):
        return lax.scan(loop_safe(lambda state, batch: step(state, batch, True)), state, (xs, ys))

    return tuple(jax.jit(f, donate_argnums=(0,)) for f in (step, epoch, safe_epoch, block_epoch))


def floor_state(weights):
    import jax
    k1, b1, k2, b2, kd, bd = (np.asarray(w) for w in weights)
    params = {"convs": [(k1, b1), (k2, b2)], "dense": (kd, bd)}
    return jax.device_put({"params": params, "m": jax.tree.map(np.zeros_like, params),
                           "v": jax.tree.map(np.zeros_like, params), "count": np.zeros((), np.int32)})


# ----- the systems: each runs one epoch over the same batches, compiled beforehand ----------

def _timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _interleaved(systems: dict, repeats: int, log: bool = False) -> dict:
    """name -> seconds of each of `repeats` runs, the order of the systems rotating every repeat."""
    times, names = {name: [] for name in systems}, list(systems)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_timed(systems[name]))
        if log:
            print(json.dumps({k: round(v[-1], 4) for k, v in times.items()}), flush=True)
    return times


def batchfit_systems(x, y, choice_log: list) -> dict:
    """name -> run(): one epoch of each batchfit driver (first call compiles)."""
    import jax
    n = len(x)
    models = {"batchfit fit auto": batchfit_model(), "batchfit fit spe=1": batchfit_model(1),
              "batchfit fit loop": batchfit_model(-(-n // BATCH)), "batchfit train_on_batch": batchfit_model()}
    handler = _ListHandler(choice_log)
    logging.getLogger("batchfit").addHandler(handler)
    logging.getLogger("batchfit").setLevel(logging.INFO)
    fit = lambda m: (lambda: m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0))
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, n, BATCH)]

    def on_batch(m):
        def run():
            loss = None
            for xb, yb in batches:
                loss = m.train_on_batch(xb, yb)
            jax.block_until_ready(loss)
        return run
    return {name: (on_batch(m) if "train_on_batch" in name else fit(m)) for name, m in models.items()}


class _ListHandler(logging.Handler):
    def __init__(self, out: list):
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record):
        if record.getMessage() not in self.out:
            self.out.append(record.getMessage())


def floor_systems(x, y, weights) -> dict:
    import jax
    step, epoch, safe_epoch, block_epoch = floor_functions()
    nb = len(x) // BATCH
    xs, ys = (jax.device_put(a[:nb * BATCH].reshape(nb, BATCH, *a.shape[1:])) for a in (x, y))
    holder = {name: floor_state(weights) for name in ("step", "scan", "safe", "block")}

    def per_batch():
        state = holder["step"]
        for i in range(nb):
            state, loss = step(state, (xs[i], ys[i]))
        holder["step"] = jax.block_until_ready(state)

    def per_epoch(name, fn):
        def run():
            holder[name], losses = fn(holder[name], xs, ys)
            jax.block_until_ready(losses)
        return run
    return {"jax jit(step)": per_batch, "jax jit(lax.scan)": per_epoch("scan", epoch),
            "jax jit(lax.scan(loop_safe))": per_epoch("safe", safe_epoch),
            "jax jit(lax.scan(loop_safe)), block_max pooling": per_epoch("block", block_epoch)}


def keras_jax_system(x, y) -> dict:
    if importlib.util.find_spec("keras") is None:
        return {}
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    if keras.backend.backend() != "jax":
        return {}
    model = keras_model(keras)
    return {"keras 3 on jax": lambda: model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)}


def keras_tensorflow(n: int, repeats: int, python: str | None = None) -> dict:
    """Keras 3 on TensorFlow, in a subprocess (one backend per process) of `python` (another virtual environment
    with tensorflow and keras: TensorFlow is not in batchfit's extras; default: this interpreter): its epoch
    times, or why it was skipped."""
    if python is None and importlib.util.find_spec("tensorflow") is None:
        return {"skipped": "tensorflow is not importable in this environment (--tf-python names another one)"}
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([python or sys.executable, __file__, "--worker-tf", str(n), str(repeats)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        return {"skipped": f"the TensorFlow worker failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worker_tf(n: int, repeats: int) -> None:
    import keras
    import tensorflow as tf
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}", file=sys.stderr)
    x, y = make_data(n)
    model = keras_model(keras)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    times = [_timed(lambda: model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0))
             for _ in range(repeats)]
    print(json.dumps({"times": times}))


# ----- the profile: each piece of the step alone, in a compiled loop ---------------------------

PROFILE_STEPS = 8


def profile_pieces() -> dict:
    """name -> (piece(*arrays) -> array or pytree, arrays, whether driver.loop_safe may use a matmul)."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from batchfit.layers.pooling import block_max
    sys.path.insert(0, HERE)
    from baselines import _keras_adam
    r = lambda *shape, rng=np.random.default_rng(0): rng.standard_normal(shape, dtype=np.float32)
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kernel_grad = lambda x, g, k: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
    input_grad = lambda x, g, k: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]
    reduce_window = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    pool = lambda fn: (lambda x, g: jax.vjp(fn, x)[1](g)[0])
    blocks = lambda x: block_max(x, (2, 2))

    def head(h, kernel, bias, y):       # dropout 0.5, dense 10, softmax crossentropy: loss and 3 gradients
        def loss(h, kernel, bias):
            h = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, h.shape), h / 0.5, 0.0)
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(h @ kernel + bias), axis=-1))
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(h, kernel, bias)

    params = [r(3, 3, 1, 32), r(32), r(3, 3, 32, 64), r(64), r(1600, 10), r(10)]
    adam = lambda *a: _keras_adam(a[:6], {"params": a[6:12], "m": a[12:18], "v": a[18:], "count": jnp.int32(0)})
    x1, g1, x2, g2, p2 = r(128, 28, 28, 1), r(128, 26, 26, 32), r(128, 13, 13, 32), r(128, 11, 11, 64), r(128, 5, 5, 64)
    return {"conv 1 forward": (conv, (x1, params[0]), True),
            "conv 1 kernel gradient, convolution": (kernel_grad, (x1, g1, params[0]), False),
            "conv 1 kernel gradient, matmul": (kernel_grad, (x1, g1, params[0]), True),
            "max pool 1 forward + gradient, reduce_window": (pool(reduce_window), (g1, x2), True),
            "max pool 1 forward + gradient, block_max": (pool(blocks), (g1, x2), True),
            "conv 2 forward": (conv, (x2, params[2]), True),
            "conv 2 kernel gradient": (kernel_grad, (x2, g2, params[2]), True),
            "conv 2 input gradient": (input_grad, (x2, g2, params[2]), True),
            "max pool 2 forward + gradient, reduce_window": (pool(reduce_window), (g2, p2), True),
            "max pool 2 forward + gradient, block_max": (pool(blocks), (g2, p2), True),
            "dropout, dense, softmax crossentropy: forward + gradients": (head, (r(128, 1600), params[4], params[5],
                                                                                 r(128, 10)), True),
            "Keras Adam update": (adam, tuple(params) * 4, True)}


def _profile_loop(piece, arrays, matmul: bool):
    """jit of a lax.scan of PROFILE_STEPS calls of loop_safe(piece); compiled on the first call."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from batchfit.engine import driver

    def body(shift, _):             # every output summed: XLA computes all of it
        out = piece(*(a + shift for a in arrays))
        return shift + 1e-9 * sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out)), None
    looped = jax.jit(lambda: lax.scan(driver.loop_safe(body), jnp.float32(0), None, length=PROFILE_STEPS)[0])
    original, driver._by_matmul = driver._by_matmul, driver._by_matmul if matmul else (lambda eqn: False)
    try:
        jax.block_until_ready(looped())             # trace and compile with the rule chosen
    finally:
        driver._by_matmul = original
    return lambda: jax.block_until_ready(looped())


def profile(repeats: int) -> dict:
    import jax
    times = _interleaved({name: _profile_loop(*piece) for name, piece in profile_pieces().items()}, repeats)
    ms = {name: round(1e3 * statistics.median(v) / PROFILE_STEPS, 2) for name, v in times.items()}
    return {"ms_per_piece": ms, "repeats": repeats, "steps_per_loop": PROFILE_STEPS, "devices": str(jax.devices())}


def profile_section(summary: dict) -> str:
    lines = ["### Where a convnet step goes (each piece alone in a compiled loop)", "",
             f"{summary['repeats']} interleaved repeats, medians, ms per call; {summary['devices']}.", "",
             "| piece | ms |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in summary["ms_per_piece"].items()]
    return "\n".join(lines) + "\n"


# ----- measure, summarize, print the RESULTS.md section -------------------------------------

def measure(n: int, repeats: int, tf_python: str | None = None) -> dict:
    import jax
    x, y = make_data(n)
    choices: list = []
    systems = batchfit_systems(x, y, choices)
    weights = batchfit_model().get_weights()
    systems.update(floor_systems(x, y, weights))
    systems.update(keras_jax_system(x, y))
    compile_s = {name: round(_timed(run), 2) for name, run in systems.items()}     # first call compiles
    times = _interleaved(systems, repeats, log=True)
    steps = {name: -(-n // BATCH) for name in systems}
    steps.update({name: n // BATCH for name in systems if name.startswith("jax ")})
    tf = keras_tensorflow(n, repeats, tf_python)
    if "times" in tf:
        times["keras 3 on tensorflow"], steps["keras 3 on tensorflow"] = tf["times"], -(-n // BATCH)
    return summarize(times, steps, compile_s, choices, tf, n, repeats, str(jax.devices()))


def summarize(times, steps, compile_s, choices, tf, n, repeats, devices) -> dict:
    ms = {k: 1e3 * statistics.median(v) / steps[k] for k, v in times.items()}
    floor, on_batch = ms["jax jit(step)"], ms["batchfit train_on_batch"]
    return {"workload": f"MNIST convnet (Conv32-Pool-Conv64-Pool-Flatten-Dropout-Dense10), {n} samples, batch "
                        f"{BATCH}, Adam, CCE", "repeats": repeats, "devices": devices,
            "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
            "over_floor": {k: round(v / floor, 2) for k, v in ms.items()},
            "over_train_on_batch": {k: round(v / on_batch, 2) for k, v in ms.items()},
            "auto_driver": choices, "keras_tensorflow": tf.get("skipped", "measured in a subprocess"),
            "first_call_s": compile_s, "times_s": times}


def section(summary: dict) -> str:
    """The RESULTS.md section of a convnet.json summary."""
    lines = ["## Convnet (issue 24): Keras's MNIST convnet, ms per step", "",
             f"{summary['workload']}; {summary['repeats']} interleaved repeats, medians; {summary['devices']}.",
             f"`steps_per_execution=\"auto\"` chose: {_choices(summary['auto_driver'])}.",
             f"Keras on TensorFlow: {summary['keras_tensorflow']}.", "",
             "| system | ms/step | / jax jit(step) | / train_on_batch | first call (s) |", "|---|---:|---:|---:|---:|"]
    for name, value in summary["ms_per_step"].items():
        lines.append(f"| {name} | {value} | {summary['over_floor'][name]} | {summary['over_train_on_batch'][name]} "
                     f"| {summary['first_call_s'].get(name, '')} |")
    return "\n".join(lines) + "\n"


def _choices(lines: list) -> str:
    return "; ".join(line.split(": ", 1)[-1].rstrip(".") for line in lines) or "nothing logged"


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024 samples (8 steps), 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=HERE, help="write convnet.json here (default: this folder)")
    parser.add_argument("--section", nargs="?", const=os.path.join(HERE, "convnet.json"), default=None,
                        help="print the RESULTS.md section of a convnet.json and exit")
    parser.add_argument("--profile", action="store_true", help="time each piece of the step alone instead")
    parser.add_argument("--tf-python", default=None,
                        help="the Python of a virtual environment with tensorflow and keras, for the Keras-on-TensorFlow row")
    parser.add_argument("--worker-tf", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_tf:
        return _worker_tf(*args.worker_tf)
    if args.profile:
        return _write(profile(args.repeats or 9), args.out, "convnet_profile.json", profile_section)
    if args.section:
        with open(args.section) as f:
            print(section(json.load(f)))
        return None
    n, repeats = (8 * BATCH, 3) if args.quick else (16 * BATCH, args.repeats or 5)
    summary = measure(n, repeats, args.tf_python)
    print(json.dumps({k: v for k, v in summary.items() if k != "times_s"}), flush=True)
    return _write(summary, args.out, "convnet.json", section)


def _write(summary: dict, folder: str, name: str, make_section) -> dict:
    """Write summary as folder/name (JSON) and print its RESULTS.md section."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(summary, f, indent=1)
    print(make_section(summary))
    return summary


if __name__ == "__main__":
    main()
