"""Which numbers sample and class weights reach, as Keras 3: the loss and `weighted_metrics=` see them,
`metrics=` do not, and `class_weight` weighs the training data only (never the validation slice).

Keras 3 runs here on JAX (KERAS_BACKEND=jax): the same model, weights, data and order in both.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")

RTOL = 1e-5


def data(n=60, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1.0).astype(np.int32)
    return x, y


def classifier(lib, seed=0):
    return lib.Sequential([lib.Input((4,)), lib.layers.Dense(5, activation="tanh"),
                           lib.layers.Dense(3, activation="softmax")])


def pair(compile_args):
    """(Keras model, batchfit model) with Keras's initial weights, both compiled alike with SGD."""
    keras.utils.set_random_seed(0)
    theirs, mine = classifier(keras), classifier(bf)
    mine.set_weights(theirs.get_weights())
    theirs.compile(optimizer=keras.optimizers.SGD(0.3), **compile_args)
    mine.compile(optimizer=bf.optimizers.SGD(0.3), **compile_args)
    return theirs, mine


def assert_history_close(mine, theirs):
    assert set(mine.history) == set(theirs.history)
    for name in theirs.history:
        np.testing.assert_allclose(mine.history[name], theirs.history[name], rtol=RTOL, err_msg=name)


ARGS = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"])


@pytest.mark.parametrize("weights", ["class_weight", "sample_weight"])     # Keras refuses both at once
def test_fit_with_weights_and_a_validation_split_matches_keras(weights):
    x, y = data()
    rng = np.random.default_rng(1)
    given = {}
    if weights == "class_weight":
        given["class_weight"] = {0: 0.2, 1: 3.0, 2: 7.0}
    else:
        given["sample_weight"] = rng.uniform(0.0, 2.0, size=len(x)).astype(np.float32)
    histories = []
    for model in pair(ARGS):
        histories.append(model.fit(x, y, batch_size=16, epochs=2, shuffle=False, validation_split=0.25,
                                   verbose=0, **given))
    theirs, mine = histories
    assert_history_close(mine, theirs)


def test_class_weight_leaves_the_validation_loss_unweighted():
    """val_loss with class_weight equals evaluate() on the validation slice without weights."""
    x, y = data()
    _, mine = pair(dict(loss="sparse_categorical_crossentropy"))
    history = mine.fit(x, y, batch_size=16, epochs=1, shuffle=False, validation_split=0.25, verbose=0,
                       class_weight={0: 0.2, 1: 3.0, 2: 7.0})
    assert history.history["val_loss"][0] == pytest.approx(mine.evaluate(x[45:], y[45:], verbose=0), rel=1e-6)


def test_unweighted_and_weighted_accuracy_by_hand():
    """Weights 1 for the first 10 samples and 0 after: weighted accuracy counts the first 10 only."""
    x, y = data(20)
    _, mine = pair(dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                        weighted_metrics=["accuracy"]))
    weights = np.r_[np.ones(10), np.zeros(10)].astype(np.float32)
    logs = mine.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    hits = np.argmax(mine.predict(x, verbose=0), axis=-1) == y
    assert logs["accuracy"] == pytest.approx(hits.mean())
    assert logs["weighted_accuracy"] == pytest.approx(hits[:10].mean())


def test_train_on_batch_weights_only_weighted_metrics():
    x, y = data(8)
    theirs, mine = pair(ARGS)
    weights = np.linspace(0.0, 2.0, 8).astype(np.float32)
    for model in (theirs, mine):
        model.train_on_batch(x, y, sample_weight=weights)
    want = theirs.test_on_batch(x, y, sample_weight=weights, return_dict=True)
    got = mine.test_on_batch(x, y, sample_weight=weights, return_dict=True)
    assert set(got) == set(want)
    for name in want:
        assert float(got[name]) == pytest.approx(float(want[name]), rel=RTOL), name


def test_multi_output_weighted_metrics_match_keras():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3)).astype(np.float32)
    ys = {"r": x.sum(1, keepdims=True), "c": (x[:, :1] > 0).astype(np.float32)}

    def build(lib):
        inp = lib.Input((3,), name="x")
        h = lib.layers.Dense(4, activation="tanh", name="h")(inp)
        return lib.Model(inp, {"r": lib.layers.Dense(1, name="r")(h),
                               "c": lib.layers.Dense(1, activation="sigmoid", name="c")(h)})
    keras.utils.set_random_seed(0)
    theirs, mine = build(keras), build(bf)
    mine.set_weights(theirs.get_weights())
    args = dict(loss={"r": "mse", "c": "binary_crossentropy"}, metrics={"r": ["mae"], "c": ["accuracy"]},
                weighted_metrics={"r": ["mae"], "c": ["accuracy"]})
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), **args)
    mine.compile(optimizer=bf.optimizers.SGD(0.1), **args)
    weights = rng.uniform(0.0, 2.0, size=24).astype(np.float32)
    histories = [m.fit(x, ys, sample_weight=weights, batch_size=8, epochs=2, shuffle=False, verbose=0)
                 for m in (theirs, mine)]
    assert_history_close(histories[1], histories[0])


def test_weighted_metrics_survive_save_and_load(tmp_path):
    x, y = data(20)
    _, mine = pair(dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"]))
    mine.save(tmp_path / "m.keras")
    loaded = bf.models.load_model(tmp_path / "m.keras")
    weights = np.r_[np.ones(10), np.zeros(10)].astype(np.float32)
    logs = [m.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True) for m in (mine, loaded)]
    assert logs[0] == logs[1] and set(logs[0]) == {"loss", "accuracy", "weighted_accuracy"}
