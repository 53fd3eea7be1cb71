"""The public surface is pinned: adding or removing a name is a decision, made here."""

import subprocess
import sys

import batchfit as bf


def test_top_level_names():
    assert sorted(bf.__all__) == sorted([
        "Model", "NotCompiledError", "Sequential", "activations", "callbacks", "data", "layers",
        "load_model", "losses", "metrics", "optimizers", "regularizers"])
    for name in bf.__all__:
        assert hasattr(bf, name)


def test_layer_names():
    assert {"Dense", "Activation", "Dropout", "Flatten", "BatchNormalization", "LayerNormalization",
            "Embedding", "Conv2D", "MaxPooling2D"} <= set(bf.layers.__all__)


def test_callback_names():
    assert sorted(bf.callbacks.__all__) == ["Callback", "CallbackList", "History", "LambdaCallback",
                                            "ProgbarLogger"]


def test_import_does_not_pull_optional_libraries():
    code = ("import sys, batchfit; bad = [m for m in ('matplotlib', 'pandas', 'torch', 'grain', "
            "'tensorflow') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
