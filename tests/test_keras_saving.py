"""Keras 3's saving surface: model.save("m.keras") / bf.models.load_model, save_weights / load_weights,
get_config / from_config, to_json / model_from_json and clone_model, for Sequential, functional and
subclassed models with custom layers inside. A loaded model trains on bitwise as the original would."""

import json
import os
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import batchfit as bf  # noqa: E402
from batchfit import models, saving  # noqa: E402
from batchfit.layers.base import LAYERS  # noqa: E402

rng = np.random.default_rng(0)
XA = rng.normal(size=(40, 5)).astype(np.float32)
XB = rng.normal(size=(40, 3)).astype(np.float32)
Y1 = rng.normal(size=(40, 1)).astype(np.float32)
Y2 = rng.normal(size=(40, 2)).astype(np.float32)


class Scale(bf.layers.Layer):
    """A custom layer with a weight: x * w, w per feature."""

    def __init__(self, start=1.0, **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, inputs):
        return inputs * self.w * self.start


class Join(bf.layers.Layer):
    """A custom layer without weights that takes a list: concatenation on the last axis."""

    def call(self, inputs):
        return jnp.concatenate(inputs, axis=-1)


class TwoStep(bf.Model):
    """A subclassed model with a constructor argument, a custom layer and Dropout."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = bf.layers.Dense(units, activation="relu")
        self.drop = bf.layers.Dropout(0.25)
        self.scale = Scale(0.5)
        self.head = bf.layers.Dense(1)

    def call(self, x, training=False):
        return self.head(self.scale(self.drop(self.hidden(x), training=training)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def sequential():
    return bf.Sequential([bf.layers.Dense(6, activation="relu", input_shape=(5,)), bf.layers.Dropout(0.25),
                          Scale(2.0), bf.layers.BatchNormalization(), bf.layers.Dense(1)], seed=3)


def functional(dict_io=False):
    """Two inputs, two outputs, a shared Dense (called on `a` and on a projection of `b`), custom layers."""
    a, b = bf.layers.Input((5,), name="a"), bf.layers.Input((3,), name="b")
    shared, project = bf.layers.Dense(4, activation="tanh", name="shared"), bf.layers.Dense(5, name="project")
    joined = Join(name="join")([shared(a), shared(project(b))])
    o1 = bf.layers.Dense(1, name="o1")(Scale(name="scale")(joined))
    o2 = bf.layers.Dense(2, name="o2")(joined)
    if dict_io:
        return bf.Model({"a": a, "b": b}, {"first": o1, "second": o2})
    return bf.Model([a, b], [o1, o2])


def subclassed():
    return TwoStep(units=4, seed=5)


# (make, x, y) for the three kinds
KINDS = {
    "sequential": (sequential, XA, Y1),
    "functional": (functional, [XA, XB], [Y1, Y2]),
    "subclassed": (subclassed, XA, Y1),
}


def trained(kind, optimizer="adam"):
    make, x, y = KINDS[kind]
    model = make()
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"] if kind != "functional" else None)
    model.fit(x, y, epochs=2, batch_size=16, seed=1, verbose=0)
    return model


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_gives_the_same_weights_predictions_and_config(kind, tmp_path):
    model = trained(kind)
    path = model.save(tmp_path / "m.keras")
    loaded = bf.models.load_model(path)
    assert type(loaded) is type(model)
    assert_same_weights(model, loaded)
    x = KINDS[kind][1]
    out, expected = loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    for p, q in zip(out if isinstance(out, list) else [out], expected if isinstance(expected, list) else [expected]):
        np.testing.assert_array_equal(p, q)
    assert loaded.get_config() == model.get_config()
    assert loaded.metrics_names == model.metrics_names


@pytest.mark.parametrize("kind, optimizer", [("sequential", "adam"), ("functional", "object"), ("subclassed", "adam")])
def test_training_on_after_load_equals_training_on_without_saving(kind, optimizer, tmp_path):
    """Adam's moments and count, the step and the Dropout RNG streams are saved: bitwise the same run."""
    opt = "adam" if optimizer == "adam" else bf.optimizers.Adam(learning_rate=0.01, clipnorm=1.0)
    model = trained(kind, opt)
    model.save(tmp_path / "m.keras")
    loaded = bf.models.load_model(tmp_path / "m.keras")
    fresh = bf.models.load_model(tmp_path / "m.keras", compile=False)      # the same weights, a new Adam
    fresh.compile(optimizer=opt, loss="mse", metrics=["mae"] if kind != "functional" else None)
    _, x, y = KINDS[kind]
    runs = [m.fit(x, y, epochs=2, batch_size=16, seed=2, verbose=0) for m in (model, loaded, fresh)]
    assert runs[1].history == runs[0].history                 # floats compared exactly
    assert runs[1].batch_history == runs[0].batch_history
    assert_same_weights(model, loaded)
    assert runs[2].history != runs[0].history                 # the saved optimizer state made the difference


