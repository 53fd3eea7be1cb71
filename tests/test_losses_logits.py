"""Crossentropy of a sigmoid / softmax output is computed from the logits inside a model, as Keras on
TensorFlow does (numbers worked out by hand), and nothing changes for a loss called on plain probabilities.

Clipping the probabilities to [1e-7, 1 - 1e-7] caps a wrong-side sample's loss at about 16 (15.94 in
float32) and gives it no gradient; from the logit z the loss is softplus(z) = 30.0 at z = 30.
"""

import gc
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytest import approx

import batchfit as bf
from batchfit import _logits

# The most a clipped sample can cost: -log(1 - (1 - 1e-7)), where 1 - 1e-7 rounds to 1 - 2**-23 in float32.
CLIPPED = -math.log(2.0 ** -23)                                # 15.94


def softplus(z):
    return math.log1p(math.exp(-abs(z))) + max(z, 0.0)


def saturated_model(activation="sigmoid", loss="binary_crossentropy", metrics=()):
    """Dense(1) with kernel 30, bias 0: logits +30 and -30 for x = +1, -1."""
    model = bf.Sequential([bf.layers.Dense(1, activation=activation, input_shape=(1,))], seed=0)
    model.set_weights([np.array([[30.0]], np.float32), np.array([0.0], np.float32)])
    model.compile(optimizer=bf.optimizers.SGD(0.01), loss=loss, metrics=list(metrics))
    return model


X = np.array([[1.0], [-1.0]], np.float32)
Y = np.array([[0.0], [0.0]], np.float32)                    # sample 0 is on the wrong side: p = sigmoid(30)


def test_saturated_sigmoid_bce_is_the_softplus_of_the_logit():
    model = saturated_model(metrics=[bf.losses.BinaryCrossentropy(name="bce")])
    expected = (softplus(30.0) + softplus(-30.0)) / 2        # (30.0 + 9.4e-14) / 2
    logs = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert logs["loss"] == approx(expected, rel=1e-6) and logs["loss"] == approx(15.0, rel=1e-6)
    assert logs["bce"] == approx(expected, rel=1e-6)          # the metric of the same output agrees
    assert logs["loss"] > CLIPPED / 2 + 7                      # clipped it would be 7.97


def test_saturated_sample_keeps_its_gradient():
    """dL/dw = mean_i (sigmoid(z_i) - y_i) x_i = ((1 - 9e-14) * 1 + 9e-14 * -1) / 2 = 0.5; dL/db = 0.5."""
    model = saturated_model(metrics=[bf.losses.BinaryCrossentropy(name="bce")])
    logs = model.train_on_batch(X, Y, return_dict=True)
    assert float(logs["loss"]) == approx(15.0, rel=1e-6) and float(logs["bce"]) == approx(15.0, rel=1e-6)
    kernel, bias = model.get_weights()
    assert kernel[0, 0] == approx(30.0 - 0.01 * 0.5, rel=1e-6)   # 29.995: clipped, no step at all
    assert bias[0] == approx(-0.01 * 0.5, rel=1e-4)


def test_label_smoothing_applies_to_the_logits():
    """t = 0 smoothed by 0.1 is 0.05: 0.05 softplus(-30) + 0.95 softplus(30) = 28.5 for sample 0."""
    model = saturated_model(loss=bf.losses.BinaryCrossentropy(label_smoothing=0.1))
    expected = (0.05 * softplus(-30) + 0.95 * softplus(30) + 0.05 * softplus(30) + 0.95 * softplus(-30)) / 2
    assert model.evaluate(X, Y, verbose=0) == approx(expected, rel=1e-6)    # (28.5 + 1.5) / 2 = 15.0


def test_outside_a_model_probabilities_are_clipped_as_before():
    p = bf.activations.sigmoid(jnp.float32(30.0)).reshape(1, 1)    # eager: no logits recorded
    assert float(bf.losses.binary_crossentropy(jnp.zeros((1, 1)), p)[0]) == approx(CLIPPED, rel=1e-4)
    assert float(bf.losses.BinaryCrossentropy()(jnp.zeros((1, 1)), p)) == approx(CLIPPED, rel=1e-4)


def test_jitted_function_uses_the_logits_and_its_gradient():
    """Any traced sigmoid -> loss pair (not only the engine's) gets the logits, float16 casts included."""
    def loss(z, dtype):
        return bf.losses.binary_crossentropy(jnp.zeros((2, 1)), bf.activations.sigmoid(z.astype(dtype)))
    z = jnp.array([[30.0], [-30.0]])
    for dtype in (jnp.float32, jnp.float16):
        values = jax.jit(loss, static_argnums=1)(z, dtype)
        np.testing.assert_allclose(np.asarray(values), [30.0, 0.0], atol=1e-6)
        grad = jax.jit(jax.grad(lambda z: jnp.sum(loss(z, dtype))))(z)
        np.testing.assert_allclose(np.asarray(grad), [[1.0], [0.0]], atol=1e-6)   # sigmoid(z) - 0


