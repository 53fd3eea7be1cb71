"""A Keras name batchfit lacks raises an AttributeError naming it and what to use instead."""

import copy
import importlib.util
import os
import pathlib
import pickle
import subprocess
import sys

import pytest

import batchfit as bf
from batchfit._keras_names import KERAS_VERSION, NEAREST, keras_names, missing

WIRED = [bf.callbacks, bf.optimizers, bf.activations, bf.regularizers]

# (module, Keras name batchfit lacks, a piece of the alternative the message must name)
UNSUPPORTED = [
    (bf.optimizers, "Nadam", "optax.nadam"),
    (bf.optimizers, "Lion", "optax.lion"),
    (bf.optimizers, "Adamax", "optax.adamax"),
    (bf.optimizers, "MultiOptimizer", "optax.multi_transform"),
    (bf.callbacks, "RemoteMonitor", "LambdaCallback"),
    (bf.callbacks, "SwapEMAWeights", "optax.ema"),
    (bf.activations, "mish", "activation=jax.nn.mish"),
    (bf.activations, "celu", "jax.nn.celu"),
    (bf.activations, "hard_silu", "hard_silu"),
    (bf.activations, "serialize", "bf.activations.get(name)"),
    (bf.regularizers, "OrthogonalRegularizer", "kernel_regularizer="),
    (bf.regularizers, "serialize", "bf.regularizers.get(name)"),
]


@pytest.mark.parametrize("module, name, alternative", UNSUPPORTED,
                         ids=[f"{m.__name__}.{n}" for m, n, _ in UNSUPPORTED])
def test_a_keras_name_batchfit_lacks_names_itself_keras_and_the_alternative(module, name, alternative):
    with pytest.raises(AttributeError) as error:
        getattr(module, name)
    message = str(error.value)
    assert f"`{module.__name__}.{name}`" in message and "Keras" in message and alternative in message
    assert error.value.name == name


def test_the_whole_message_for_one_name():
    with pytest.raises(AttributeError) as error:
        bf.optimizers.Nadam(learning_rate=1e-3)
    assert str(error.value) == (
        "`batchfit.optimizers.Nadam` is a Keras name (keras.optimizers.Nadam) that batchfit does not "
        "support yet. Nearest: optax.nadam(learning_rate) as optimizer= (optax's formula, not Keras's). "
        "See docs/keras.md for what is supported.")


@pytest.mark.parametrize("module, name", [(bf.optimizers, "Adam"), (bf.optimizers, "get"),
                                          (bf.callbacks, "History"), (bf.callbacks, "ProgbarLogger"),
                                          (bf.activations, "relu"), (bf.regularizers, "L2")])
def test_a_name_batchfit_has_is_returned_as_it_is(module, name):
    assert getattr(module, name) is vars(module)[name]


@pytest.mark.parametrize("module, name, message", [
    (bf.optimizers, "Adma", "module 'batchfit.optimizers' has no attribute 'Adma'. Did you mean: 'Adam'?"),
    (bf.callbacks, "Callbak", "module 'batchfit.callbacks' has no attribute 'Callbak'. Did you mean: 'Callback'?"),
    (bf.activations, "relu7", "module 'batchfit.activations' has no attribute 'relu7'. Did you mean: 'relu'?"),
    (bf.regularizers, "Frobnicate", "module 'batchfit.regularizers' has no attribute 'Frobnicate'"),
])
def test_a_name_keras_does_not_have_gets_the_plain_error(module, name, message):
    with pytest.raises(AttributeError) as error:
        getattr(module, name)
    assert str(error.value) == message


def test_hasattr_and_getattr_with_a_default_see_a_plain_attribute_error():
    assert hasattr(bf.optimizers, "Nadam") is False
    assert hasattr(bf.callbacks, "RemoteMonitor") is False
    assert getattr(bf.activations, "mish", None) is None
    for module in WIRED:                        # Python's own probes answer at once
        assert not hasattr(module, "__wrapped__") and not hasattr(module, "_repr_html_")