def test_the_file_is_one_zip_of_json_and_npz_without_pickle(tmp_path):
    trained("functional").save(tmp_path / "m.keras")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.npz"]
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json"))
        with open(tmp_path / "w.npz", "wb") as f:
            f.write(archive.read("model.weights.npz"))
    assert config["class_name"] == "Functional"
    assert config["compile_config"]["optimizer"] == "adam" and config["compile_config"]["loss"] == "mse"
    assert metadata["format"] == "batchfit-keras"
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        assert all(npz[name].dtype.kind != "O" for name in npz.files)
        # 4 layers with kernel and bias, Scale's w: 9 weights; Adam: count, lr, 2 moments per weight, count
        assert sum(name.startswith("weights/") for name in npz.files) == 9
        assert int(npz["optimizer/step"]) == 6                 # 2 epochs of ceil(40 / 16) = 3 batches


def test_dict_inputs_and_outputs_round_trip(tmp_path):
    model = functional(dict_io=True)
    model.compile(optimizer="adam", loss="mse")
    x, y = {"a": XA, "b": XB}, {"first": Y1, "second": Y2}
    model.fit(x, y, epochs=1, batch_size=16, seed=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = bf.models.load_model(tmp_path / "m.keras")
    assert loaded.get_config()["input_layers"] == {"a": ["a", 0, 0], "b": ["b", 0, 0]}
    assert loaded.get_config()["output_layers"] == {"first": ["o1", 0, 0], "second": ["o2", 0, 0]}
    out, expected = loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    for key in ("first", "second"):
        np.testing.assert_array_equal(out[key], expected[key])
    assert loaded.fit(x, y, epochs=1, batch_size=16, seed=2, verbose=0).history == \
        model.fit(x, y, epochs=1, batch_size=16, seed=2, verbose=0).history


def test_the_shared_layer_stays_one_layer_with_two_nodes():
    config = functional().get_config()
    shared = next(layer for layer in config["layers"] if layer["name"] == "shared")
    histories = [node["args"][0]["config"]["keras_history"] for node in shared["inbound_nodes"]]
    assert histories == [["a", 0, 0], ["project", 0, 0]]
    join = next(layer for layer in config["layers"] if layer["name"] == "join")
    assert [t["config"]["keras_history"] for t in join["inbound_nodes"][0]["args"][0]] == \
        [["shared", 0, 0], ["shared", 1, 0]]
    rebuilt = bf.Model.from_config(config)
    assert len(rebuilt.get_layer("shared")._nodes) == 2
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in functional().get_weights()]


def test_from_config_and_json_rebuild_the_architecture_with_fresh_weights():
    for model, cls in ((sequential(), bf.Sequential), (functional(), bf.Model)):
        rebuilt = cls.from_config(model.get_config())
        assert rebuilt.get_config() == model.get_config()
    model = trained("subclassed")
    again = bf.models.model_from_json(model.to_json())
    assert type(again) is TwoStep and again.units == 4 and again.built
    assert [w.shape for w in again.get_weights()] == [w.shape for w in model.get_weights()]
    again.set_weights(model.get_weights())
    np.testing.assert_array_equal(again.predict(XA, verbose=0), model.predict(XA, verbose=0))
    assert bf.Sequential.from_config(sequential().get_config()).get_weights()[0].shape == (5, 6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_clone_model_has_the_architecture_not_the_weights_nor_the_compile(kind):
    model = trained(kind)
    clone = bf.models.clone_model(model)
    assert type(clone) is type(model)
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]
    assert not all(np.array_equal(a, b) for a, b in zip(clone.get_weights(), model.get_weights()))
    with pytest.raises(bf.NotCompiledError):
        clone.fit(KINDS[kind][1], KINDS[kind][2], verbose=0)


def test_save_weights_and_load_weights(tmp_path):
    model = trained("functional")
    model.save_weights(tmp_path / "w.weights.h5")
    other = functional()
    other.load_weights(tmp_path / "w.weights.h5")
    assert_same_weights(model, other)
    with np.load(tmp_path / "w.weights.h5", allow_pickle=False) as npz:          # an .npz under Keras's name
        assert "weights/0" in npz.files
    model.save(tmp_path / "m.keras")
    third = functional()
    third.load_weights(tmp_path / "m.keras")                                       # Keras reads .keras too
    assert_same_weights(model, third)


def test_wrong_suffixes_are_refused_as_keras_refuses_them(tmp_path):
    model = trained("functional")
    with pytest.raises(ValueError, match="Invalid filepath extension"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="HDF5"):
        model.save(tmp_path / "m.h5")
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        model.save_weights(tmp_path / "w.h5")
    with pytest.raises(TypeError, match="NNX module"):
        bf.Model(model.module).save(tmp_path / "n.keras")
    assert os.listdir(tmp_path) == []


