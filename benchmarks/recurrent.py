"""The recurrent workload (issue 22): an LSTM text classifier, batchfit's fit per epoch against a
hand-written JAX floor of the same model.

    python benchmarks/recurrent.py [--quick] [--out DIR]

Model: Embedding(1000, 32) -> LSTM(32) -> Dense(1, sigmoid), binary crossentropy, Keras's Adam,
batch 64, 4096 sequences of 40 token ids (2048 with --quick). The floor is the same arithmetic by
hand: an embedding gather, Keras's LSTM cell (gates i, f, c, o; sigmoid / tanh) in a `lax.scan`
over time, the crossentropy from the output's logit (as batchfit computes a sigmoid output's
loss), Keras's Adam, one `jit(lax.scan)` over the epoch's batches, and it starts from batchfit's
initial weights, so both do the same work. Prints one JSON line per measurement and the summary
last; nothing is asserted about time. Repeats alternate between the two systems (the machine is
noisy), and the figure is the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from baselines import _keras_adam  # noqa: E402

VOCAB, EMBED, UNITS, LENGTH, BATCH = 1000, 32, 32, 40, 64


def make_data(n: int):
    """Token ids [n, LENGTH] int32 (0 pads the end of short sequences) and labels [n, 1] float32."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(n, LENGTH)).astype(np.int32)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=n)
    ids[np.arange(LENGTH)[None, :] >= lengths[:, None]] = 0
    y = (np.mean(ids < VOCAB // 2, axis=1) > 0.5).astype(np.float32)[:, None]
    return ids, y


def batchfit_model():
    import batchfit as bf
    model = bf.Sequential([bf.Input((LENGTH,), dtype="int32"), bf.layers.Embedding(VOCAB, EMBED),
                           bf.layers.LSTM(UNITS), bf.layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def _lstm(params, x):
    """Keras's LSTM over x [B, T, E] from zero state: the last h [B, UNITS]."""
    kernel, recurrent, bias = params["kernel"], params["recurrent_kernel"], params["bias"]
    inputs = jnp.swapaxes(x @ kernel + bias, 0, 1)                   # [T, B, 4 * UNITS]

    def cell(carry, z):
        h, c = carry
        i, f, g, o = jnp.split(z + h @ recurrent, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((x.shape[0], UNITS), x.dtype)
    (h, _), _ = lax.scan(cell, (zeros, zeros), inputs)
    return h


def _step(state, batch):
    ids, y = batch

    def objective(params):
        h = _lstm(params["lstm"], jnp.take(params["embeddings"], ids, axis=0))
        logit = h @ params["dense"]["kernel"] + params["dense"]["bias"]
        return jnp.mean(jnp.maximum(logit, 0) - logit * y + jnp.log1p(jnp.exp(-jnp.abs(logit))))

    loss, grads = jax.value_and_grad(objective)(state["params"])
    return _keras_adam(grads, state), loss


@partial(jax.jit, donate_argnums=(0,))
def floor_epoch(state, ids, y):
    nb = ids.shape[0] // BATCH
    batches = (ids[:nb * BATCH].reshape(nb, BATCH, LENGTH), y[:nb * BATCH].reshape(nb, BATCH, 1))
    return lax.scan(_step, state, batches)


def floor_state(weights):
    embeddings, kernel, recurrent, bias, dense_kernel, dense_bias = weights
    params = {"embeddings": embeddings, "lstm": {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias},
              "dense": {"kernel": dense_kernel, "bias": dense_bias}}
    params = jax.tree.map(np.asarray, params)
    return jax.device_put({"params": params, "m": jax.tree.map(np.zeros_like, params),
                           "v": jax.tree.map(np.zeros_like, params), "count": np.zeros((), np.int32)})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 sequences, 5 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=HERE, help="write recurrent.json here (default: this folder, which also "
                                                     "refreshes RESULTS.md's recurrent section)")
    args = parser.parse_args(argv)
    n, repeats = (2048, 5) if args.quick else (4096, args.repeats or 11)
    ids, y = make_data(n)
    model = batchfit_model()
    model.fit(ids, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)        # compile
    state = floor_state(model.get_weights())
    ids_d, y_d = jax.device_put(ids), jax.device_put(y)
    state, losses = floor_epoch(state, ids_d, y_d)
    losses.block_until_ready()
    times = {"batchfit fit per epoch": [], "floor per epoch": []}
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(ids, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        times["batchfit fit per epoch"].append(time.perf_counter() - start)
        start = time.perf_counter()
        state, losses = floor_epoch(state, ids_d, y_d)
        losses.block_until_ready()
        times["floor per epoch"].append(time.perf_counter() - start)
        print(json.dumps({k: round(v[-1], 5) for k, v in times.items()}), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    summary = {"workload": f"Embedding({VOCAB},{EMBED})->LSTM({UNITS})->Dense(1,sigmoid), {n} x {LENGTH} ids, "
                           f"batch {BATCH}, Adam, BCE", "repeats": repeats,
               "median_s": {k: round(v, 5) for k, v in medians.items()},
               "ratio": round(medians["batchfit fit per epoch"] / medians["floor per epoch"], 3),
               "devices": str(jax.devices()), "times": times}
    print(json.dumps({k: v for k, v in summary.items() if k != "times"}), flush=True)
    path = os.path.join(args.out, "recurrent.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    if os.path.abspath(args.out) == HERE:
        import pathlib
        from report import refresh_recurrent_section
        refresh_recurrent_section(pathlib.Path(HERE) / "RESULTS.md", pathlib.Path(path))
    return summary


if __name__ == "__main__":
    main()
