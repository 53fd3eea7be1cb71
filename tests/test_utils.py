"""batchfit.utils against keras.utils, and PyDataset in fit / evaluate / predict."""

import os
import random

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf
from batchfit import utils

keras = pytest.importorskip("keras")


# ----- to_categorical -------------------------------------------------------------------------

@pytest.mark.parametrize("labels, num_classes", [
    ([0, 2, 1], None), ([0, 2, 1], 3), ([0, 2, 1], 5), ([[0], [2], [1]], None),      # [N, 1] -> [N, C]
    ([[0, 1, 2], [2, 2, 0]], None), ([[[1]], [[0]]], 4), (3, None), ([1], 2),
    (np.array([1, 0, 3], np.int32), 0), (np.array([[1.0], [2.0]]), None),
])
def test_to_categorical_equals_keras(labels, num_classes):
    ours, theirs = utils.to_categorical(labels, num_classes), keras.utils.to_categorical(labels, num_classes)
    assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype == np.float64
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_to_categorical_of_a_jax_array_is_a_float32_jax_array():
    labels = jnp.asarray([[2], [0]])
    ours, theirs = utils.to_categorical(labels, 3), keras.utils.to_categorical(labels, 3)
    assert ours.dtype == theirs.dtype == jnp.float32 and ours.shape == theirs.shape == (2, 3)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(utils.to_categorical(labels), [[0, 0, 1], [1, 0, 0]])


def test_to_categorical_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, num_classes=3\).*from 0 to 3"):
        utils.to_categorical([0, 3], 3)
    with pytest.raises(ValueError, match="from -1 to 1"):     # Keras would silently mark the last class
        utils.to_categorical([-1, 1], 3)


# ----- pad_sequences --------------------------------------------------------------------------

SEQUENCES = [[1, 2, 3], [4], [5, 6], [], [7, 8, 9, 10]]


@pytest.mark.parametrize("kwargs", [
    {}, dict(maxlen=2), dict(maxlen=6), dict(padding="post"), dict(truncating="post", maxlen=2),
    dict(padding="post", truncating="post", maxlen=3, value=-1), dict(dtype="float32", value=0.5),
    dict(dtype="int64", maxlen=1), dict(maxlen=0),
])
def test_pad_sequences_equals_keras(kwargs):
    ours = utils.pad_sequences(SEQUENCES, **kwargs)
    theirs = keras.utils.pad_sequences(SEQUENCES, **kwargs) if kwargs.get("maxlen") != 0 else \
        np.zeros((len(SEQUENCES), 0), np.int32)              # Keras fails on maxlen=0 (s[-0:] keeps all)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_pad_sequences_of_vectors_arrays_and_strings():
    vectors = [np.ones((3, 2)), [[5, 6]]]
    for kwargs in ({}, dict(maxlen=2, padding="post", dtype="float32")):
        np.testing.assert_array_equal(utils.pad_sequences(vectors, **kwargs),
                                      keras.utils.pad_sequences(vectors, **kwargs))
    words = [["a", "bb"], ["ccc"]]
    for kwargs in (dict(dtype=object, value="<pad>"), dict(dtype="<U5", value="-"), dict(dtype="S3", value="-")):
        ours, theirs = utils.pad_sequences(words, **kwargs), keras.utils.pad_sequences(words, **kwargs)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    for module in (utils, keras.utils):                     # a string value needs a string or object dtype
        with pytest.raises(ValueError, match="dtype=object"):
            module.pad_sequences(words, value="<pad>")


def test_pad_sequences_errors():
    with pytest.raises(ValueError, match="`padding` must be 'pre' or 'post'; got padding='middle'"):
        utils.pad_sequences(SEQUENCES, padding="middle")
    with pytest.raises(ValueError, match="`truncating` must be 'pre' or 'post'"):
        utils.pad_sequences([[]], truncating="end")          # Keras only notices with a non-empty sequence
    with pytest.raises(ValueError, match="item 1 is a int"):
        utils.pad_sequences([[1], 2])
    with pytest.raises(ValueError, match=r"sequence 1 has items of shape \(3,\)"):
        utils.pad_sequences([np.ones((2, 2)), np.ones((1, 3))])


# ----- set_random_seed ------------------------------------------------------------------------

def unseeded_model():
    return bf.Sequential([bf.layers.Dense(5, input_shape=(3,), kernel_initializer="he_normal"),
                          bf.layers.Dense(1)])


def test_set_random_seed_repeats_python_numpy_and_unseeded_models():
    draws = []
    for _ in range(2):
        utils.set_random_seed(123)
        draws.append((random.random(), np.random.rand(), unseeded_model().get_weights()))
    assert draws[0][:2] == draws[1][:2]
    for a, b in zip(draws[0][2], draws[1][2]):
        np.testing.assert_array_equal(a, b)
    utils.set_random_seed(124)
    assert not np.array_equal(unseeded_model().get_weights()[0], draws[0][2][0])


@pytest.mark.parametrize("seed", [1.5, "1", True, -1, 2**32])
def test_set_random_seed_refuses_non_integers(seed):
    with pytest.raises(ValueError, match="set_random_seed"):
        utils.set_random_seed(seed)


# ----- PyDataset ------------------------------------------------------------------------------

