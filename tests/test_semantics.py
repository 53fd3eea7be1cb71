"""Every rule of the loss semantics (shared/API.md), against float64 NumPy by hand."""

import numpy as np
import optax
import pytest
from pytest import approx

import batchfit as bf
from conftest import linear_model, reference_sgd

W0, B0, LR = [0.5, 0.1, -0.3], 0.2, 0.05


def test_one_sgd_step():                      # y_pred = 2*1, y = 3, loss = 1
    model = linear_model([2.0])
    model.compile(optimizer=optax.sgd(0.1), loss="mse")
    assert float(model.train_on_batch(np.array([[1.0]]), np.array([[3.0]]))) == approx(1.0)
    assert model.get_weights()[0][0, 0] == approx(2.0 - 0.1 * 2 * (2.0 - 3.0))   # 2.2
    assert model.get_weights()[1][0] == approx(0.0 - 0.1 * 2 * (2.0 - 3.0))      # 0.2


def test_fit_partial_last_batch_is_weighted_by_its_size(regression_data):
    x, y = regression_data                     # 10 samples, batches of 4, 4, 2
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    expected, w, b = reference_sgd(x, y, W0, B0, LR, 4, 3)
    for e in range(3):
        assert history.batch_history["loss"][e] == approx(expected[e], rel=1e-5)
        l = expected[e]                        # n_b-weighted: (4*L0 + 4*L1 + 2*L2) / 10
        assert history.history["loss"][e] == approx((4 * l[0] + 4 * l[1] + 2 * l[2]) / 10, rel=1e-5)
        assert history.history["loss"][e] != approx(np.mean(l), rel=1e-4)   # not 1/3 each
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)
    assert model.get_weights()[1] == approx([b], rel=1e-5)


def test_batch_loss_is_measured_before_the_update(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse")
    before = np.mean((x @ np.array(W0) + B0 - y.ravel()) ** 2)
    assert float(model.train_on_batch(x, y)) == approx(before, rel=1e-6)
    assert float(model.evaluate(x, y, verbose=0)) < before


def test_evaluate_is_the_loss_of_the_final_weights_not_the_fit_figure(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    _, w, b = reference_sgd(x, y, W0, B0, LR, 4, 2)
    final = np.mean((x.astype(np.float64) @ w + b - y.ravel()) ** 2)
    assert model.evaluate(x, y, batch_size=3, verbose=0) == approx(final, rel=1e-5)
    assert history.history["loss"][-1] != approx(final, rel=1e-3)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "weighted_mean"])
def test_sample_weights_divide_by_batch_size_or_by_their_sum(regression_data, reduction):
    x, y = regression_data
    sw = np.array([1, 2, 0, 1, 3, 1, 0.5, 1, 2, 1], np.float32)
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse", loss_reduction=reduction)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, sample_weight=sw)
    expected, w, _ = reference_sgd(x, y, W0, B0, LR, 4, 2, weights=sw,
                                   weighted_mean=reduction == "weighted_mean")
    assert history.batch_history["loss"][1] == approx(expected[1], rel=1e-5)
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)


def test_class_weight_is_a_per_sample_weight_lookup():
    x = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    y = np.array([[0.0], [1.0], [1.0], [0.0]], np.float32)
    model = linear_model([0.5])
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    got = float(model.train_on_batch(x, y, class_weight={0: 2.0, 1: 0.5}))
    err2 = (x.ravel() * 0.5 - y.ravel()) ** 2                 # 0.25, 0, 0.25, 4
    assert got == approx(np.sum(np.array([2.0, 0.5, 0.5, 2.0]) * err2) / 4)   # 2.25


def test_regularization_is_included_in_the_batch_loss(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0, regularizer=bf.regularizers.l2(0.1))
    model.compile(optimizer=optax.sgd(LR), loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    expected, w, _ = reference_sgd(x, y, W0, B0, LR, 4, 2, l2=0.1)
    assert history.batch_history["loss"][0][0] == approx(
        np.mean((x[:4] @ np.array(W0) + B0 - y[:4].ravel()) ** 2) + 0.1 * np.sum(np.square(W0)), rel=1e-5)
    assert history.batch_history["loss"][1] == approx(expected[1], rel=1e-5)
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)


class Recorder(bf.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, dict(logs)))


@pytest.mark.parametrize("steps, indices", [(1, [0, 1, 2]), (2, [1, 2]), ("auto", [0, 1, 2])])
def test_batch_logs_are_running_means_with_exact_indices(regression_data, steps, indices):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse", steps_per_execution=steps)
    recorder = Recorder()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    l = reference_sgd(x, y, W0, B0, LR, 4, 1)[0][0]
    sizes = np.array([4, 4, 2])
    assert [b for b, _ in recorder.batches] == indices          # never past the last batch (2)
    for b, logs in recorder.batches:
        assert logs["loss"] == approx(np.sum(sizes[:b + 1] * l[:b + 1]) / sizes[:b + 1].sum(), rel=1e-5)
        assert logs["batch_loss"] == approx(l[b], rel=1e-5)


