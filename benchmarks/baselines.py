"""The hand-written JAX floor: plain-dict params, Keras's math, one jit(lax.scan) per epoch.

The floor does the arithmetic batchfit does (same layers, same loss with Keras's clipping,
Keras's Adam with epsilon added to sqrt(v) before bias correction, sum-over-batch-size
reduction, the partial last batch at its true size) and nothing else: no validation, no
callbacks, no accumulators beyond the per-batch losses. Its epoch functions differ only
in how they order the samples; `SHUFFLE_OPTIONS` lists them so that `run.py` can time
each one and call the fastest "the floor with shuffle".
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from workloads import SHUFFLE_OPTIONS, Workload

__all__ = ["init_state", "glorot_weights", "make_step", "epoch_fn", "jitted_step", "SHUFFLE_OPTIONS",
           "permutation_fns"]

EPSILON = 1e-7        # Keras's backend epsilon: probabilities are clipped to [eps, 1 - eps]
LR, BETA_1, BETA_2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-7


# ----- model, loss, optimizer --------------------------------------------------------

def init_state(weights):
    """Training state from Keras-order weights [k0, b0, k1, b1, ...]: params, Adam m and v, count.

    Made on the host and copied over in one device_put: no eager op to compile, so a fresh
    process's first epoch (procs.py) can count it at the cost of a copy.
    """
    params = {f"dense_{i}": {"kernel": np.asarray(weights[2 * i]), "bias": np.asarray(weights[2 * i + 1])}
              for i in range(len(weights) // 2)}
    return jax.device_put({"params": params, "m": jax.tree.map(np.zeros_like, params),
                           "v": jax.tree.map(np.zeros_like, params), "count": np.zeros((), np.int32)})


def glorot_weights(w: Workload, seed: int = 0) -> list:
    """Keras-order weights [k0, b0, k1, b1, ...] of `w` drawn with NumPy: glorot-uniform kernels, zero biases.

    For a process that times the floor without importing batchfit (procs.py's first epoch).
    """
    rng = np.random.default_rng(seed)
    widths = (w.num_features, *w.hidden, w.outputs)
    weights = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32)]
    return weights


def _forward(w: Workload, params, x, dropout_keys, count):
    h = x
    for i in range(len(w.hidden)):
        layer = params[f"dense_{i}"]
        h = jax.nn.relu(h @ layer["kernel"] + layer["bias"])
        if w.dropout:          # inverted dropout; a fresh mask per layer and step, as NNX's Rngs stream does
            keep = 1.0 - w.dropout
            mask = jax.random.bernoulli(jax.random.fold_in(dropout_keys[i], count), keep, h.shape)
            h = jnp.where(mask, h / keep, jnp.zeros((), h.dtype))
    last = params[f"dense_{len(w.hidden)}"]
    out = h @ last["kernel"] + last["bias"]
    if w.output_activation == "sigmoid":
        out = jax.nn.sigmoid(out)
    elif w.output_activation == "softmax":
        out = jax.nn.softmax(out, axis=-1)
    return out


def _per_sample_loss(w: Workload, y, p):
    if w.loss == "mse":
        return jnp.mean(jnp.square(y - p), axis=-1)
    if w.loss == "binary_crossentropy":
        p = jnp.clip(p, EPSILON, 1.0 - EPSILON)
        return jnp.mean(-(y * jnp.log(p) + (1.0 - y) * jnp.log(1.0 - p)), axis=-1)
    p = p / jnp.sum(p, axis=-1, keepdims=True)                     # Keras renormalises, then clips
    return -jnp.sum(y * jnp.log(jnp.clip(p, EPSILON, 1.0 - EPSILON)), axis=-1)


def _keras_adam(grads, state):
    """Keras 3 Adam: m += (g-m)(1-b1); v += (g^2-v)(1-b2); p -= lr sqrt(1-b2^t)/(1-b1^t) m/(sqrt(v)+eps)."""
    t = (state["count"] + 1).astype(jnp.float32)
    m = jax.tree.map(lambda g, m: m + (g - m) * (1 - BETA_1), grads, state["m"])
    v = jax.tree.map(lambda g, v: v + (jnp.square(g) - v) * (1 - BETA_2), grads, state["v"])
    alpha = LR * jnp.sqrt(1 - BETA_2 ** t) / (1 - BETA_1 ** t)
    params = jax.tree.map(lambda p, m, v: p + (-(m * alpha) / (jnp.sqrt(v) + ADAM_EPS)), state["params"], m, v)
    return {"params": params, "m": m, "v": v, "count": state["count"] + 1}


def make_step(w: Workload):
    """step(state, (x [B, F], y [B, O])) -> (state, loss): one Keras-Adam update, loss before it."""
    dropout_keys = jax.random.split(jax.random.PRNGKey(1), max(1, len(w.hidden)))

    def objective(params, x, y, count):
        return jnp.sum(_per_sample_loss(w, y, _forward(w, params, x, dropout_keys, count))) / x.shape[0]

    def step(state, batch):
        loss, grads = jax.value_and_grad(objective)(state["params"], *batch, state["count"])
        return _keras_adam(grads, state), loss

    return step


# ----- one epoch in one jit(lax.scan) ----------------------------------------------------

def _scan_rows(step, state, x, y, batch_size):
    """Full batches as contiguous rows ([nb, B, ...] scanned as xs), then the partial tail."""
    nb, tail = divmod(x.shape[0], batch_size)
    cut = nb * batch_size
    xs, ys = (a[:cut].reshape((nb, batch_size) + a.shape[1:]) for a in (x, y))
    state, losses = lax.scan(step, state, (xs, ys))
    if tail:
        state, last = step(state, (x[cut:], y[cut:]))
        losses = jnp.concatenate([losses, last[None]])
    return state, losses


def _scan_gather(step, state, x, y, order, batch_size):
    """Each batch gathered from x by its slice of `order` inside the scan, then the tail."""
    nb, tail = divmod(x.shape[0], batch_size)

    def body(s, i):
        idx = lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        return step(s, (jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)))
    state, losses = lax.scan(body, state, jnp.arange(nb, dtype=jnp.int32))
    if tail:
        idx = order[nb * batch_size:]
        state, last = step(state, (jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)))
        losses = jnp.concatenate([losses, last[None]])
    return state, losses


def _scan_slices(step, state, x, y, batch_size):
    """Unshuffled, each full batch a dynamic_slice of x inside the scan (what a chunked driver does)."""
    nb, tail = divmod(x.shape[0], batch_size)

    def body(s, i):
        return step(s, tuple(lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (x, y)))
    state, losses = lax.scan(body, state, jnp.arange(nb, dtype=jnp.int32))
    if tail:
        cut = nb * batch_size
        state, last = step(state, (x[cut:], y[cut:]))
        losses = jnp.concatenate([losses, last[None]])
    return state, losses


def _in_jit_order(kind, n, epoch):
    key = jax.random.fold_in(jax.random.PRNGKey(0), epoch)
    if kind == "jax_permutation":
        return jax.random.permutation(key, n).astype(jnp.int32)
    return jnp.argsort(jax.random.bits(key, (n,), jnp.uint32)).astype(jnp.int32)


def _epoch(step, batch_size, option, state, x, y, arg):
    """The body of every floor epoch; `arg` is the epoch number or a host permutation."""
    n = x.shape[0]
    if option == "none":
        return _scan_rows(step, state, x, y, batch_size)
    if option == "none_dynamic_slice":
        return _scan_slices(step, state, x, y, batch_size)
    source, how = option.split("+")
    order = arg if source == "host_permutation" else _in_jit_order(source, n, arg)
    if how == "gather_per_batch":
        return _scan_gather(step, state, x, y, order, batch_size)
    xp, yp = jnp.take(x, order, axis=0), jnp.take(y, order, axis=0)
    return _scan_rows(step, state, xp, yp, batch_size)


def epoch_fn(w: Workload, option: str = "none"):
    """An epoch runner `run(state, x, y) -> (state, losses [num_batches])` for one ordering option.

    x, y are device arrays (except for "host_numpy_take", which takes NumPy arrays and
    copies the permuted rows to the device every epoch). The state is donated.
    """
    step = make_step(w)
    inner = "none" if option == "host_numpy_take" else option
    jitted = jax.jit(partial(_epoch, step, w.batch_size, inner), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    epoch = [0]

    def run(state, x, y):
        epoch[0] += 1
        if option == "host_numpy_take":
            perm = rng.permutation(x.shape[0])
            return jitted(state, x[perm], y[perm], 0)
        if option.startswith("host_permutation"):
            return jitted(state, x, y, rng.permutation(x.shape[0]).astype(np.int32))
        return jitted(state, x, y, np.int32(epoch[0]))

    return run


def jitted_step(w: Workload):
    """The per-batch baseline: jit(step) with the state donated, called once per NumPy batch."""
    step = make_step(w)
    return jax.jit(lambda state, x, y: step(state, (x, y)), donate_argnums=(0,))


def permutation_fns(n: int) -> dict:
    """Ways to draw one epoch's order of n samples, each returning a device int32 [n]."""
    key0 = jax.random.PRNGKey(0)
    perm_jit = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(key0, e), n).astype(jnp.int32))
    bits_jit = jax.jit(lambda e: jnp.argsort(jax.random.bits(jax.random.fold_in(key0, e), (n,),
                                                             jnp.uint32)).astype(jnp.int32))
    rng = np.random.default_rng(0)
    return {
        "jax.random.permutation (jit)": lambda e: perm_jit(np.int32(e)),
        "argsort(random.bits) (jit)": lambda e: bits_jit(np.int32(e)),
        "numpy rng.permutation (host only)": lambda e: rng.permutation(n).astype(np.int32),
        "numpy rng.permutation + device_put": lambda e: jax.device_put(rng.permutation(n).astype(np.int32)),
    }
