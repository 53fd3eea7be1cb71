"""Keras's JAX `train_step` protocol on bf.Model, against Keras 3 itself (KERAS_BACKEND=jax).

The same model code runs in both libraries: the guide's custom step ("Customizing what happens
in fit() with JAX": a Mean loss tracker, a metric, an overridden test_step) and a small dense GAN
(two sub-models, two optimizers through a custom compile). From the same initial weights, the
History and the final weights agree to 1e-5 relative; in batchfit the step runs inside fit's
compiled scan, so fit equals a train_on_batch loop and steps_per_execution 1 equals "auto".
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RTOL = 1e-5


def guide_model(lib):
    """The guide's lower-level example: Mean("loss") and MeanAbsoluteError("mae") updated by hand."""
    class CustomModel(lib.Model):
        def __init__(self):
            super().__init__()
            self.dense = lib.layers.Dense(1)
            self.loss_tracker = lib.metrics.Mean(name="loss")
            self.mae_metric = lib.metrics.MeanAbsoluteError(name="mae")
            self.loss_fn = lib.losses.MeanSquaredError()

        def call(self, x, training=False):
            return self.dense(x)

        def compute_loss_and_updates(self, tv, ntv, x, y, training=False):
            y_pred, ntv = self.stateless_call(tv, ntv, x, training=training)
            return self.loss_fn(y, y_pred), (y_pred, ntv)

        def _logs(self, metrics_variables, loss, y, y_pred):
            n = len(self.loss_tracker.variables)
            loss_vars = self.loss_tracker.stateless_update_state(metrics_variables[:n], loss)
            mae_vars = self.mae_metric.stateless_update_state(metrics_variables[n:], y, y_pred)
            logs = {"loss": self.loss_tracker.stateless_result(loss_vars),
                    "mae": self.mae_metric.stateless_result(mae_vars)}
            return logs, list(loss_vars) + list(mae_vars)

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            x, y = data[0], data[1]
            grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
            (loss, (y_pred, ntv)), grads = grad_fn(tv, ntv, x, y, training=True)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            logs, mv = self._logs(mv, loss, y, y_pred)
            return logs, (tv, ntv, ov, mv)

        def test_step(self, state, data):
            tv, ntv, mv = state
            x, y = data[0], data[1]
            y_pred, ntv = self.stateless_call(tv, ntv, x, training=False)
            logs, mv = self._logs(mv, self.loss_fn(y, y_pred), y, y_pred)
            return logs, (tv, ntv, mv)

        @property
        def metrics(self):
            return [self.loss_tracker, self.mae_metric]
    return CustomModel()


def compiled_loss_model(lib):
    """The guide's first example: the compiled loss through stateless_compute_loss, and `self.metrics`
    (Keras's Mean("loss") and the compiled metrics) updated in a loop."""
    class CustomModel(lib.Model):
        def __init__(self):
            super().__init__()
            self.dense = lib.layers.Dense(1)

        def call(self, x, training=False):
            return self.dense(x)

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            x, y = data[0], data[1]

            def loss_fn(tv, ntv, mv):
                y_pred, ntv = self.stateless_call(tv, ntv, x, training=True)
                loss, (_, ntv, mv) = self.stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)
                return loss, (y_pred, ntv, mv)
            (loss, (y_pred, ntv, mv)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, mv)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            new, logs = [], {}
            for metric in self.metrics:
                own = mv[len(new):len(new) + len(metric.variables)]
                args = (loss,) if metric.name == "loss" else (y, y_pred)
                own = metric.stateless_update_state(own, *args)
                logs[metric.name] = metric.stateless_result(own)
                new += list(own)
            return logs, (tv, ntv, ov, new)
    return CustomModel()