def test_a_missing_custom_class_is_named_with_the_fix(tmp_path, monkeypatch):
    """As in a new program that does not define the classes: the registries forget them."""
    trained("subclassed").save(tmp_path / "s.keras")
    trained("functional").save(tmp_path / "f.keras")
    monkeypatch.delitem(saving.MODELS._items, "twostep")
    monkeypatch.delitem(LAYERS._items, "scale")
    with pytest.raises(ValueError, match=r"Unknown model class 'TwoStep'.*custom_objects=\{'TwoStep': TwoStep\}"):
        bf.models.load_model(tmp_path / "s.keras")
    with pytest.raises(ValueError, match=r"Unknown layer class 'Scale'.*custom_objects"):
        bf.models.load_model(tmp_path / "f.keras")
    assert type(bf.models.load_model(tmp_path / "s.keras", custom_objects={"TwoStep": TwoStep})) is TwoStep
    assert isinstance(bf.models.load_model(tmp_path / "f.keras", custom_objects={"Scale": Scale}), bf.Model)


def test_weights_of_another_architecture_are_refused_and_the_model_is_unchanged(tmp_path):
    trained("sequential").save_weights(tmp_path / "w.weights.h5")
    other = functional()
    before = other.get_weights()
    with pytest.raises(ValueError, match="another architecture"):
        other.load_weights(tmp_path / "w.weights.h5")
    assert_same_weights_list(before, other.get_weights())


def assert_same_weights_list(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_compile_objects_are_saved_and_an_optax_optimizer_is_not(tmp_path):
    import optax
    model = sequential()
    model.compile(optimizer=bf.optimizers.SGD(0.05, momentum=0.9), loss=bf.losses.MeanSquaredError(),
                  metrics=[bf.metrics.MeanAbsoluteError()])
    model.fit(XA, Y1, epochs=1, batch_size=16, seed=1, verbose=0)
    loaded = bf.models.load_model(model.save(tmp_path / "m.keras"))
    assert loaded.metrics_names == ["loss", "mean_absolute_error"]
    assert loaded.fit(XA, Y1, epochs=1, batch_size=16, seed=2, verbose=0).history == \
        model.fit(XA, Y1, epochs=1, batch_size=16, seed=2, verbose=0).history
    model.compile(optimizer=optax.sgd(0.1), loss="mse")
    with pytest.warns(UserWarning, match="compile settings are not saved"):
        model.save(tmp_path / "n.keras")
    with pytest.raises(bf.NotCompiledError):
        bf.models.load_model(tmp_path / "n.keras").fit(XA, Y1, verbose=0)


def test_the_public_names():
    assert bf.models.Model is bf.Model and bf.models.Sequential is bf.Sequential
    assert models.load_model is bf.load_model


def test_the_functional_config_has_the_layers_and_nodes_of_keras():
    keras = pytest.importorskip("keras")

    def build(lib):
        a, b = lib.layers.Input((5,), name="a"), lib.layers.Input((3,), name="b")
        shared = lib.layers.Dense(4, name="shared")
        o1 = lib.layers.Dense(1, name="o1")(shared(a))
        o2 = lib.layers.Dense(2, name="o2")(shared(lib.layers.Dense(5, name="project")(b)))
        return lib.Model([a, b], [o1, o2]).get_config()

    def structure(config):
        def histories(value):
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                return tuple(value["config"]["keras_history"])
            if isinstance(value, (list, tuple)):
                return [histories(v) for v in value]
            return value
        layers = {layer["name"]: (layer["class_name"], [histories(node["args"]) for node in layer["inbound_nodes"]])
                  for layer in config["layers"]}
        return layers, config["input_layers"], config["output_layers"]

    ours, theirs = build(bf), build(keras)
    assert structure(ours) == structure(theirs)
    assert [layer["name"] for layer in ours["layers"]] == [layer["name"] for layer in theirs["layers"]]   # order
    assert sorted(ours) == sorted(theirs)          # name, trainable, layers, input_layers, output_layers


def test_keras_saving_names_reach_the_same_functions(tmp_path):
    """Keras code calls keras.saving.load_model / save_model and decorates custom classes with
    register_keras_serializable: all three work, and a decorated layer loads by its class name."""
    @bf.saving.register_keras_serializable(package="Tests")
    class Doubled(bf.layers.Layer):
        def call(self, x):
            return 2.0 * x

    assert bf.utils.register_keras_serializable is bf.saving.register_keras_serializable
    model = bf.Sequential([bf.Input((2,)), Doubled(), bf.layers.Dense(1, kernel_initializer="ones")])
    path = str(tmp_path / "doubled.keras")
    bf.saving.save_model(model, path)
    loaded = bf.saving.load_model(path)
    x = np.array([[1.0, 2.0]], np.float32)
    assert float(loaded.predict(x, verbose=0)[0, 0]) == pytest.approx(6.0)   # 2 * (1 + 2)
