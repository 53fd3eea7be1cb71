"""model.save / bf.load_model: a JSON + .npz folder that round-trips exactly, and never unpickles."""

import json
import os

import numpy as np
import pytest

import batchfit as bf

X = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
Y = (X[:, :1] > 0).astype(np.float32)


def trained(**compile_args):
    model = bf.Sequential([bf.layers.Dense(8, activation="relu"), bf.layers.BatchNormalization(),
                           bf.layers.Dropout(0.3), bf.layers.Dense(1, activation="sigmoid")], seed=4)
    model.compile(**{"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["accuracy"], **compile_args})
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0)       # shapes inferred from the data
    return model


def test_round_trip_gives_the_same_weights_predictions_and_compile_settings(tmp_path):
    model = trained()
    model.save(tmp_path / "m")
    loaded = bf.load_model(tmp_path / "m")
    for a, b in zip(model.get_weights(), loaded.get_weights()):   # BatchNorm moving statistics included
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.metrics_names == ["loss", "accuracy"]
    assert loaded.evaluate(X, Y, verbose=0) == pytest.approx(model.evaluate(X, Y, verbose=0), rel=1e-6)
    loaded.fit(X, Y, epochs=1, verbose=0)                      # trains on, with a fresh optimizer


def test_saving_again_replaces_the_earlier_save_only(tmp_path):
    model = trained()
    model.save(tmp_path / "m")
    model.fit(X, Y, epochs=1, verbose=0)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(bf.load_model(tmp_path / "m").get_weights()[0], model.get_weights()[0])
    assert sorted(os.listdir(tmp_path)) == ["m"]               # no temporary folders left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a batchfit model folder"):
        model.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_what_cannot_be_saved_or_loaded_says_why(tmp_path):
    custom = bf.Sequential([bf.layers.Dense(1, activation=lambda v: v, input_shape=(6,))])
    with pytest.raises(TypeError, match="by name"):
        custom.save(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(TypeError, match="bf.Sequential"):
        bf.Model(trained().module).save(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="model.json"):
        bf.load_model(tmp_path / "nothing")


def test_loading_never_unpickles(tmp_path):
    model = trained()
    model.save(tmp_path / "m")
    np.savez(tmp_path / "m" / "weights.npz", w0=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        bf.load_model(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(ValueError, match="version 1"):
        bf.load_model(tmp_path / "m")


def test_compile_settings_given_as_objects_are_not_saved(tmp_path):
    model = trained(optimizer=bf.optimizers.Adam(1e-2))
    model.save(tmp_path / "m")
    loaded = bf.load_model(tmp_path / "m")
    with pytest.raises(bf.NotCompiledError):
        loaded.fit(X, Y, verbose=0)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_a_bfloat16_model_saves_and_loads_exactly(tmp_path):
    """.npz has no bfloat16: its weights are stored as float32 (exact) and cast back on load."""
    model = bf.Sequential([bf.layers.Dense(4, input_shape=(3,), dtype="bfloat16"), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    loaded = bf.load_model(model.save(tmp_path / "m"))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
