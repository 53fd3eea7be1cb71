"""Keras's `keras.models`: load_model, model_from_json, clone_model, and the configs behind model.save,
get_config and from_config for the three kinds of models.

* Sequential: {"name", "trainable", "seed", "layers": [layer entries], "build_input_shape"}.
* Functional: Keras's layout: {"name", "trainable", "layers": [{"module", "class_name", "config", "name",
  "inbound_nodes": [{"args": [...], "kwargs": {...}}]}], "input_layers", "output_layers"}, where a
  tensor is written {"class_name": "__keras_tensor__", "config": {"shape", "dtype", "keras_history":
  [layer name, node index, tensor index]}} and inputs / outputs keep their structure (one, list, dict).
  from_config makes each layer from its config and calls it on the rebuilt tensors, node by node.
* Subclassed: the model's own get_config() (by default {"name", "trainable"}); the class is found by
  name (bf.Model subclasses register themselves) or in `custom_objects`, and built on zeros shaped as
  the inputs it was first built on (its "build_config").

A model entry ({"module", "class_name", "config", "build_config"}) is what to_json() writes and what
the .keras file's config.json holds, with "compile_config" added (batchfit/saving.py has the file).
"""

from __future__ import annotations

import datetime
import json
import os
import warnings

import jax
import numpy as np

from batchfit import saving
from batchfit.errors import CheckpointError, reading
from batchfit.functional import Functional
from batchfit.model import Model
from batchfit.sequential import Sequential, load_model
from batchfit._configs import (clone_model, from_config, functional_config, get_config, model_entry,
                               model_from_entry, model_from_json)

__all__ = ["Model", "Sequential", "load_model", "save_model", "model_from_json", "clone_model"]
_REACHED_HERE = (from_config, functional_config, get_config)     # model.py and functional.py call them here

_KERAS_SUFFIX, _WEIGHTS_SUFFIX = ".keras", ".weights.h5"



# ----- compile settings -----------------------------------------------------------------------

def _map(fn, value):
    if type(value) in (list, tuple):              # not a NamedTuple such as an optax transformation
        return [_map(fn, v) for v in value]
    if isinstance(value, dict) and "class_name" not in value:      # a saved object's entry is a leaf
        return {k: _map(fn, v) for k, v in value.items()}
    return fn(value)


def compile_config(model) -> dict | None:
    """compile()'s arguments as JSON, or None (with a warning) when one of them cannot be written."""
    if model._settings is None:
        return None
    arguments = model._settings.arguments
    config, unwritable = {}, []
    for name, value in arguments.items():
        if name in ("optimizer", "loss", "metrics", "weighted_metrics"):
            failed = []

            def write(v, failed=failed):
                written = saving.serialize_object(v)
                if written is None and v is not None:
                    failed.append(v)
                return written
            config[name] = _map(write, value)
            if failed:
                unwritable.append(f"{name}={failed[0]!r}")
        else:
            try:
                config[name] = json.loads(json.dumps(value))
            except (TypeError, ValueError):
                unwritable.append(f"{name}={value!r}")
    if unwritable:
        warnings.warn(f"save(): the compile settings are not saved, because {', '.join(unwritable)} cannot be "
                      f"written (an optax transformation, a lambda, or an object without get_config). The loaded "
                      f"model is not compiled; compile it again.", UserWarning, stacklevel=4)
        return None
    return config


def compile_arguments(config: dict, custom_objects=None) -> dict:
    kinds = {"optimizer": "optimizer", "loss": "loss", "metrics": "metric", "weighted_metrics": "metric"}
    return {name: _map(lambda v, kind=kinds[name]: saving.deserialize_object(v, kind, custom_objects), value)
            if name in kinds else value for name, value in config.items()}


# ----- files ----------------------------------------------------------------------------------

def _check_savable(model) -> None:
    if not isinstance(model, (Sequential, Functional)) and not model._subclassed():
        raise TypeError("save() rebuilds a model from its config, so it takes a bf.Sequential, a functional "
                        "bf.Model(inputs, outputs) or a subclassed bf.Model; got bf.Model around an NNX module. "
                        "Keep the module's code and save its weights: model.save_weights('w.weights.h5') (or "
                        "np.savez of get_weights()); load_weights / set_weights restore them.")