def gan(lib, latent=4, image=12, hidden=8):
    """A dense GAN; the latent noise comes in as the targets `y`, so both libraries draw the same."""
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
            b = real.shape[0]
            nd, nnd = len(self.discriminator.trainable_variables), len(self.discriminator.non_trainable_variables)
            d_tv, g_tv, d_ntv, g_ntv = tv[:nd], tv[nd:], ntv[:nnd], ntv[nnd:]
            labels = jnp.concatenate([jnp.ones((b, 1)), jnp.zeros((b, 1))])     # 1: generated

            def d_loss_fn(d_tv):
                fake, _ = self.generator.stateless_call(g_tv, g_ntv, z, training=True)
                both = jnp.concatenate([fake, real])
                return self.loss_fn(labels, self.discriminator.stateless_call(d_tv, d_ntv, both, training=True)[0])
            d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_tv)
            d_vars = [v.value for v in self.d_optimizer.variables]
            d_tv, _ = self.d_optimizer.stateless_apply(d_vars, d_grads, d_tv)

            def g_loss_fn(g_tv):
                fake, _ = self.generator.stateless_call(g_tv, g_ntv, z, training=True)
                logits, _ = self.discriminator.stateless_call(d_tv, d_ntv, fake, training=True)
                return self.loss_fn(jnp.zeros((b, 1)), logits)                     # "these are real"
            g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_tv)
            g_vars = [v.value for v in self.g_optimizer.variables]
            g_tv, _ = self.g_optimizer.stateless_apply(g_vars, g_grads, g_tv)
            d_state = self.d_loss_tracker.stateless_update_state(mv[:2], d_loss)
            g_state = self.g_loss_tracker.stateless_update_state(mv[2:], g_loss)
            logs = {"d_loss": self.d_loss_tracker.stateless_result(d_state),
                    "g_loss": self.g_loss_tracker.stateless_result(g_state)}
            return logs, (list(d_tv) + list(g_tv), ntv, ov, list(d_state) + list(g_state))
    layers = lib.layers
    discriminator = lib.Sequential([lib.Input((image,)), layers.Dense(hidden, activation="relu"), layers.Dense(1)])
    generator = lib.Sequential([lib.Input((latent,)), layers.Dense(hidden, activation="relu"),
                                layers.Dense(image, activation="sigmoid")])
    return GAN(discriminator, generator)


def regression(n=50, features=8, rng=np.random.default_rng):
    return rng(0).random((n, features)).astype(np.float32), rng(1).random((n, 1)).astype(np.float32)


def images(n=40, rng=np.random.default_rng):
    return rng(0).random((n, 12)).astype(np.float32), rng(1).normal(size=(n, 4)).astype(np.float32)


def twins(make, x):
    """The model in Keras and in batchfit, batchfit's weights copied from Keras's."""
    keras.utils.set_random_seed(0)
    theirs, mine = make(keras), make(bf)
    theirs(x[:1])
    mine(x[:1])
    mine.set_weights(theirs.get_weights())
    return theirs, mine


def assert_same_fit(theirs, mine, fits, keys=None):
    keys = keys or set(fits[0].history)
    assert keys <= set(fits[1].history)
    for name in keys:
        np.testing.assert_allclose(fits[1].history[name], fits[0].history[name], rtol=RTOL, err_msg=name)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)


def compile_gan(lib, model, optimizer="SGD", lr=0.05, **kwargs):
    make = getattr(lib.optimizers, optimizer)         # SGD without momentum: Keras keeps no optimizer state
    model.compile(make(lr), make(lr), lib.losses.BinaryCrossentropy(from_logits=True), **kwargs)


@pytest.mark.parametrize("make, compiled", [(guide_model, {}),
                                            (compiled_loss_model, {"loss": "mse", "metrics": ["mae"]})])
def test_the_guides_custom_steps_fit_evaluate_and_train_on_a_batch_as_keras(make, compiled):
    x, y = regression()
    theirs, mine = twins(make, x)
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), **compiled)
    mine.compile(optimizer=bf.optimizers.Adam(0.01), **compiled)
    test_step = make is guide_model           # validation and evaluate run the model's own test_step
    # 40 training rows in batches of 16 (a partial last batch of 8) and 10 validation rows; or all 50
    fits = [m.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, validation_split=0.2 * test_step)
            for m in (theirs, mine)]
    names = {"loss", "mae"} | ({"val_loss", "val_mae"} if test_step else set())
    assert set(fits[1].history) == names == set(fits[0].history)
    assert_same_fit(theirs, mine, fits)
    if test_step:
        logs = [m.evaluate(x, y, batch_size=16, verbose=0, return_dict=True) for m in (theirs, mine)]
        np.testing.assert_allclose([logs[1]["loss"], logs[1]["mae"]], [logs[0]["loss"], logs[0]["mae"]], rtol=RTOL)
    logs = [m.train_on_batch(x[:16], y[:16], return_dict=True) for m in (theirs, mine)]
    np.testing.assert_allclose([float(logs[1]["loss"]), float(logs[1]["mae"])], [logs[0]["loss"], logs[0]["mae"]],
                               rtol=RTOL)