def test_validation_split_takes_the_last_fraction_before_shuffling(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=1, validation_split=0.3, verbose=0)
    pred = x @ np.array(W0) + B0
    assert history.history["val_loss"][0] == approx(np.mean((pred[7:] - y[7:, 0]) ** 2), rel=1e-5)
    assert history.history["loss"][0] == approx(np.mean((pred[:7] - y[:7, 0]) ** 2), rel=1e-5)


def test_train_on_batch_running_means_and_no_leak_into_evaluate(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(0.0), loss="mse", metrics=["mae"])
    per_sample = (x @ np.array(W0) + B0 - y.ravel()) ** 2
    abs_err = np.abs(x @ np.array(W0) + B0 - y.ravel())
    first = model.train_on_batch(x[:6], y[:6], reset_metrics=False, return_dict=True)
    second = model.train_on_batch(x[6:], y[6:], reset_metrics=False, return_dict=True)
    assert float(first["loss"]) == approx(per_sample[:6].mean(), rel=1e-5)
    assert float(second["loss"]) == approx(per_sample.mean(), rel=1e-5)    # (6*L0 + 4*L1) / 10
    assert float(second["mae"]) == approx(abs_err.mean(), rel=1e-5)
    raw = model.train_on_batch(x[6:], y[6:])                               # reset: this batch only
    assert float(raw[0]) == approx(per_sample[6:].mean(), rel=1e-5)
    loss, mae = model.evaluate(x[:2], y[:2], verbose=0)
    assert loss == approx(per_sample[:2].mean(), rel=1e-5)
    assert mae == approx(abs_err[:2].mean(), rel=1e-5)
    assert float(model.test_on_batch(x[:2], y[:2])[0]) == approx(loss, rel=1e-6)


def test_weighted_metrics_are_sample_weighted_means_and_metrics_plain_ones():
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    y = np.array([[1.0], [1.0], [4.0]], np.float32)
    model = linear_model([1.0])
    model.compile(optimizer=optax.sgd(0.0), loss="mse", metrics=["mae"], weighted_metrics=["mae"])
    out = model.evaluate(x, y, sample_weight=np.array([1.0, 3.0, 0.0]), batch_size=2, return_dict=True,
                         verbose=0)
    assert out["weighted_mae"] == approx((1 * 0 + 3 * 1 + 0 * 1) / 4)   # sum(w*|e|) / sum(w)
    assert out["mae"] == approx((0 + 1 + 1) / 3)                        # |e| = 0, 1, 1, unweighted
    assert out["loss"] == approx((2 * (0 + 3 * 1) / 2 + 1 * 0 / 1) / 3)  # n_b-weighted batch means


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "weighted_mean"])
@pytest.mark.parametrize("steps", [1, 2, "auto"])
def test_gradient_accumulation_is_one_batch_of_the_whole_group(regression_data, reduction, steps):
    x, y = regression_data                     # batches of 3, 3, 3, 1: groups {0, 1, 2} and {3} (cut by the epoch)
    sw = np.linspace(0.5, 2.0, len(x)).astype(np.float32)
    model = linear_model(W0, B0, regularizer=bf.regularizers.l2(0.1))
    model.compile(optimizer=optax.sgd(LR), loss="mse", loss_reduction=reduction, steps_per_execution=steps)
    history = model.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0, sample_weight=sw,
                        accumulate_steps=3)
    expected, w, b = reference_sgd(x, y, W0, B0, LR, 3, 2, weights=sw, weighted_mean=reduction == "weighted_mean",
                                   l2=0.1, accumulate=3)
    for e in range(2):
        assert history.batch_history["loss"][e] == approx(expected[e], rel=1e-5)
        assert history.history["loss"][e] == approx(np.dot(expected[e], [3, 3, 3, 1]) / 10, rel=1e-5)
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)
    assert model.get_weights()[1] == approx([b], rel=1e-5)


def test_accumulating_k_batches_equals_batches_k_times_larger(regression_data):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 1)).astype(np.float32)
    runs = []
    for batch_size, k in [(2, 3), (6, 1)]:
        model = linear_model(W0, B0)
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=batch_size, epochs=3, shuffle=False, verbose=0, accumulate_steps=k)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_over_a_stream_matches_arrays(regression_data):
    x, y = regression_data
    batches = [(x[i:i + 3], y[i:i + 3]) for i in range(0, 10, 3)]           # streamed: 3, 3, 3, 1
    weights = []
    for data in (dict(x=x, y=y, batch_size=3), dict(x=batches)):
        model = linear_model(W0, B0)
        model.compile(optimizer=optax.sgd(LR), loss="mse", steps_per_execution=2)
        model.fit(epochs=2, shuffle=False, verbose=0, accumulate_steps=3, **data)
        weights.append(model.get_weights())
    _, w, b = reference_sgd(x, y, W0, B0, LR, 3, 2, accumulate=3)
    for got in weights:
        assert got[0].ravel() == approx(w, rel=1e-5) and got[1] == approx([b], rel=1e-5)
