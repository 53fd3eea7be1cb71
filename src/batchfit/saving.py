"""model.save(path) / bf.load_model(path): a folder of JSON and .npz, never pickle.

A saved model is a folder holding `model.json` (the format, the layers' configs, the built
input shape, the seed, and the compile settings when they were given by name) and
`weights.npz` (the `get_weights()` arrays, Keras order). Loading reads the arrays with
`allow_pickle=False`, so a file cannot run code. The optimizer's state is not saved: a
loaded model trains on from the saved weights with a fresh optimizer.

A save never leaves a half-written folder: it writes a sibling temporary folder and swaps
it in, and it replaces only a folder that holds an earlier batchfit save.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

__all__ = ["save_model", "load_model"]

FORMAT, VERSION = "batchfit-model", 1
_CONFIG, _WEIGHTS = "model.json", "weights.npz"


def _is_save(path: str) -> bool:
    try:
        with open(os.path.join(path, _CONFIG)) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _json_config(model) -> dict:
    layers = [layer.get_config() for layer in model.layers]
    config = {"format": FORMAT, "version": VERSION, "class_name": "Sequential", "seed": model.seed,
              "input_shape": list(model.module.input_shape), "layers": layers,
              "compile": getattr(model, "_compile_names", None)}
    try:
        return json.loads(json.dumps(config))
    except TypeError as e:
        raise TypeError(f"save() writes layer configs as JSON, and one of them holds a Python object ({e}). "
                        f"Give activations, initializers and regularizers by name (e.g. activation='relu') "
                        f"to save the model, or save the arrays of get_weights() yourself.") from e


def save_model(model, path) -> str:
    """Write `model` (a built Sequential) to the folder `path`; returns the folder's path."""
    from batchfit.model import Sequential
    path = os.fspath(path)
    if not isinstance(model, Sequential):
        raise TypeError(f"save() rebuilds a model from its layers, so it takes a bf.Sequential; got "
                        f"{type(model).__name__}. For bf.Model(module), keep the module's code and save "
                        f"get_weights() with np.savez; set_weights() restores them.")
    if not model.built:
        raise ValueError("save() needs a built model: give the first layer input_shape=..., or run it on data first.")
    if os.path.exists(path) and not _is_save(path):
        raise FileExistsError(f"save() would replace '{path}', which is not a batchfit model folder. "
                              f"Choose a new path or remove it first.")
    config = _json_config(model)
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".batchfit-save-", dir=parent)
    try:
        with open(os.path.join(staging, _CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        np.savez(os.path.join(staging, _WEIGHTS), **weights)
        if os.path.exists(path):            # an earlier save: swap, then drop the old one
            old = tempfile.mkdtemp(prefix=".batchfit-old-", dir=parent)
            os.replace(path, os.path.join(old, "model"))
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_model(path, compile: bool = True):
    """The model `save()` wrote to `path`, with its weights (and its compile settings, when saved by name)."""
    from batchfit.layers.base import layer_from_config
    from batchfit.model import Sequential
    path = os.fspath(path)
    config_path, weights_path = os.path.join(path, _CONFIG), os.path.join(path, _WEIGHTS)
    if not os.path.isfile(config_path) or not os.path.isfile(weights_path):
        raise FileNotFoundError(f"'{path}' is not a saved batchfit model: it needs {_CONFIG} and {_WEIGHTS}. "
                                f"Pass the folder that model.save() wrote.")
    with open(config_path) as f:
        config = json.load(f)
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"'{config_path}' is not a batchfit model file of version {VERSION} "
                         f"(format {config.get('format') if isinstance(config, dict) else None!r}, version "
                         f"{config.get('version') if isinstance(config, dict) else None!r}).")
    model = Sequential([layer_from_config(c) for c in config["layers"]], seed=config["seed"])
    model.build(tuple(config["input_shape"]))
    with np.load(weights_path, allow_pickle=False) as archive:
        model.set_weights([archive[f"w{i}"] for i in range(len(archive.files))])
    if compile and config.get("compile"):
        model.compile(**config["compile"])
    return model
