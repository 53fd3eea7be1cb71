"""The saved-model format of model.save(path) / bf.load_model(path): a folder of JSON and .npz, never pickle.

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

__all__ = ["FORMAT", "VERSION", "write_model", "read_model"]

FORMAT, VERSION = "batchfit-model", 1
_CONFIG, _WEIGHTS = "model.json", "weights.npz"


def _is_save(path: str) -> bool:
    try:
        with open(os.path.join(path, _CONFIG)) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model(path, config: dict, weights: list) -> str:
    """Write `config` (JSON) and `weights` (arrays) to the folder `path`; returns the folder's path."""
    path = os.fspath(path)
    if os.path.exists(path) and not _is_save(path):
        raise FileExistsError(f"save() would replace '{path}', which is not a batchfit model folder. "
                              f"Choose a new path or remove it first.")
    # NumPy's .npz has no bfloat16 (an ml_dtypes type it would write as raw bytes): such weights
    # are stored as float32, exactly; set_weights casts them back to the layer's dtype.
    weights = {f"w{i}": w.astype(np.float32) if w.dtype.kind == "V" else w for i, w in enumerate(weights)}
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


def read_model(path) -> tuple[dict, list]:
    """(config, weights) of the folder a save wrote; no pickle: arrays are read with allow_pickle=False."""
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
    with np.load(weights_path, allow_pickle=False) as archive:
        weights = [archive[f"w{i}"] for i in range(len(archive.files))]
    return config, weights
