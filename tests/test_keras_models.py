"""Models built as Keras builds them (functional, subclassed, custom layers) train to Keras's own numbers.

Keras 3 runs here on JAX (KERAS_BACKEND=jax). Each test builds the same model in both, copies Keras's
initial weights into batchfit, trains both on the same data in the same order, and compares History
and the final weights.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")

RTOL = 1e-5


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)
    y1 = (a.sum(1, keepdims=True) - b[:, :1]).astype(np.float32)
    y2 = np.eye(2, dtype=np.float32)[(a[:, 0] > b[:, 1]).astype(int)]
    return a, b, y1, y2


def two_in_two_out(lib):
    """Inputs a [3] and b [2]; a shared Dense on both branches; outputs o1 (regression) and o2 (softmax)."""
    layers = lib.layers
    a, b = lib.Input((3,), name="a"), lib.Input((2,), name="b")
    shared = layers.Dense(4, activation="tanh", name="shared")
    h = layers.Concatenate(name="cat")([a, b])
    left = shared(layers.Dense(3, name="to3")(h))
    right = shared(a)
    o1 = layers.Dense(1, name="o1")(layers.Add(name="add")([left, right]))
    o2 = layers.Dense(2, activation="softmax", name="o2")(right)
    return lib.Model([a, b], [o1, o2])


def copy_by_name(source, target):
    for layer in source.layers:
        if layer.get_weights():
            target.get_layer(layer.name).set_weights(layer.get_weights())


def assert_history_close(mine, theirs):
    assert set(mine.history) == set(theirs.history)
    for name in theirs.history:
        np.testing.assert_allclose(mine.history[name], theirs.history[name], rtol=RTOL, err_msg=name)


def assert_weights_close(mine, theirs):
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)


def test_functional_two_inputs_two_outputs_matches_keras():
    a, b, y1, y2 = data()
    theirs, mine = two_in_two_out(keras), two_in_two_out(bf)
    assert [layer.name for layer in mine.layers] == [layer.name for layer in theirs.layers]
    copy_by_name(theirs, mine)
    settings = dict(loss={"o1": "mse", "o2": "categorical_crossentropy"}, loss_weights={"o1": 1.0, "o2": 0.5},
                    metrics={"o1": ["mae"], "o2": ["accuracy"]})
    theirs.compile(optimizer=keras.optimizers.SGD(0.05), **settings)
    mine.compile(optimizer=bf.optimizers.SGD(0.05), **settings)
    kwargs = dict(epochs=2, batch_size=16, shuffle=False, verbose=0)
    h_theirs = theirs.fit([a, b], [y1, y2], **kwargs)
    h_mine = mine.fit([a, b], [y1, y2], **kwargs)
    assert_history_close(h_mine, h_theirs)
    assert_weights_close(mine, theirs)
    mine_eval = mine.evaluate({"a": a, "b": b}, {"o1": y1, "o2": y2}, verbose=0, return_dict=True)
    theirs_eval = theirs.evaluate([a, b], [y1, y2], verbose=0, return_dict=True)
    assert mine_eval == pytest.approx(theirs_eval, rel=RTOL)
    p_mine, p_theirs = mine.predict([a, b], verbose=0), theirs.predict([a, b], verbose=0)
    assert isinstance(p_mine, list) and len(p_mine) == 2
    for m, t in zip(p_mine, p_theirs):      # outputs of order 1: float32 rounding after 2 epochs is ~1e-7 absolute
        np.testing.assert_allclose(m, t, rtol=RTOL, atol=1e-6)


def test_functional_list_losses_and_one_loss_for_every_output():
    a, b, y1, y2 = data(24, seed=1)
    for settings in (dict(loss=["mse", "categorical_crossentropy"], loss_weights=[0.3, 2.0],
                          metrics=[["mae"], ["accuracy"]]),
                     dict(loss="mse")):
        theirs, mine = two_in_two_out(keras), two_in_two_out(bf)
        copy_by_name(theirs, mine)
        theirs.compile(optimizer=keras.optimizers.SGD(0.1), **settings)
        mine.compile(optimizer=bf.optimizers.SGD(0.1), **settings)
        h_theirs = theirs.fit([a, b], [y1, y2], epochs=2, batch_size=10, shuffle=False, verbose=0)
        h_mine = mine.fit([a, b], [y1, y2], epochs=2, batch_size=10, shuffle=False, verbose=0)
        assert_history_close(h_mine, h_theirs)
        tob_mine = mine.train_on_batch([a[:8], b[:8]], [y1[:8], y2[:8]])
        tob_theirs = theirs.train_on_batch([a[:8], b[:8]], [y1[:8], y2[:8]])
        np.testing.assert_allclose(np.asarray(tob_mine, np.float64), tob_theirs, rtol=RTOL)


def make_subclassed(lib):
    layers = lib.layers

    class Net(lib.Model):
        def __init__(self):
            super().__init__()
            self.hidden = layers.Dense(6, activation="relu")
            self.norm = layers.LayerNormalization()
            self.out = layers.Dense(1)

        def call(self, x, training=False):
            return self.out(self.norm(self.hidden(x)))

    return Net()


def test_subclassed_model_matches_keras():
    a, _, y1, _ = data()
    theirs, mine = make_subclassed(keras), make_subclassed(bf)
    theirs(a[:1])                                  # Keras builds a subclassed model by calling it
    mine.build((None, 3))
    assert mine.count_params() == theirs.count_params() == 3 * 6 + 6 + 12 + 7
    mine.set_weights(theirs.get_weights())
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    mine.compile(optimizer=bf.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    h_theirs = theirs.fit(a, y1, epochs=2, batch_size=16, shuffle=False, verbose=0)
    h_mine = mine.fit(a, y1, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert_history_close(h_mine, h_theirs)
    assert_weights_close(mine, theirs)
    np.testing.assert_allclose(np.asarray(mine(a[:4])), np.asarray(theirs(a[:4])), rtol=RTOL, atol=1e-7)


def make_custom_layer(lib, ops):
    class Scaled(lib.layers.Layer):
        """x @ w + b, times a learned scale, plus a non-trainable running count of calls in training."""

        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="w")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, inputs):
            return ops.tanh(ops.matmul(inputs, self.w) + self.b) * self.scale

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    return Scaled


def test_custom_layer_matches_keras_in_sequential_and_functional():
    from batchfit import ops as bf_ops
    a, _, y1, _ = data()
    for build in ("sequential", "functional"):
        models = []
        for lib, ops in ((keras, keras.ops), (bf, bf_ops)):
            scaled = make_custom_layer(lib, ops)
            if build == "sequential":
                model = lib.Sequential([lib.Input((3,)), scaled(5, name="scaled"), lib.layers.Dense(1, name="head")])
            else:
                x = lib.Input((3,))
                model = lib.Model(x, lib.layers.Dense(1, name="head")(scaled(5, name="scaled")(x)))
            models.append(model)
        theirs, mine = models
        assert [w.shape for w in mine.weights] == [tuple(w.shape) for w in theirs.weights]
        mine.set_weights(theirs.get_weights())
        theirs.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        mine.compile(optimizer=bf.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        h_theirs = theirs.fit(a, y1, epochs=2, batch_size=8, shuffle=False, verbose=0)
        h_mine = mine.fit(a, y1, epochs=2, batch_size=8, shuffle=False, verbose=0)
        assert_history_close(h_mine, h_theirs)
        assert_weights_close(mine, theirs)
        scale = mine.get_layer("scaled").scale
        assert float(scale.numpy()) == pytest.approx(float(theirs.get_layer("scaled").scale.numpy()), rel=RTOL)
        assert float(scale.numpy()) != 1.0                     # trained, and read after fit


def summary_totals(model) -> list[str]:
    lines = []
    model.summary(print_fn=lambda text, **_: lines.append(text))
    return [line.strip() for line in "\n".join(lines).splitlines() if "params:" in line]


def test_summary_totals_equal_keras():
    pairs = []
    for lib in (keras, bf):
        model = lib.Sequential([lib.Input((10,)), lib.layers.Dense(64, activation="relu"),
                                lib.layers.BatchNormalization(), lib.layers.Dense(1)])
        pairs.append(model)
    theirs, mine = pairs
    assert summary_totals(mine) == summary_totals(theirs)
    assert summary_totals(mine) == ["Total params: 1,025 (4.00 KB)", "Trainable params: 897 (3.50 KB)",
                                    "Non-trainable params: 128 (512.00 B)"]
    f_theirs, f_mine = two_in_two_out(keras), two_in_two_out(bf)
    assert summary_totals(f_mine) == summary_totals(f_theirs)
    text = []
    f_mine.summary(print_fn=text.append)
    assert "Connected to" in text[0] and "cat[0][0]" in text[0] and "shared (Dense)" in text[0]


def test_a_stateful_metric_per_output_sees_only_its_output():
    """Keras 3.15 on this JAX cannot run such a metric in fit (its variable hits __jax_array__ while
    tracing), so the reference is the hand computation: the largest |y1 - o1| at fixed weights."""
    a, b, y1, y2 = data(30, seed=2)
    mine = two_in_two_out(bf)
    mine.compile(optimizer=bf.optimizers.SGD(0.05), loss=["mse", "mse"], metrics={"o1": [_peak(bf)()]})
    history = mine.fit([a, b], [y1, y2], epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert set(history.history) == {"loss", "o1_loss", "o2_loss", "o1_peak"}
    logs = mine.evaluate([a, b], [y1, y2], batch_size=7, verbose=0, return_dict=True)
    o1 = mine.predict([a, b], verbose=0)[0]
    assert logs["o1_peak"] == pytest.approx(float(np.max(np.abs(y1 - o1))), rel=1e-6)


def _peak(lib):
    class Peak(lib.metrics.Metric):
        def __init__(self, name="peak", **kwargs):
            super().__init__(name=name, **kwargs)
            self.peak = self.add_variable(shape=(), initializer="zeros", name="peak")

        def update_state(self, y_true, y_pred, sample_weight=None):
            ops = lib.ops
            self.peak.assign(ops.maximum(self.peak.value, ops.max(ops.abs(y_true - y_pred))))

        def result(self):
            return self.peak

        def reset_state(self):
            self.peak.assign(0.0)

    return Peak
