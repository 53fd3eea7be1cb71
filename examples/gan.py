"""A GAN trained with `fit`: Keras's JAX `train_step` protocol, two optimizers, callbacks, BackupAndRestore.

The discriminator and generator are sub-models; `compile(d_optimizer=..., g_optimizer=..., loss_fn=...)`
is the model's own. `fit` gets the images alone, as in Keras's GAN guides: the step's `data` is the
batch of images, and the latent noise is drawn inside the step by a GaussianNoise sub-model, whose
random stream is the step's `non_trainable_variables` (it advances with every step and is saved with
the weights). The step runs inside fit's compiled loop (the whole epoch in one call), and both
optimizers' states live in the training state, so BackupAndRestore saves and restores them with the
weights: stop this script with Ctrl-C and run it again, and it continues where it stopped.

    python examples/gan.py
"""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import batchfit as bf

LATENT, IMAGE = 32, 28 * 28


class GAN(bf.Model):
    def __init__(self, discriminator, generator):
        super().__init__()
        self.discriminator, self.generator = discriminator, generator
        self.latent = bf.Sequential([bf.Input((LATENT,)), bf.layers.GaussianNoise(1.0)])   # N(0, 1) draws
        self.d_loss_tracker = bf.metrics.Mean(name="d_loss")
        self.g_loss_tracker = bf.metrics.Mean(name="g_loss")

    def call(self, images, training=False):
        return self.discriminator(images)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        real, _, _ = bf.utils.unpack_x_y_sample_weight(data)          # fit(images): data is the images
        b = real.shape[0]
        # the discriminator and generator keep no state: the non-trainable values are the noise's random stream
        noise, non_trainable = self.latent.stateless_call([], non_trainable, jnp.zeros((b, LATENT)), training=True)
        nd = len(self.discriminator.trainable_variables)
        d_vars, g_vars = trainable[:nd], trainable[nd:]
        generate = lambda g, z: self.generator.stateless_call(g, [], z, training=True)[0]
        judge = lambda d, x: self.discriminator.stateless_call(d, [], x, training=True)[0]

        labels = jnp.concatenate([jnp.ones((b, 1)), jnp.zeros((b, 1))])       # 1: generated
        d_loss, grads = jax.value_and_grad(
            lambda d: self.loss_fn(labels, judge(d, jnp.concatenate([generate(g_vars, noise), real]))))(d_vars)
        d_vars, _ = self.d_optimizer.stateless_apply([v.value for v in self.d_optimizer.variables], grads, d_vars)

        g_loss, grads = jax.value_and_grad(
            lambda g: self.loss_fn(jnp.zeros((b, 1)), judge(d_vars, generate(g, noise))))(g_vars)
        g_vars, _ = self.g_optimizer.stateless_apply([v.value for v in self.g_optimizer.variables], grads, g_vars)

        d_state = self.d_loss_tracker.stateless_update_state(metrics_variables[:2], d_loss)
        g_state = self.g_loss_tracker.stateless_update_state(metrics_variables[2:], g_loss)
        logs = {"d_loss": self.d_loss_tracker.stateless_result(d_state),
                "g_loss": self.g_loss_tracker.stateless_result(g_state)}
        return logs, (list(d_vars) + list(g_vars), non_trainable, optimizer_variables, list(d_state) + list(g_state))


def build() -> GAN:
    layers = bf.layers
    discriminator = bf.Sequential([bf.Input((IMAGE,)), layers.Dense(128, activation="relu"), layers.Dense(1)])
    generator = bf.Sequential([bf.Input((LATENT,)), layers.Dense(128, activation="relu"),
                               layers.Dense(IMAGE, activation="sigmoid")])
    gan = GAN(discriminator, generator)
    gan.compile(d_optimizer=bf.optimizers.Adam(2e-4), g_optimizer=bf.optimizers.Adam(2e-4),
                loss_fn=bf.losses.BinaryCrossentropy(from_logits=True))
    return gan


def main(epochs: int = 5, backup_dir: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    images = rng.random((4096, IMAGE), np.float32)                  # stand-ins for 28x28 images, flattened
    dataset = bf.data.Dataset.from_tensor_slices(images).shuffle(4096, seed=0).batch(64)
    gan = build()
    backup_dir = backup_dir or os.path.join(tempfile.gettempdir(), "batchfit_gan_backup")
    callbacks = [bf.callbacks.BackupAndRestore(backup_dir),
                 bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
                     f"epoch {epoch}: d_loss {logs['d_loss']:.4f}, g_loss {logs['g_loss']:.4f}"))]
    history = gan.fit(dataset, epochs=epochs, verbose=0, callbacks=callbacks)
    return history.history


if __name__ == "__main__":
    main()