def make_batches(sizes=(8, 8, 5), seed=0, weights=False):
    rng = np.random.default_rng(seed)
    batches = []
    for n in sizes:
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = (x @ np.float32([[1.0], [-2.0], [0.5]]) + 0.1).astype(np.float32)
        batches.append((x, y, rng.uniform(0.5, 2.0, n).astype(np.float32)) if weights else (x, y))
    return batches


class Batches(utils.PyDataset):
    """Serves fixed batches; records each read with the number of epochs ended before it."""

    def __init__(self, batches, **kwargs):
        super().__init__(**kwargs)
        self.batches, self.reads, self.ends, self.begins = batches, [], 0, 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        self.reads.append((self.ends, index))
        return self.batches[index]

    def on_epoch_begin(self):
        self.begins += 1

    def on_epoch_end(self):
        self.ends += 1


def compiled_model():
    model = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize("weights", [False, True])
def test_fit_on_a_py_dataset_equals_fit_on_the_list_of_its_batches(weights):
    batches, val = make_batches(weights=weights), make_batches((4, 6), seed=1)
    dataset, val_dataset = Batches(batches, workers=4, use_multiprocessing=True), Batches(val)
    ours, reference = compiled_model(), compiled_model()
    history = ours.fit(dataset, epochs=3, shuffle=True, validation_data=val_dataset, verbose=0)
    expected = reference.fit(batches, epochs=3, validation_data=val, verbose=0)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(history.history[key], expected.history[key], rtol=1e-6)
    np.testing.assert_allclose(history.batch_history["loss"], expected.batch_history["loss"], rtol=1e-6)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # one epoch = batches 0, 1, 2 in order (shuffle=True is ignored), then on_epoch_end, once per epoch
    assert dataset.reads == [(epoch, index) for epoch in range(3) for index in range(3)]
    assert dataset.ends == dataset.begins == 3
    assert val_dataset.ends == 3 and val_dataset.reads == [(e, i) for e in range(3) for i in range(2)]


def test_evaluate_and_predict_take_a_py_dataset():
    model, batches = compiled_model(), make_batches()
    dataset = Batches(batches)
    assert model.evaluate(dataset, verbose=0) == pytest.approx(model.evaluate(batches, verbose=0), rel=1e-6)
    assert dataset.ends == 1
    expected = model.predict(np.concatenate([x for x, _ in batches]), verbose=0)
    np.testing.assert_allclose(model.predict(Batches(batches), verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict(Batches([x for x, _ in batches]), verbose=0), expected, rtol=1e-6)


def test_on_epoch_end_may_reshuffle_for_the_next_epoch():
    """The usual PyDataset: batch i of the current permutation; on_epoch_end draws the next one."""
    x, y = make_batches((12,))[0]

    class Shuffled(utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order, self.seen = np.arange(12), []

        def __len__(self):
            return 3

        def __getitem__(self, index):
            rows = self.order[4 * index: 4 * index + 4]
            self.seen.append(rows)
            return x[rows], y[rows]

        def on_epoch_end(self):
            self.order = np.random.default_rng(len(self.seen)).permutation(12)

    dataset = Shuffled()
    compiled_model().fit(dataset, epochs=3, verbose=0)
    epochs = [np.concatenate(dataset.seen[3 * e: 3 * e + 3]) for e in range(3)]
    np.testing.assert_array_equal(epochs[0], np.arange(12))
    assert sorted(epochs[1]) == list(range(12)) and not np.array_equal(epochs[1], epochs[0])
    np.testing.assert_array_equal(epochs[1], np.random.default_rng(3).permutation(12))   # drawn after 3 reads


def test_an_endless_py_dataset_needs_steps_per_epoch():
    batches = make_batches()

    class Endless(utils.PyDataset):
        num_batches = None

        def __getitem__(self, index):
            return batches[index % 3]

    with pytest.raises(ValueError, match="Endless has no length.*steps_per_epoch"):
        compiled_model().fit(Endless(), epochs=1, verbose=0)
    history = compiled_model().fit(Endless(), epochs=2, steps_per_epoch=3, verbose=0)
    expected = compiled_model().fit(batches, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)


def test_a_keras_py_dataset_is_accepted():
    batches = make_batches()

    class KerasBatches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return batches[index]

    history = compiled_model().fit(KerasBatches(), epochs=2, verbose=0)
    expected = compiled_model().fit(batches, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)


class Returns(utils.PyDataset):
    def __init__(self, item, length=2):
        super().__init__()
        self.item, self.length = item, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.item


@pytest.mark.parametrize("dataset, error, message", [
    (Returns(None), TypeError, r"Returns\[0\] returned NoneType; a PyDataset's __getitem__ must return a batch"),
    (Returns("batch"), TypeError, r"Returns\[0\] returned str"),
    (Returns((1, 2, 3, 4)), TypeError, r"returned tuple of 4"),
    (Returns(make_batches()[0], length=0), ValueError, r"Returns has 0 batches .* at least 1"),
    (Returns((np.zeros((4, 3), np.float32),)), ValueError, r"x only"),
])
def test_a_bad_py_dataset_gets_a_clear_error(dataset, error, message):
    with pytest.raises(error, match=message):
        compiled_model().fit(dataset, epochs=1, verbose=0)


def test_a_py_dataset_with_y_is_refused():
    with pytest.raises(ValueError, match="`y` must not be given"):
        compiled_model().fit(Batches(make_batches()), np.zeros(21), verbose=0)