def test_a_gan_with_two_optimizers_fits_as_keras():
    x, z = images()
    theirs, mine = twins(gan, x)
    assert [v.shape for v in mine.trainable_variables] == [tuple(v.shape) for v in theirs.trainable_variables]
    compile_gan(keras, theirs)
    compile_gan(bf, mine)
    start = mine.get_weights()
    fits = [m.fit(x, z, batch_size=8, epochs=3, shuffle=False, verbose=0) for m in (theirs, mine)]
    assert set(fits[0].history) == {"d_loss", "g_loss"}
    assert_same_fit(theirs, mine, fits, {"d_loss", "g_loss"})
    assert not np.allclose(mine.get_weights()[0], start[0])              # it trained


def test_the_custom_step_in_fit_equals_a_train_on_batch_loop():
    x, y = regression(n=40)
    fitted, stepped = guide_model(bf), guide_model(bf)
    fitted(x[:1])
    stepped(x[:1])
    stepped.set_weights(fitted.get_weights())
    fitted.compile(optimizer=bf.optimizers.Adam(0.01))
    stepped.compile(optimizer=bf.optimizers.Adam(0.01))
    history = fitted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # reset_metrics=True: each call's Mean("loss") holds that batch's loss only
    losses = [float(stepped.train_on_batch(x[i:i + 16], y[i:i + 16], return_dict=True)["loss"]) for i in (0, 16, 32)]
    # the tracker's Mean of three batch losses, each counted once (the partial batch of 8 too)
    np.testing.assert_allclose(history.history["loss"][0], np.mean(losses), rtol=1e-6)
    for a, b in zip(fitted.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def new_gan(steps="auto"):
    """A batchfit GAN with fixed weights and two Adams (their states are what the tests follow)."""
    model = gan(bf)
    model(np.zeros((1, 12), np.float32))
    model.set_weights([np.full(w.shape, 0.01 * (i + 1), np.float32) + 0.001 * np.arange(w.size).reshape(w.shape)
                       for i, w in enumerate(model.get_weights())])
    compile_gan(bf, model, "Adam", 1e-2, steps_per_execution=steps)
    return model


def fit(model, x, z, epochs=2, **kwargs):
    return model.fit(x, z, batch_size=8, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def counted(model) -> list:
    """The num_steps of every compiled fit call the model makes from now on."""
    dispatched, chunk = [], model._exe.fit_chunk
    model._exe = model._exe._replace(fit_chunk=lambda *a, **k: dispatched.append(k["num_steps"]) or chunk(*a, **k))
    return dispatched


def test_steps_per_execution_1_and_auto_train_alike_and_the_optimizers_states_advance():
    x, z = images(n=36)                     # 5 batches per epoch, the last of 4
    one, auto = new_gan(1), new_gan("auto")
    fit(one, x, z, epochs=1)                # builds and traces; the next fit reuses the entry points
    fit(auto, x, z, epochs=1)
    calls = counted(one), counted(auto)
    h1, h2 = fit(one, x, z), fit(auto, x, z)
    assert [len(c) for c in calls] == [10, 2]        # "auto": each epoch's 4 full batches in one scan, + the tail
    for name in ("d_loss", "g_loss"):
        np.testing.assert_allclose(h2.history[name], h1.history[name], rtol=1e-6)
    for a, b in zip(one.get_weights(), auto.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    extras = auto.get_position().train.opt_state[1]
    assert sorted(extras) == ["d_optimizer", "g_optimizer"]
    assert [int(extras[name][0]) for name in ("d_optimizer", "g_optimizer")] == [15, 15]   # Adam's count: 3 x 5


def test_a_gan_trains_on_a_dataset_with_a_callback_as_on_arrays():
    x, z = images(n=32)
    on_arrays = new_gan()
    history = fit(on_arrays, x, z)
    seen = []
    callback = bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["g_loss"]))
    streamed = new_gan()
    streamed.fit(bf.data.Dataset.from_tensor_slices((x, z)).batch(8), epochs=2, verbose=0, callbacks=[callback])
    np.testing.assert_allclose(seen, history.history["g_loss"], rtol=1e-6)
    for a, b in zip(streamed.get_weights(), on_arrays.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_the_optimizers_states_go_back_with_the_position():
    x, z = images(n=32)
    model = new_gan()
    fit(model, x, z, epochs=1)
    position = model.get_position()
    fit(model, x, z, epochs=1)
    after = model.get_weights()
    model.set_position(position)            # Adam's moments and counts included: epoch 1 again
    fit(model, x, z, epochs=2)
    for a, b in zip(model.get_weights(), after, strict=True):
        np.testing.assert_array_equal(a, b)


class RawLoss(bf.Model):
    """A step that logs raw batch values (no metric): fit reports their batch-size-weighted epoch mean."""

    def __init__(self):
        super().__init__()
        self.dense = bf.layers.Dense(1)

    def call(self, x, training=False):
        return self.dense(x)

    def train_step(self, state, data):
        tv, ntv, ov, mv = state
        x, y = data[0], data[1]
        y_pred, ntv = self.stateless_call(tv, ntv, x)
        loss = jnp.mean(jnp.square(y_pred - y))
        return {"loss": loss, "mean_y": jnp.mean(y)}, (tv, ntv, ov, mv)      # no update


def test_raw_logs_are_batch_size_weighted_epoch_means():
    x = np.ones((10, 1), np.float32)
    y = np.arange(10, dtype=np.float32).reshape(10, 1)
    model = RawLoss()
    model(x[:1])
    model.set_weights([np.zeros((1, 1), np.float32), np.zeros(1, np.float32)])   # y_pred = 0
    model.compile(optimizer="sgd")
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    # batches [0..3], [4..7], [8, 9]: mean squares 3.5, 31.5, 72.5 -> (4*3.5 + 4*31.5 + 2*72.5) / 10 = 28.5
    assert history.history["loss"] == pytest.approx([28.5])
    assert history.history["mean_y"] == pytest.approx([4.5])     # (4*1.5 + 4*5.5 + 2*8.5) / 10
    assert history.batch_history["loss"][0] == pytest.approx([3.5, 31.5, 72.5])


class WrongState(RawLoss):
    def train_step(self, state, data):
        return {"loss": jnp.float32(0.0)}, (state[0][:1], *state[1:])


def test_a_step_returning_the_wrong_state_is_refused_before_training():
    model = WrongState()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"returned has 1 trainable_variables; the model has 2"):
        model.fit(np.ones((4, 1), np.float32), np.ones((4, 1), np.float32), verbose=0)


def test_evaluate_without_a_test_step_says_what_to_define():
    model = RawLoss()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="defines train_step but not test_step"):
        model.evaluate(np.ones((4, 1), np.float32), np.ones((4, 1), np.float32), verbose=0)


