"""Keras's JAX step protocol, continued, against Keras 3 itself (KERAS_BACKEND=jax): fit on x alone (a
GAN's images), an overridden predict_step, unpack_x_y_sample_weight, the regularization penalties in
compute_loss, and logs only test_step reports. Same model code in both libraries, same initial weights.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf
from test_custom_step import RTOL, RawLoss, assert_same_fit, compile_gan, gan, guide_model, images, regression, twins

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def images_only_gan(lib):
    """The dense GAN of test_custom_step, fed images alone: its latent is a fixed function of the batch (so
    that both libraries see the same numbers), read from `data` with unpack_x_y_sample_weight."""
    base = gan(lib)

    class ImagesOnly(type(base)):
        def train_step(self, state, data):
            real, y, _ = lib.utils.unpack_x_y_sample_weight(data)
            assert y is None                                  # fit(x) passes the x batch alone
            return super().train_step(state, (real, jnp.tanh(2.0 * real[:, :4] - 1.0)))
    return ImagesOnly(base.discriminator, base.generator)


def test_a_gan_fits_on_images_alone_as_keras_and_on_a_dataset_or_generator_of_them():
    x, _ = images(n=36)                     # batches of 8: 4 full and a partial one of 4 per epoch
    theirs, mine = twins(images_only_gan, x)
    start = mine.get_weights()
    compile_gan(keras, theirs)
    compile_gan(bf, mine)
    fits = [m.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0) for m in (theirs, mine)]
    assert set(fits[1].history) == {"d_loss", "g_loss"} == set(fits[0].history)
    assert_same_fit(theirs, mine, fits, {"d_loss", "g_loss"})
    for data in (bf.data.Dataset.from_tensor_slices(x).batch(8), (x[i:i + 8] for i in range(0, 36, 8))):
        again = images_only_gan(bf)
        again(x[:1])
        again.set_weights(start)
        compile_gan(bf, again)
        history = again.fit(data, epochs=2 if isinstance(data, bf.data.Dataset) else 1, verbose=0)
        epochs = len(history.history["g_loss"])
        np.testing.assert_allclose(history.history["g_loss"], fits[1].history["g_loss"][:epochs], rtol=1e-6)
        if epochs == 2:
            for a, b in zip(again.get_weights(), mine.get_weights(), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


class MeanOfX(RawLoss):
    """A step that only logs the mean of its x batch (data is x alone) and changes nothing."""

    def train_step(self, state, data):
        return {"mean_x": jnp.mean(data)}, state


@pytest.mark.parametrize("kind", ["arrays", "dataset", "generator"])
def test_raw_logs_of_x_alone_are_batch_size_weighted(kind):
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    data = {"arrays": x, "dataset": bf.data.Dataset.from_tensor_slices(x).batch(4),
            "generator": (x[i:i + 4] for i in range(0, 10, 4))}[kind]
    model = MeanOfX()
    model.compile(optimizer="sgd")
    history = model.fit(data, batch_size=4 if kind == "arrays" else None, shuffle=False, verbose=0)
    # batches [0..3], [4..7], [8, 9]: means 1.5, 5.5, 8.5 -> (4*1.5 + 4*5.5 + 2*8.5) / 10 = 4.5 (not 5.17)
    assert history.history["mean_x"] == pytest.approx([4.5])


def test_weights_without_targets_are_refused_before_training():
    model = images_only_gan(bf)
    compile_gan(bf, model)
    x, _ = images(n=8)
    with pytest.raises(ValueError, match=r"`sample_weight` was given without targets `y`"):
        model.fit(x, sample_weight=np.ones(8, np.float32), verbose=0)


def predicting(lib, pairs=True):
    """The guide model with a predict_step: sigmoid(2 * the output), read through unpack_x_y_sample_weight."""
    base = guide_model(lib)

    class Predicting(type(base)):
        def predict_step(self, state, data):
            x, _, _ = lib.utils.unpack_x_y_sample_weight(data)
            y_pred, ntv = self.stateless_call(state[0], state[1], x, training=False)
            out = jax.nn.sigmoid(2.0 * y_pred)
            return (out, ntv) if pairs else out
    return Predicting()


def test_predict_and_predict_on_batch_run_the_models_predict_step_as_keras():
    x, y = regression(n=40)
    theirs, mine = twins(predicting, x)
    # uncompiled: 40 rows in batches of 16, a partial one of 8 in predict's scan
    np.testing.assert_allclose(mine.predict(x, batch_size=16, verbose=0),
                               theirs.predict(x, batch_size=16, verbose=0), rtol=RTOL)
    for m, opt in ((theirs, keras.optimizers.Adam(0.01)), (mine, bf.optimizers.Adam(0.01))):
        m.compile(optimizer=opt)
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    out = mine.predict(x, batch_size=16, verbose=0)
    np.testing.assert_allclose(out, theirs.predict(x, batch_size=16, verbose=0), rtol=RTOL)
    assert out.min() > 0 and out.max() < 1                   # the sigmoid of predict_step, not the plain call
    np.testing.assert_allclose(mine.predict_on_batch(x[:5]), theirs.predict_on_batch(x[:5]), rtol=RTOL)
    np.testing.assert_allclose(np.asarray(mine(x[:5])), np.asarray(theirs(x[:5])), rtol=RTOL)  # call: plain


def only_predicting(lib):
    """A plain subclassed model (built-in train_step) with its own predict_step: sigmoid(2 * the output)."""
    class OnlyPredicting(lib.Model):
        def __init__(self):
            super().__init__()
            self.dense = lib.layers.Dense(1)

        def call(self, x, training=False):
            return self.dense(x)

        def predict_step(self, state, data):
            x, _, _ = lib.utils.unpack_x_y_sample_weight(data)
            y_pred, ntv = self.stateless_call(state[0], state[1], x, training=False)
            return jax.nn.sigmoid(2.0 * y_pred), ntv
    return OnlyPredicting()


def test_a_predict_step_alone_keeps_the_built_in_fit_and_evaluate_as_keras():
    x, y = regression(n=40)
    theirs, mine = twins(only_predicting, x)
    for m, opt in ((theirs, keras.optimizers.SGD(0.05)), (mine, bf.optimizers.SGD(0.05))):
        m.compile(optimizer=opt, loss="mse", metrics=["mae"])
    fits = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0) for m in (theirs, mine)]
    assert_same_fit(theirs, mine, fits, {"loss", "mae"})
    np.testing.assert_allclose(mine.evaluate(x, y, verbose=0), theirs.evaluate(x, y, verbose=0), rtol=RTOL)
    out = mine.predict(x, batch_size=16, verbose=0)
    np.testing.assert_allclose(out, theirs.predict(x, batch_size=16, verbose=0), rtol=RTOL)
    assert out.min() > 0 and out.max() < 1                   # predict_step's sigmoid, not the plain call
    np.testing.assert_allclose(mine.predict_on_batch(x[:5]), theirs.predict_on_batch(x[:5]), rtol=RTOL)


def test_a_predict_step_returning_only_the_outputs_says_what_keras_expects():
    model = predicting(bf, pairs=False)
    with pytest.raises(TypeError, match=r"must return \(outputs, non_trainable_variables\)"):
        model.predict(np.ones((4, 8), np.float32), verbose=0)


@pytest.mark.parametrize("data", ["x", ("x",), ("x", "y"), ["x", "y", "w"]])
def test_unpack_x_y_sample_weight_reads_data_as_keras(data):
    assert bf.utils.unpack_x_y_sample_weight(data) == keras.utils.unpack_x_y_sample_weight(data)
    parts = bf.utils.unpack_x_y_sample_weight(data)
    assert bf.utils.pack_x_y_sample_weight(*parts) == keras.utils.pack_x_y_sample_weight(*parts)


def test_unpack_x_y_sample_weight_refuses_four_items():
    with pytest.raises(ValueError, match="got a tuple of 4 items"):
        bf.utils.unpack_x_y_sample_weight((1, 2, 3, 4))


def regularized(lib):
    """The guide's compiled-loss step (stateless_compute_loss) on a Dense with an L2 kernel penalty."""
    class Regularized(lib.Model):
        def __init__(self):
            super().__init__()
            self.dense = lib.layers.Dense(1, kernel_regularizer=lib.regularizers.L2(0.1))

        def call(self, x, training=False):
            return self.dense(x)

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            x, y = data[0], data[1]

            def loss_fn(tv):
                y_pred, _ = self.stateless_call(tv, ntv, x, training=True)
                return self.stateless_compute_loss(tv, ntv, mv, x=x, y=y, y_pred=y_pred)[0]
            loss, grads = jax.value_and_grad(loss_fn)(tv)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            return {"raw": loss}, (tv, ntv, ov, mv)
    return Regularized()


