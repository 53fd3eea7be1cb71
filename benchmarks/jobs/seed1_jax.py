"""The first article's job written by hand in JAX: the floor for `python example.py`.

Same work as seed1_batchfit.py: Dense(16, relu) -> Dense(1, sigmoid) with Keras's
glorot-uniform init, clipped binary crossentropy, Keras's Adam, 10 shuffled epochs of
batch 32 (the last batch of 8 at its true size), one jit(lax.scan) per epoch, and the
last epoch's sample-weighted mean loss printed.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

x_train = np.random.rand(1000, 10).astype(np.float32)
y_train = np.random.randint(0, 2, size=(1000, 1)).astype(np.float32)
BATCH, EPOCHS, LR, B1, B2, EPS = 32, 10, 1e-3, 0.9, 0.999, 1e-7


def glorot(key, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit)


k1, k2 = jax.random.split(jax.random.PRNGKey(0))
params = {"w1": glorot(k1, 10, 16), "b1": jnp.zeros(16), "w2": glorot(k2, 16, 1), "b2": jnp.zeros(1)}
state = (params, jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params), jnp.int32(0))


def loss_fn(p, x, y):
    out = jax.nn.sigmoid(jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
    out = jnp.clip(out, 1e-7, 1 - 1e-7)
    return jnp.mean(-(y * jnp.log(out) + (1 - y) * jnp.log(1 - out)))


def step(state, batch):
    p, m, v, count = state
    loss, g = jax.value_and_grad(loss_fn)(p, *batch)
    t = (count + 1).astype(jnp.float32)
    m = jax.tree.map(lambda g, m: m + (g - m) * (1 - B1), g, m)
    v = jax.tree.map(lambda g, v: v + (g * g - v) * (1 - B2), g, v)
    alpha = LR * jnp.sqrt(1 - B2 ** t) / (1 - B1 ** t)
    p = jax.tree.map(lambda p, m, v: p - m * alpha / (jnp.sqrt(v) + EPS), p, m, v)
    return (p, m, v, count + 1), loss


@jax.jit
def epoch(state, x, y, order):
    x, y = x[order], y[order]
    full = x.shape[0] // BATCH * BATCH
    xs, ys = x[:full].reshape(-1, BATCH, 10), y[:full].reshape(-1, BATCH, 1)
    state, losses = lax.scan(step, state, (xs, ys))
    state, last = step(state, (x[full:], y[full:]))
    return state, jnp.concatenate([losses, last[None]])


x, y = jnp.asarray(x_train), jnp.asarray(y_train)
sizes = np.array([BATCH] * (1000 // BATCH) + [1000 % BATCH], np.float64)
rng = np.random.default_rng()
for _ in range(EPOCHS):
    state, losses = epoch(state, x, y, rng.permutation(1000).astype(np.int32))
    epoch_loss = float(np.sum(np.asarray(losses) * sizes) / sizes.sum())
print(f"Average training losses from the hand-written JAX loop: {epoch_loss}")
