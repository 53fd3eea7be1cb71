"""A small dense GAN on 28x28 synthetic images, one custom `train_step` (Keras's JAX protocol) run four ways.

* fit: `bf.Model.fit` with the custom train_step (steps_per_execution="auto": the epoch in one scan);
* train_on_batch: the same step as a loop of `train_on_batch`, one jitted call per batch;
* keras: Keras 3 on JAX, `fit` with the same train_step (one jitted call per step, Keras's default);
* floor: a hand-written `jit(lax.scan(step))` of the same step over device-resident batches;
* also: fit with steps_per_execution=1, and the hand-written step jitted alone, called per batch.

The systems alternate within one process (one epoch each per round); the medians over the rounds
and the median over rounds of each round's ratio to the floor go to JSON. Nothing is asserted.

    KERAS_BACKEND=jax python benchmarks/gan.py [--rounds 15] [--out benchmarks/gan.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

LATENT, IMAGE, HIDDEN, BATCH, SAMPLES, LR = 32, 28 * 28, 128, 64, 2048, 2e-4


def gan(lib):
    """The GAN in `lib` (batchfit or keras): the latent noise arrives as the targets, so every system draws
    the same; the discriminator step, then the generator step, each with its own Adam."""
    class GAN(lib.Model):
        def __init__(self, discriminator, generator):
            super().__init__()
            self.discriminator, self.generator = discriminator, generator
            self.d_loss_tracker = lib.metrics.Mean(name="d_loss")
            self.g_loss_tracker = lib.metrics.Mean(name="g_loss")

        def call(self, x, training=False):
            return self.discriminator(x)

        def compile(self, d_optimizer, g_optimizer, loss_fn, **kwargs):
            super().compile(**kwargs)
            self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn
            self.d_optimizer.build(self.discriminator.trainable_variables)
            self.g_optimizer.build(self.generator.trainable_variables)

        @property
        def metrics(self):
            return [self.d_loss_tracker, self.g_loss_tracker]

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            real, z = data[0], data[1]
            nd = len(self.discriminator.trainable_variables)
            d_loss, g_loss, d_tv, g_tv = gan_update(
                lambda p, x: self.discriminator.stateless_call(p, [], x, training=True)[0],
                lambda p, x: self.generator.stateless_call(p, [], x, training=True)[0],
                self.loss_fn, self.d_optimizer, self.g_optimizer, tv[:nd], tv[nd:], real, z)
            d_state = self.d_loss_tracker.stateless_update_state(mv[:2], d_loss)
            g_state = self.g_loss_tracker.stateless_update_state(mv[2:], g_loss)
            logs = {"d_loss": self.d_loss_tracker.stateless_result(d_state),
                    "g_loss": self.g_loss_tracker.stateless_result(g_state)}
            return logs, (list(d_tv) + list(g_tv), ntv, ov, list(d_state) + list(g_state))
    layers = lib.layers
    discriminator = lib.Sequential([lib.Input((IMAGE,)), layers.Dense(HIDDEN, activation="relu"), layers.Dense(1)])
    generator = lib.Sequential([lib.Input((LATENT,)), layers.Dense(HIDDEN, activation="relu"),
                                layers.Dense(IMAGE, activation="sigmoid")])
    return GAN(discriminator, generator)


def gan_update(discriminate, generate, loss_fn, d_optimizer, g_optimizer, d_tv, g_tv, real, z):
    """One discriminator update, then one generator update: (d_loss, g_loss, new d_tv, new g_tv)."""
    b = real.shape[0]
    labels = jnp.concatenate([jnp.ones((b, 1)), jnp.zeros((b, 1))])        # 1: generated

    def d_loss_fn(d_tv):
        return loss_fn(labels, discriminate(d_tv, jnp.concatenate([generate(g_tv, z), real])))
    d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_tv)
    d_tv, _ = d_optimizer.stateless_apply([v.value for v in d_optimizer.variables], d_grads, d_tv)

    def g_loss_fn(g_tv):
        return loss_fn(jnp.zeros((b, 1)), discriminate(d_tv, generate(g_tv, z)))
    g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_tv)
    g_tv, _ = g_optimizer.stateless_apply([v.value for v in g_optimizer.variables], g_grads, g_tv)
    return d_loss, g_loss, d_tv, g_tv


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((SAMPLES, IMAGE), np.float32), rng.normal(size=(SAMPLES, LATENT)).astype(np.float32)


def compiled(lib, weights, **kwargs):
    model = gan(lib)
    model(np.zeros((1, IMAGE), np.float32))
    model.set_weights(weights)
    model.compile(lib.optimizers.Adam(LR), lib.optimizers.Adam(LR), lib.losses.BinaryCrossentropy(from_logits=True),
                  **kwargs)
    return model


def dense(params, x, last):
    """Two Dense layers (kernel, bias, kernel, bias), relu between, `last` after."""
    return last(jax.nn.relu(x @ params[0] + params[1]) @ params[2] + params[3])


def floor_epoch(weights, scan=True):
    """The hand-written floor: jit(lax.scan) of the same update, optax Adam (Keras's formula) per sub-model;
    `scan=False`: the same step jitted alone, called once per batch from Python."""
    import batchfit as bf
    tx = bf.optimizers.Adam(LR).to_optax()
    bce = lambda y, logits: jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

    def step(carry, batch):
        d, g, d_opt, g_opt = carry
        real, z = batch
        b = real.shape[0]
        generate = lambda g, z: dense(g, z, jax.nn.sigmoid)
        labels = jnp.concatenate([jnp.ones((b, 1)), jnp.zeros((b, 1))])
        d_loss, grads = jax.value_and_grad(lambda d: bce(labels, dense(d, jnp.concatenate([generate(g, z), real]),
                                                                       lambda a: a)))(d)
        updates, d_opt = tx.update(grads, d_opt, d)
        d = optax.apply_updates(d, updates)
        g_loss, grads = jax.value_and_grad(lambda g: bce(jnp.zeros((b, 1)), dense(d, generate(g, z), lambda a: a)))(g)
        updates, g_opt = tx.update(grads, g_opt, g)
        return (d, optax.apply_updates(g, updates), d_opt, g_opt), jnp.stack([d_loss, g_loss])

    if scan:
        epoch = jax.jit(lambda carry, xs: jax.lax.scan(step, carry, xs), donate_argnums=(0,))
    else:
        one = jax.jit(step, donate_argnums=(0,))

        def epoch(carry, xs):
            losses = []
            for i in range(xs[0].shape[0]):
                carry, loss = one(carry, (xs[0][i], xs[1][i]))
                losses.append(loss)
            return carry, jnp.stack(losses)
    d, g = [jnp.asarray(w) for w in weights[:4]], [jnp.asarray(w) for w in weights[4:]]
    holder = {"carry": (d, g, tx.init(d), tx.init(g))}
    x, z = data()
    batches = tuple(jnp.asarray(a.reshape(-1, BATCH, a.shape[-1])) for a in (x, z))

    def run():
        holder["carry"], losses = epoch(holder["carry"], batches)
        return np.asarray(losses)
    run.weights = lambda: [np.asarray(w) for w in (*holder["carry"][0], *holder["carry"][1])]
    return run


def systems() -> dict:
    """name -> a callable that trains one epoch and waits for it."""
    import keras
    import batchfit as bf
    keras.utils.set_random_seed(0)
    reference = gan(keras)
    reference(np.zeros((1, IMAGE), np.float32))
    weights = reference.get_weights()
    x, z = data()
    models = {"fit": compiled(bf, weights), "train_on_batch": compiled(bf, weights), "keras": compiled(keras, weights),
              "fit, steps_per_execution=1": compiled(bf, weights, steps_per_execution=1)}

    def loop():
        model = models["train_on_batch"]
        for i in range(0, SAMPLES, BATCH):
            logs = model.train_on_batch(x[i:i + BATCH], z[i:i + BATCH], return_dict=True)
        return float(logs["g_loss"])
    def fit(name):
        run = lambda: models[name].fit(x, z, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        run.weights = models[name].get_weights
        return run
    loop.weights = models["train_on_batch"].get_weights
    return {"floor": floor_epoch(weights), "fit": fit("fit"), "train_on_batch": loop, "keras": fit("keras"),
            "fit, steps_per_execution=1": fit("fit, steps_per_execution=1"),
            "hand-written jit(step) loop": floor_epoch(weights, scan=False)}


def measure(rounds: int) -> dict:
    runs = systems()
    for run in runs.values():              # compile, warm up: one epoch each from the same weights
        run()
    floor = runs["floor"].weights()
    agree = {name: max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(run.weights(), floor))
             for name, run in runs.items() if name != "floor"}
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"workload": dict(latent=LATENT, image=IMAGE, hidden=HIDDEN, batch_size=BATCH, samples=SAMPLES,
                             batches_per_epoch=SAMPLES // BATCH, optimizer="Adam x2"),
            "rounds": rounds, "device": jax.devices()[0].device_kind,
            "median_epoch_s": medians,
            "ratio_to_floor": {name: paired(times[name], times["floor"]) for name in times},
            "keras_over_fit": paired(times["keras"], times["fit"]),
            "max_relative_weight_difference_to_floor_after_one_epoch": agree}


def paired(a: list, b: list) -> float:
    """The median over rounds of a / b, each round's two runs back to back (drift cancels)."""
    return statistics.median(x / y for x, y in zip(a, b))


def markdown(result: dict) -> str:
    agree = ", ".join(f"{name} {value:.2g}" for name, value in
                      result["max_relative_weight_difference_to_floor_after_one_epoch"].items())
    rows = "\n".join(f"| {name} | {1e3 * t:.1f} | {result['ratio_to_floor'][name]:.2f}x |"
                     for name, t in result["median_epoch_s"].items())
    return (f"## GAN with a custom train_step ({result['workload']['batches_per_epoch']} batches of "
            f"{result['workload']['batch_size']}, {result['device']}, {result['rounds']} interleaved rounds)\n\n"
            f"| system | median ms / epoch | vs floor (median of per-round ratios) |\n|---|---|---|\n{rows}\n\n"
            f"Max relative weight difference to the floor after one epoch: {agree}. Keras 3 on JAX keeps "
            f"no state for an optimizer other than `model.optimizer` in a custom train_step (its Adam "
            f"restarts every step), so its weights differ.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gan.json"))
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    args = parser.parse_args()
    result = measure(args.rounds)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