def test_softmax_over_another_axis_is_not_taken_for_logits():
    y = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    z = jnp.array([[0.0, 40.0], [0.0, 0.0]])
    by_rows = jax.jit(lambda z: bf.losses.categorical_crossentropy(y, bf.activations.softmax(z)))(z)
    np.testing.assert_allclose(np.asarray(by_rows), [40.0, math.log(2)], rtol=1e-6)    # logsumexp - z_0
    by_columns = jax.jit(lambda z: bf.losses.categorical_crossentropy(y, bf.activations.softmax(z, axis=0)))(z)
    p = np.exp(z - jax.scipy.special.logsumexp(z, axis=0))                                # columns sum to 1
    expected = -np.log(np.clip(p / p.sum(1, keepdims=True), 1e-7, 1 - 1e-7))[:, 0]
    np.testing.assert_allclose(np.asarray(by_columns), expected, rtol=1e-5)


def test_from_logits_on_a_sigmoid_output_warns_and_uses_the_logits():
    model = saturated_model(loss=bf.losses.BinaryCrossentropy(from_logits=True))
    with pytest.warns(UserWarning, match="output of a sigmoid"):
        assert model.evaluate(X, Y, verbose=0) == approx(15.0, rel=1e-6)


def test_nothing_is_kept_after_the_trace():
    """The records die with the traced outputs (other tests' traces may still be alive: count the change)."""
    gc.collect()
    before = set(_logits._ENTRIES)
    model = saturated_model()
    model.fit(X, Y, epochs=1, verbose=0)
    gc.collect()
    assert set(_logits._ENTRIES) <= before


def two_layer(output_activation, units, seed=0):
    return bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)),
                          bf.layers.Dense(units, activation=output_activation)], seed=seed)


def train_pair(units, probability_loss, logits_loss, y, activation_layer=False):
    """The same model trained with a sigmoid/softmax output + probability loss, and with a linear
    output + from_logits=True: History and weights must agree. Inputs are large, so many samples
    saturate (|logit| ~ 20-60)."""
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32) * 40
    activation = "sigmoid" if units == 1 else "softmax"
    if activation_layer:   # Dense(units) then Activation(...): the same numbers
        probability = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)),
                                     bf.layers.Dense(units), bf.layers.Activation(activation)], seed=0)
    else:
        probability = two_layer(activation, units)
    linear = two_layer(None, units)
    linear.set_weights(probability.get_weights())
    (w1, b1, w2, b2) = linear.get_weights()
    initial_logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    histories = []
    for model, loss in ((probability, probability_loss), (linear, logits_loss)):
        metric = bf.losses.get(loss).from_config({**bf.losses.get(loss).get_config(), "name": "m"})
        model.compile(optimizer=bf.optimizers.SGD(0.01), loss=loss, metrics=[metric])
        histories.append(model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history)
    evaluations = [m.evaluate(x, y, verbose=0) for m in (probability, linear)]
    return histories, evaluations, probability.get_weights(), linear.get_weights(), initial_logits


@pytest.mark.parametrize("units, probability_loss, logits_loss, activation_layer", [
    (1, "binary_crossentropy", bf.losses.BinaryCrossentropy(from_logits=True), False),
    (1, bf.losses.BinaryCrossentropy(label_smoothing=0.1), bf.losses.BinaryCrossentropy(True, 0.1), True),
    (1, "binary_focal_crossentropy", bf.losses.BinaryFocalCrossentropy(from_logits=True), False),
    (3, "categorical_crossentropy", bf.losses.CategoricalCrossentropy(from_logits=True), False),
    (3, "sparse_categorical_crossentropy", bf.losses.SparseCategoricalCrossentropy(True), True),
    (3, bf.losses.CategoricalFocalCrossentropy(gamma=1.0),
     bf.losses.CategoricalFocalCrossentropy(gamma=1.0, from_logits=True), False),
])
def test_probability_output_trains_as_logits_with_from_logits(units, probability_loss, logits_loss,
                                                                activation_layer):
    rng = np.random.default_rng(1)
    sparse = isinstance(logits_loss, bf.losses.SparseCategoricalCrossentropy)
    y = (rng.integers(0, 2, size=(16, 1)).astype(np.float32) if units == 1 else
         rng.integers(0, 3, size=(16,)) if sparse else np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=16)])
    (mine, theirs), evaluations, weights, linear_weights, logits = train_pair(
        units, probability_loss, logits_loss, y, activation_layer)
    assert np.abs(logits).max() > 20                  # saturated: clipping would change the numbers
    np.testing.assert_allclose(mine["loss"], theirs["loss"], rtol=1e-6)
    np.testing.assert_allclose(mine["m"], theirs["m"], rtol=1e-6)      # the train metric: logits too
    assert np.all(np.isfinite(mine["loss"]))
    np.testing.assert_allclose(mine["loss"], mine["m"], rtol=1e-6)
    assert evaluations[0] == approx(evaluations[1], rel=1e-6)
    for a, b in zip(weights, linear_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