def test_compute_loss_adds_the_layers_regularization_penalties_as_keras():
    x, y = regression(n=32)
    theirs, mine = twins(regularized, x)
    for m, opt in ((theirs, keras.optimizers.SGD(0.1)), (mine, bf.optimizers.SGD(0.1))):
        m.compile(optimizer=opt, loss="mse")
    # outside a step: mse + 0.1 * sum(kernel ** 2), at the current weights
    kernel, bias = mine.get_weights()
    y_pred = x @ kernel + bias
    by_hand = np.mean((y_pred - y) ** 2) + 0.1 * np.sum(kernel.astype(np.float64) ** 2)
    np.testing.assert_allclose(float(mine.compute_loss(x, y, jnp.asarray(y_pred))), by_hand, rtol=1e-5)
    # one batch of 32 (Keras's History shows a raw log's last value; batchfit its weighted mean: equal here)
    fits = [m.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0) for m in (theirs, mine)]
    assert_same_fit(theirs, mine, fits, {"raw"})
    assert fits[1].history["raw"][0] == pytest.approx(by_hand, rel=1e-5)


def test_compute_loss_in_a_step_without_the_weights_says_to_use_stateless_compute_loss():
    class Direct(type(regularized(bf))):
        def train_step(self, state, data):
            y_pred, _ = self.stateless_call(state[0], state[1], data[0])
            return {"loss": self.compute_loss(data[0], data[1], y_pred)}, state
    model = Direct()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="Call self.stateless_compute_loss"):
        model.fit(np.ones((4, 8), np.float32), np.ones((4, 1), np.float32), verbose=0)