def save_model(model, filepath, overwrite: bool = True) -> str:
    """model.save(filepath): one .keras zip (config, weights, compile settings, optimizer state).

    A Sequential saved to a path without an extension is written in batchfit's earlier folder format."""
    _check_savable(model)
    path = os.fspath(filepath)
    if not path.endswith(_KERAS_SUFFIX):
        if isinstance(model, Sequential) and not os.path.splitext(path)[1]:
            return model._save_folder(path)
        if path.endswith(".h5"):
            raise ValueError(f"batchfit does not write Keras's legacy HDF5 format; save to a `.keras` file "
                             f"(model.save('model.keras')). Received: filepath={path}.")
        raise ValueError(f"Invalid filepath extension for saving. Please add a `.keras` extension for the native "
                         f"Keras format. Received: filepath={path}.")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"'{path}' exists and save(..., overwrite=False) was given. Choose another path.")
    entry = {**model_entry(model), "compile_config": compile_config(model)}
    entry = saving.to_json(entry, f"The config of '{model.name}'")
    arrays, manifest = saving.pack("weights", model.get_weights())
    manifests = {"weights": manifest}
    if model._slot is not None:
        model._take_edits()
        state = model._slot.state
        parts = {"model_state": jax.tree.leaves(state.model_state)}
        if entry["compile_config"] is not None and state.opt_state is not None:
            parts["optimizer"] = jax.tree.leaves(state.opt_state)
            arrays["optimizer/step"] = np.asarray(state.step)
        for prefix, leaves in parts.items():
            more, manifests[prefix] = saving.pack(prefix, leaves)
            arrays.update(more)
    from batchfit import __version__
    metadata = {"format": saving.KERAS_FORMAT, "version": saving.KERAS_VERSION, "batchfit_version": __version__,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"), "arrays": manifests}
    return saving.write_archive(path, entry, metadata, arrays)


def _numbered(arrays: dict, prefix: str) -> list:
    return [arrays[f"{prefix}/{i}"] for i in range(sum(f"{prefix}/{i}" in arrays for i in range(len(arrays))))]


def load_archive(path, custom_objects=None, compile=True):
    """The model of a .keras file: built, its weights set, compiled and its optimizer state restored."""
    entry, _, arrays = saving.read_archive(path)
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise CheckpointError(f"'{path}': its config.json holds no model entry (got {type(entry).__name__}). The "
                              f"file was altered; load an intact copy.")
    model = model_from_entry(entry, custom_objects)
    weights = _numbered(arrays, "weights")
    if weights or model.built:
        try:
            model.set_weights(weights)
        except ValueError as e:
            raise CheckpointError(f"'{path}': its weights do not fit the model its config builds ({e}). The file "
                                  f"was altered; load an intact copy.") from None
    config = entry.get("compile_config")
    if compile and config:
        model.compile(**compile_arguments(config, custom_objects))
    if model.built and any(name.startswith(("model_state/", "optimizer/")) for name in arrays):
        model._executables()
        state = model._slot.state
        restored = jax.tree.leaves(state.model_state)
        state = state._replace(model_state=jax.tree.unflatten(jax.tree.structure(state.model_state),
                                                              saving.unpack(arrays, "model_state", restored,
                                                                            "model state")))
        if model._settings is not None and compile and config and "optimizer/step" in arrays:
            leaves = saving.unpack(arrays, "optimizer", jax.tree.leaves(state.opt_state), "optimizer state")
            step = saving.unpack({"step/0": arrays["optimizer/step"]}, "step", [state.step], "optimizer step")[0]
            state = state._replace(opt_state=jax.tree.unflatten(jax.tree.structure(state.opt_state), leaves),
                                   step=step)
        model._slot.put(state)
    return model


def save_weights(model, filepath, overwrite: bool = True) -> str:
    """model.save_weights("w.weights.h5"): the get_weights() arrays as an .npz file (a zip; no HDF5)."""
    path = os.fspath(filepath)
    if not path.endswith(_WEIGHTS_SUFFIX):
        raise ValueError(f"The filename must end in `{_WEIGHTS_SUFFIX}`. Received: filepath={path}")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"'{path}' exists and save_weights(..., overwrite=False) was given.")
    arrays, manifest = saving.pack("weights", model.get_weights())
    arrays["manifest"] = np.array(json.dumps({"format": "batchfit-weights", "version": 1, "weights": manifest}))
    return saving.write_file(path, lambda f: np.savez(f, **arrays))


def read_weights(path: str) -> list:
    """The weights of a file save_weights wrote, checked against its manifest (CheckpointError if damaged)."""
    with reading(path):
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        manifest = json.loads(str(arrays.pop("manifest")))
        if not isinstance(manifest, dict) or manifest.get("format") != "batchfit-weights":
            raise CheckpointError(f"'{path}' is not a weights file batchfit's save_weights() wrote (its manifest "
                                  f"says {str(manifest)[:60]!r}).")
        saving.check_manifest(path, {"weights": manifest["weights"]}, arrays)
    return _numbered(arrays, "weights")


def load_weights(model, filepath) -> None:
    """model.load_weights: from a .weights.h5 file save_weights wrote, or the weights of a .keras file."""
    path = os.fspath(filepath)
    if path.endswith(_KERAS_SUFFIX):
        weights = _numbered(saving.read_archive(path)[2], "weights")
    elif path.endswith(_WEIGHTS_SUFFIX):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No file at '{path}'. Pass the path model.save_weights() wrote.")
        weights = read_weights(path)
    else:
        raise ValueError(f"load_weights() reads a `{_WEIGHTS_SUFFIX}` file (from save_weights) or a `.keras` file "
                         f"(from save). Received: filepath={path}")
    if not model.built:
        raise ValueError(f"load_weights() needs a built model: {type(model).__name__} '{model.name}' has no weights "
                         f"yet. Build it first (model.build(input_shape), or run it on a batch).")
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ValueError(f"load_weights('{path}'): the file was saved from a model of another architecture, and "
                         f"this model is left unchanged. {e}") from None

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