def test_the_names_a_module_has_are_read_when_the_error_is_raised(monkeypatch):
    """Nothing lists what batchfit has: a name added later is returned, and suggested."""
    def nadam(learning_rate):
        return learning_rate

    monkeypatch.setattr(bf.optimizers, "Nadam", nadam, raising=False)
    assert bf.optimizers.Nadam is nadam and hasattr(bf.optimizers, "Nadam")
    with pytest.raises(AttributeError, match="Did you mean: 'Nadam'"):
        bf.optimizers.Nadma
    monkeypatch.undo()
    with pytest.raises(AttributeError, match="optax.nadam"):
        bf.optimizers.Nadam


def test_pickle_copy_and_star_imports_are_unaffected():
    adam = bf.optimizers.Adam(learning_rate=0.1)
    assert repr(pickle.loads(pickle.dumps(adam))) == repr(copy.deepcopy(adam)) == repr(adam)
    assert pickle.loads(pickle.dumps(bf.activations.relu)) is bf.activations.relu
    assert pickle.loads(pickle.dumps(bf.regularizers.L2(0.5))) == copy.copy(bf.regularizers.L2(0.5))
    assert type(pickle.loads(pickle.dumps(bf.callbacks.History()))) is bf.callbacks.History
    for module in WIRED:
        namespace = {}
        exec(f"from {module.__name__} import *", namespace)
        assert set(namespace) - {"__builtins__"} == set(module.__all__)


def test_from_import_of_a_missing_keras_name_is_an_import_error():
    # Python turns the AttributeError of `from m import X` into its own ImportError
    with pytest.raises(ImportError, match="cannot import name 'Nadam'"):
        from batchfit.optimizers import Nadam  # noqa: F401


def test_the_factory_for_modules_wired_elsewhere():
    """The same factory answers for the modules other files wire: layers, ops, initializers, ..."""
    def message(module_name, name, has=("Dense", "Dropout", "Conv2D")):
        with pytest.raises(AttributeError) as error:
            missing(module_name, lambda: list(has))(name)
        return str(error.value)

    assert "flax.nnx.RNN(nnx.LSTMCell(...))" in message("batchfit.layers", "LSTM")
    assert "flax.nnx.Conv (1, 2 or 3 spatial dimensions)" in message("batchfit.layers", "Conv1D")
    assert "preprocess the arrays before fit" in message("batchfit.layers", "Resizing")
    assert message("batchfit.layers", "Dence") == \
        "module 'batchfit.layers' has no attribute 'Dence'. Did you mean: 'Dense'?"
    assert "jax.numpy and jax.nn" in message("batchfit", "backend")
    assert "Nearest: `batchfit.layers.Layer`." in message("batchfit", "Layer")    # the same name one level down
    assert "`jax.numpy.einsum`" in message("batchfit.ops", "einsum")
    assert "`jax.nn.initializers.glorot_uniform`" in message("batchfit.initializers", "GlorotUniform")
    assert "loss=" in message("batchfit.losses", "Dice")
    assert "model.predict(x)" in message("batchfit.metrics", "R2Score")
    assert "is a tf.data name (tf.data.TFRecordDataset)" in message("batchfit.data", "TFRecordDataset")
    assert "Nearest: none in batchfit yet." in message("batchfit.activations", "sparsemax", has=())


def test_every_curated_entry_is_a_keras_name_of_its_module():
    for module_name, table in NEAREST.items():
        assert keras_names(module_name), module_name
        assert not [n for n in table if n != "*" and n not in keras_names(module_name)], module_name


def test_import_batchfit_does_not_import_keras():
    code = ("import sys, batchfit as bf\n"
            "for module, name in [(bf.optimizers, 'Nadam'), (bf.activations, 'mish'), (bf.callbacks, 'x')]:\n"
            "    try: getattr(module, name)\n"
            "    except AttributeError: pass\n"
            "print('keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_the_stored_lists_are_those_of_the_installed_keras():
    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "keras_names.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    if result.returncode == 3:
        pytest.skip(f"another keras than {KERAS_VERSION}: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