def with_test_only_log(lib):
    """The guide model whose test_step also tracks the largest error of each batch (Mean("max_err"))."""
    base = guide_model(lib)

    class TestOnly(type(base)):
        def __init__(self):
            super().__init__()
            self.max_err = lib.metrics.Mean(name="max_err")

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            logs, (tv, ntv, ov, head) = super().train_step((tv, ntv, ov, mv[:-2]), data)
            return logs, (tv, ntv, ov, list(head) + list(mv[-2:]))

        def test_step(self, state, data):
            tv, ntv, mv = state
            logs, (tv, ntv, head) = super().test_step((tv, ntv, mv[:-2]), data)
            y_pred, _ = self.stateless_call(tv, ntv, data[0], training=False)
            err = self.max_err.stateless_update_state(mv[-2:], jnp.max(jnp.abs(y_pred - data[1])))
            return {**logs, "max_err": self.max_err.stateless_result(err)}, (tv, ntv, list(head) + list(err))

        @property
        def metrics(self):
            return [self.loss_tracker, self.mae_metric, self.max_err]
    return TestOnly()


def test_logs_only_test_step_reports_reach_evaluate_and_validation_as_keras():
    x, y = regression(n=50)
    theirs, mine = twins(with_test_only_log, x)
    for m, opt in ((theirs, keras.optimizers.Adam(0.01)), (mine, bf.optimizers.Adam(0.01))):
        m.compile(optimizer=opt)
    fits = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_split=0.2)
            for m in (theirs, mine)]
    assert set(fits[1].history) == {"loss", "mae", "val_loss", "val_mae", "val_max_err"} == set(fits[0].history)
    assert_same_fit(theirs, mine, fits)
    logs = [m.evaluate(x, y, batch_size=16, verbose=0, return_dict=True) for m in (theirs, mine)]
    assert set(logs[1]) == {"loss", "mae", "max_err"} == set(logs[0])
    for name in logs[0]:
        np.testing.assert_allclose(logs[1][name], logs[0][name], rtol=RTOL, err_msg=name)
    batch = mine.test_on_batch(x[:16], y[:16], return_dict=True)
    assert set(batch) == {"loss", "mae", "max_err"}
    assert set(mine.train_on_batch(x[:16], y[:16], return_dict=True)) == {"loss", "mae"}