class NnxStep(bf.Model):
    """bf.Model(nnx_module) with its own step: MSE and the compiled optimizer, written by hand."""

    def train_step(self, state, data):
        tv, ntv, ov, mv = state
        x, y = data[0], data[1]

        def loss_fn(tv):
            y_pred, _ = self.stateless_call(tv, ntv, x, training=True)
            return jnp.mean(jnp.square(y_pred - y))
        loss, grads = jax.value_and_grad(loss_fn)(tv)
        tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
        return {"loss": loss}, (tv, ntv, ov, mv)


def test_an_nnx_module_with_its_own_step_trains_as_the_built_in_step():
    from flax import nnx
    x, y = regression(n=20, features=3)
    mine, builtin = (m(nnx.Linear(3, 1, rngs=nnx.Rngs(0))) for m in (NnxStep, bf.Model))
    mine.compile(optimizer=bf.optimizers.SGD(0.1))
    builtin.compile(optimizer=bf.optimizers.SGD(0.1), loss="mse")
    fits = [m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0) for m in (mine, builtin)]
    # the raw batch losses, weighted by batch size over the epoch: the built-in loss's semantics
    np.testing.assert_allclose(fits[0].history["loss"], fits[1].history["loss"], rtol=1e-6)
    for a, b in zip(mine.get_weights(), builtin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_backup_and_restore_brings_back_both_optimizers(tmp_path):
    x, z = images(n=32)
    straight = new_gan()
    fit(straight, x, z, epochs=2)
    stop = bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(first, "stop_training", True))
    first = new_gan()                      # stopped after epoch 0, its backup kept
    fit(first, x, z, epochs=2, callbacks=[bf.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False), stop])
    resumed = new_gan()                    # fresh weights and optimizers: all of epoch 1's start comes from the backup
    fit(resumed, x, z, epochs=2, callbacks=[bf.callbacks.BackupAndRestore(tmp_path)])
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
