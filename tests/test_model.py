"""The Model shell: predict, weights, the cached train_on_batch step, lazy results."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from pytest import approx

import batchfit as bf
from conftest import linear_model


def test_predict_matches_the_weights_by_hand():
    model = linear_model([1.0, -2.0], bias=0.5)
    x = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]], np.float32)
    expected = x @ np.array([1.0, -2.0]) + 0.5                       # -0.5, 2.5, -5.5
    np.testing.assert_allclose(model.predict(x, batch_size=2).ravel(), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x).ravel(), expected, rtol=1e-6)


def test_train_on_batch_is_traced_once_per_signature_and_returns_a_lazy_scalar():
    traces = []

    def loss(y_true, y_pred):
        traces.append(1)
        return bf.losses.mean_squared_error(y_true, y_pred)

    model = linear_model([0.0])
    model.compile(optimizer="sgd", loss=loss)
    x, y = np.ones((4, 1), np.float64), np.ones((4, 1), np.float64)   # float64 in, float32 inside
    results = [model.train_on_batch(x, y) for _ in range(5)]
    assert len(traces) == 2            # the step once, and the loss once when y's layout is first checked
    assert isinstance(results[0], jax.Array) and results[0].shape == ()
    assert float(results[0]) == approx(1.0)                           # (0 - 1)^2
    assert np.mean(results) < 1.0 and f"{results[0]:.3f}" == "1.000"
    model.train_on_batch(np.ones((3, 1)), np.ones((3, 1)))             # a new batch size: one more trace
    assert len(traces) == 3


def test_metrics_list_and_dict_results():
    model = linear_model([1.0])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    x, y = np.array([[1.0], [2.0]]), np.array([[2.0], [2.0]])          # errors -1, 0
    loss, mae = model.test_on_batch(x, y)
    assert (float(loss), float(mae)) == (approx(0.5), approx(0.5))
    assert sorted(model.evaluate(x, y, return_dict=True, verbose=0)) == ["loss", "mae"]
    assert model.metrics_names == ["loss", "mae"]


def test_accuracy_follows_the_loss():
    model = bf.Sequential([bf.layers.Dense(3, activation="softmax", input_shape=(2,))], seed=0)
    model.set_weights([np.array([[5.0, 0, 0], [0, 5.0, 0]], np.float32), np.zeros(3, np.float32)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    _, accuracy = model.evaluate(x, np.array([0, 1, 1, 2]), verbose=0)
    assert accuracy == approx(0.5)           # argmax 0, 1, 0, 0 against labels 0, 1, 1, 2


def test_weights_round_trip_and_module_stays_in_sync():
    model = bf.Sequential([bf.layers.Dense(4, input_shape=(3,)), bf.layers.BatchNormalization(),
                           bf.layers.Dense(1)], seed=1)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 1), (1,)]  # kernel, bias, gamma, beta, mean, var
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0)
    weights = model.get_weights()
    clone = bf.Sequential([bf.layers.Dense(4, input_shape=(3,)), bf.layers.BatchNormalization(),
                           bf.layers.Dense(1)], seed=2)
    clone.set_weights(weights)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(clone.predict(x), model.predict(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.module(x)), model.predict(x), rtol=1e-5)   # eager vs compiled


def test_sequential_infers_its_input_shape_from_the_first_batch():
    model = bf.Sequential([bf.layers.Dense(2), bf.layers.Dense(1)], seed=0)
    assert model.get_weights() == []
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 5)), np.ones((4, 1)), verbose=0)
    assert [w.shape for w in model.get_weights()] == [(5, 2), (2,), (2, 1), (1,)]
    with pytest.raises(ValueError, match="float32"):
        model.predict(np.ones((2, 6)))


def test_build_takes_the_keras_batch_shape_or_the_per_sample_shape_and_keeps_built_weights():
    """Keras code calls model.build((None, 10)); batchfit's own per-sample (10,) builds the same
    weights (same seed). Building again keeps the trained weights; another shape is refused."""
    keras_style = bf.Sequential([bf.layers.Dense(3), bf.layers.Dense(1)], seed=4)
    keras_style.build((None, 10))
    per_sample = bf.Sequential([bf.layers.Dense(3), bf.layers.Dense(1)], seed=4)
    per_sample.build((10,))
    assert [w.shape for w in keras_style.get_weights()] == [(10, 3), (3,), (3, 1), (1,)]
    for a, b in zip(keras_style.get_weights(), per_sample.get_weights()):
        np.testing.assert_array_equal(a, b)
    keras_style.compile(optimizer="sgd", loss="mse")
    keras_style.fit(np.ones((8, 10), np.float32), np.zeros((8, 1), np.float32), verbose=0)
    trained = keras_style.get_weights()
    assert not np.array_equal(trained[0], per_sample.get_weights()[0])
    keras_style.build((None, 10))
    for a, b in zip(trained, keras_style.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"built for per-sample inputs of shape \(10,\); build\(\(None, 12\)\) "
                                         r"asks for \(12,\)"):
        keras_style.build((None, 12))


def test_a_users_module_is_written_back_when_fit_returns_and_never_shares_donated_buffers():
    from flax import nnx
    module = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    kernel0 = np.array(module.kernel.get_value())
    model = bf.Model(module)
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    # one SGD step of mse on a constant batch, by hand: grad_k = 2 * mean(pred - y) * x
    pred = float(np.ones(3) @ kernel0[:, 0])
    np.testing.assert_allclose(module.kernel.get_value()[:, 0], kernel0[:, 0] - 0.01 * 2 * pred, rtol=1e-5)
    before = np.array(module.kernel.get_value())
    model.train_on_batch(x, y)                      # donates the state: the module's arrays must survive
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(module.kernel.get_value(), before)   # written back on read or fit, not per call
    kernel = next(w for w in model.get_weights() if w.shape == (3, 1))
    assert not np.array_equal(kernel, before)
    np.testing.assert_array_equal(np.asarray(model.module.kernel.get_value()), kernel)
    model.set_weights([w * 0 for w in model.get_weights()])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)       # zero weights, zero targets: nothing moves
    np.testing.assert_array_equal(module.kernel.get_value(), np.zeros((3, 1)))


def test_a_second_process_finds_every_program_in_the_compilation_cache(tmp_path):
    """The cache is on by default: a second process that builds the same model with a fresh
    seed (other weights, drawn on the host) and fits it compiles nothing new."""
    code = ("import numpy as np, batchfit as bf\n"
            "m = bf.Sequential([bf.layers.Dense(4, activation='relu', input_shape=(3,)), bf.layers.Dense(1)])\n"
            "m.compile(optimizer='adam', loss='mse')\n"
            "x = np.linspace(0, 1, 30, dtype=np.float32).reshape(10, 3)\n"
            "m.fit(x, x[:, :1], batch_size=4, verbose=0)\n"
            "print(repr(m.get_weights()[0].tolist()))\n")
    env = {**os.environ, "BATCHFIT_COMPILATION_CACHE": "1", "BATCHFIT_CACHE_DIR": str(tmp_path)}

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip(), sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-atime"))
    weights_1, cached_1 = run()
    weights_2, cached_2 = run()
    assert weights_1 != weights_2                          # fresh seeds: other initial weights
    assert len(cached_1) >= 2, cached_1                   # the optimizer's start and the fit program at least
    assert cached_2 == cached_1                            # nothing compiled in the second process