class DropoutGAN(bf.Model):
    """Sub-models with random state: Dropout in both; the step threads each one's slice of the
    non-trainable values (its random stream) through stateless_call, Keras's way. The discriminator
    runs twice per step, the generator once; plain SGD by hand."""

    def __init__(self):
        super().__init__()
        layers = bf.layers
        self.discriminator = bf.Sequential([bf.Input((12,)), layers.Dense(8, activation="relu"), layers.Dropout(0.5),
                                            layers.Dense(1)])
        self.generator = bf.Sequential([bf.Input((4,)), layers.Dropout(0.25), layers.Dense(12)])

    def call(self, x, training=False):
        return self.discriminator(x)

    def train_step(self, state, data):
        tv, ntv, ov, mv = state
        real, z = data
        nd, nnd = len(self.discriminator.trainable_variables), len(self.discriminator.non_trainable_variables)
        fake, g_ntv = self.generator.stateless_call(tv[nd:], ntv[nnd:], z, training=True)

        def loss_fn(d_tv):
            on_fake, d_ntv = self.discriminator.stateless_call(d_tv, ntv[:nnd], fake, training=True)
            on_real, d_ntv = self.discriminator.stateless_call(d_tv, d_ntv, real, training=True)
            return jnp.mean(on_fake) - jnp.mean(on_real), d_ntv
        (loss, d_ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv[:nd])
        d_tv = [w - 0.1 * g for w, g in zip(tv[:nd], grads)]
        return {"loss": loss}, (d_tv + list(tv[nd:]), list(d_ntv) + list(g_ntv), ov, mv)


def test_sub_models_with_dropout_advance_their_own_random_streams_in_the_fused_loop():
    x, z = images(n=40)
    models = []
    for steps in (1, "auto"):
        bf.utils.set_random_seed(0)         # the same random streams in both
        model = DropoutGAN()
        model(x[:1])
        model.set_weights([np.full(w.shape, 0.1, np.float32) for w in model.get_weights()])
        model.compile(optimizer="sgd", steps_per_execution=steps)
        models.append((model, model.fit(x, z, batch_size=8, epochs=2, shuffle=False, verbose=0)))
    (one, h1), (auto, h2) = models
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-6)
    for a, b in zip(one.get_weights(), auto.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Keras's count: one entry per random-stream value (key, count), in each sub-model's slice
    assert [len(m.non_trainable_variables) for m in (auto.discriminator, auto.generator, auto)] == [2, 2, 4]
    counts = [int(v.value) for v in auto.non_trainable_variables if v.shape == () and "int" in str(v.value.dtype)]
    assert counts == [20, 10]              # 10 steps: the discriminator ran twice per step, the generator once


def loss_scaling(lib):
    """A step that differentiates `optimizer.scale_loss(loss)`: Keras scales a custom step's loss only this way
    (in a StatelessScope of the optimizer's variables, as its own JAX step does; plain scale_loss fails there)."""
    class Scaled(lib.Model):
        def __init__(self):
            super().__init__()
            self.dense = lib.layers.Dense(1)

        def call(self, x, training=False):
            return self.dense(x)

        def scaled(self, loss, optimizer_variables):
            if lib is bf:
                return self.optimizer.scale_loss(loss)
            with keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, optimizer_variables))):
                return self.optimizer.scale_loss(loss)

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            x, y = data

            def loss_fn(tv):
                y_pred, _ = self.stateless_call(tv, ntv, x, training=True)
                loss = jnp.mean(jnp.square(y_pred.astype("float32") - y))
                return self.scaled(loss, ov), loss
            (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            return {"raw": loss}, (tv, ntv, ov, mv)     # not "loss": Keras reports its own unused tracker's 0
    return Scaled()


def test_a_custom_step_scales_its_loss_under_mixed_float16_as_keras():
    x, y = regression(n=32)
    try:
        for lib in (keras, bf):
            lib.mixed_precision.set_global_policy("mixed_float16")
        theirs, mine = twins(loss_scaling, x)
        for m, opt in ((theirs, keras.optimizers.SGD(0.1)), (mine, bf.optimizers.SGD(0.1))):
            m.compile(optimizer=opt)
        assert float(mine.optimizer.scale_loss(jnp.float32(1.0))) == 2.0**15      # Keras's initial scale
        # one batch per epoch: Keras's History (the last batch's raw value) and batchfit's (the mean) agree
        fits = [m.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0) for m in (theirs, mine)]
        scale = float(mine.optimizer.scale_loss(jnp.float32(1.0)))
    finally:
        for lib in (keras, bf):
            lib.mixed_precision.set_global_policy("float32")
    # the first step's float16 gradients overflow at 2**15: both libraries skip it (the second step's loss is
    # at the same weights) and halve the scale
    assert fits[1].history["raw"][0] == fits[1].history["raw"][1] and scale == 2.0**14
    assert fits[1].history["raw"][2] < 0.9 * fits[1].history["raw"][0]          # unscaled updates: it learns
    np.testing.assert_allclose(fits[1].history["raw"], fits[0].history["raw"], rtol=2e-3)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4)


