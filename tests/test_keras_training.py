"""Whole fits against Keras 3 itself (KERAS_BACKEND=jax): a convolutional model trained two epochs
from Keras's initial weights, on the same batches in the same order, gives Keras's History and
final weights to 1e-5 relative. (The recurrent model's twin is in test_layers_recurrent.py.)
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")

RTOL = 1e-5


def images(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10, 10, 3)).astype(np.float32)
    y = (x[:, :5, :5, 0].mean((1, 2)) > x[:, 5:, 5:, 1].mean((1, 2))).astype(np.int32) + (x[:, :, :, 2].mean((1, 2)) > 0.1)
    return x, y.astype(np.int32)


def convnet(lib):
    layers = lib.layers
    return lib.Sequential([
        lib.Input((10, 10, 3)),
        layers.Conv2D(6, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, (3, 3), strides=1, activation="relu"),
        layers.Flatten(),
        layers.Dropout(0.0),
        layers.Dense(3, activation="softmax"),
    ])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_convnet_fits_to_keras_numbers(optimizer):
    x, y = images()
    keras.utils.set_random_seed(0)
    theirs, mine = convnet(keras), convnet(bf)
    mine.set_weights(theirs.get_weights())
    args = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    theirs.compile(optimizer=keras.optimizers.get(optimizer), **args)
    mine.compile(optimizer=bf.optimizers.get(optimizer), **args)
    fits = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, validation_split=0.25, verbose=0)
            for m in (theirs, mine)]
    assert set(fits[1].history) == set(fits[0].history)
    for name, values in fits[0].history.items():
        np.testing.assert_allclose(fits[1].history[name], values, rtol=RTOL, err_msg=name)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)