def reconstructing(lib):
    """An autoencoder trained on x alone: its own train_step and test_step score mse(x, model(x)), with a
    Mean("loss") tracker, read through unpack_x_y_sample_weight as Keras's guide does."""

    class Reconstructing(lib.Model):
        def __init__(self):
            super().__init__()
            self.encode, self.decode = lib.layers.Dense(3, activation="tanh"), lib.layers.Dense(6)
            self.loss_tracker = lib.metrics.Mean(name="loss")

        def call(self, x, training=False):
            return self.decode(self.encode(x))

        def _score(self, tv, ntv, data):
            x, y, _ = lib.utils.unpack_x_y_sample_weight(data)
            assert y is None                                  # evaluate(x) passes the x batch alone
            out, ntv = self.stateless_call(tv, ntv, x, training=False)
            return jnp.mean(jnp.square(out - x)), ntv

        def train_step(self, state, data):
            tv, ntv, ov, mv = state
            (loss, ntv), grads = jax.value_and_grad(lambda w: self._score(w, ntv, data), has_aux=True)(tv)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            mv = self.loss_tracker.stateless_update_state(mv, loss)
            return {"loss": self.loss_tracker.stateless_result(mv)}, (tv, ntv, ov, mv)

        def test_step(self, state, data):
            tv, ntv, mv = state
            loss, ntv = self._score(tv, ntv, data)
            mv = self.loss_tracker.stateless_update_state(mv, loss)
            return {"loss": self.loss_tracker.stateless_result(mv)}, (tv, ntv, mv)

        @property
        def metrics(self):
            return [self.loss_tracker]
    return Reconstructing()


def test_evaluate_on_x_alone_runs_the_models_test_step_as_keras():
    x = np.random.default_rng(3).normal(size=(20, 6)).astype(np.float32)     # batches of 8: 8, 8 and 4
    theirs, mine = twins(reconstructing, x)
    for m, opt in ((theirs, keras.optimizers.SGD(0.1)), (mine, bf.optimizers.SGD(0.1))):
        m.compile(optimizer=opt)
    fits = [m.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0) for m in (theirs, mine)]
    assert_same_fit(theirs, mine, fits, {"loss"})
    losses = [m.evaluate(x, batch_size=8, verbose=0) for m in (theirs, mine)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=RTOL)
    # by hand: the Mean tracker weights each batch's mse by one, over the 3 batches (Keras's Mean of scalars)
    out = mine.predict(x, batch_size=8, verbose=0)
    by_batch = [np.mean(np.square(out[i:i + 8] - x[i:i + 8]), dtype=np.float64) for i in (0, 8, 16)]
    np.testing.assert_allclose(losses[1], np.mean(by_batch), rtol=1e-5)
    ds = bf.data.Dataset.from_tensor_slices(x).batch(8)
    np.testing.assert_allclose(mine.evaluate(ds, verbose=0), losses[1], rtol=1e-6)
