"""The saved-model formats of model.save(path) / bf.load_model(path): JSON and .npz, never pickle.

`model.save("m.keras")` writes one zip, laid out as Keras's .keras (see write_archive below); the
config, build and compile logic live in batchfit/models.py. The older format, still written by
`Sequential.save(path)` for a path without an extension and read by `load_model`, follows.

A saved model is a folder: `model.json` (format, layer configs, input shape, seed, compile settings
given by name, weight dtypes and shapes) and `weights.npz` (`get_weights()`, no optimizer state). Arrays
are read with `allow_pickle=False`; a damaged file raises bf.errors.CheckpointError naming it. Saves
are atomic and durable, and replace only a folder that holds an earlier batchfit save."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.errors import CheckpointError, reading
from batchfit.registry import Registry

__all__ = ["FORMAT", "VERSION", "write_model", "read_model", "KERAS_FORMAT", "KERAS_VERSION", "MODELS", "write_archive",
           "read_archive", "write_file", "recover_folder", "check_manifest", "pack", "unpack", "serialize_object",
           "deserialize_object",
           "input_spec", "zeros_like_spec", "to_json", "load_model", "save_model", "register_keras_serializable"]

FORMAT, VERSION = "batchfit-model", 1
_CONFIG, _WEIGHTS = "model.json", "weights.npz"


def _is_save(path: str) -> bool:
    try:
        with open(os.path.join(path, _CONFIG)) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ----- atomic, durable writes: written aside, fsynced, renamed onto the path -------------------------
#
# A file or folder at `path` is staged as the sibling `.{name}.batchfit-tmp-{token}`. A folder, once
# complete, is renamed `.{name}.batchfit-new-{token}`, the earlier save moved to `...-old-{token}`, and
# the new one renamed onto `path`. A kill at any instant leaves `path` holding the old or the new save,
# or (between the folder's two renames) nothing at `path` and a complete `-new-` copy, which the next
# save or load puts in place. The next save removes every other leftover; loading ignores them.

def _siblings(path: str, kind: str) -> list[str]:
    parent, name = os.path.split(os.path.abspath(path))
    entries = os.listdir(parent) if os.path.isdir(parent) else []
    return [os.path.join(parent, entry) for entry in entries if entry.startswith(f".{name}.batchfit-{kind}-")]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _fsync_folder(folder: str) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _write_durably(path: str, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _not_process_0() -> bool:      # without jax.distributed, no backend is asked (a forked saver must not start one)
    return jax.distributed.is_initialized() and jax.process_index() != 0


def write_file(path, write) -> str:
    """Write a file at `path` atomically and durably: `write(binary_file)` fills a sibling temporary file,
    which is fsynced and renamed onto `path` (then the folder is fsynced). A kill leaves the old file."""
    path = os.fspath(path)
    if _not_process_0():             # several processes save one file: process 0 writes it (the others
        return path                  # would remove its staging file as a leftover)
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for leftover in _siblings(path, "tmp"):
        _remove(leftover)
    handle, staging = tempfile.mkstemp(prefix=f".{name}.batchfit-tmp-", dir=parent)
    os.close(handle)
    try:
        _write_durably(staging, write)
        os.replace(staging, path)
        _fsync_folder(parent)
    finally:
        _remove(staging) if os.path.exists(staging) else None
    return path


def recover_folder(path) -> None:
    """After a killed folder save: with nothing at `path`, put the complete copy it left there."""
    path = os.fspath(path)
    if not os.path.exists(path):
        for kind in ("new", "old"):            # a "new" copy is complete, and newer than an "old" one
            found = sorted(_siblings(path, kind), key=os.path.getmtime)
            if found:
                os.replace(found[-1], path)
                _fsync_folder(os.path.dirname(os.path.abspath(path)))
                return


def write_model(path, config: dict, weights: list) -> str:
    """Write `config` (JSON) and `weights` (arrays) to the folder `path`, atomically; returns its path."""
    path = os.fspath(path)
    if _not_process_0():             # as in write_file
        return path
    recover_folder(path)
    if os.path.exists(path) and not _is_save(path):
        raise FileExistsError(f"save() would replace '{path}', which is not a batchfit model folder. "
                              f"Choose a new path or remove it first.")
    # NumPy's .npz has no bfloat16 (an ml_dtypes type it would write as raw bytes): such weights
    # are stored as float32, exactly; set_weights casts them back to the layer's dtype.
    config = {**config, "weights_manifest": pack("w", weights)[1]}
    weights = {f"w{i}": w.astype(np.float32) if w.dtype.kind == "V" else w for i, w in enumerate(weights)}
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for leftover in [p for kind in ("tmp", "new", "old") for p in _siblings(path, kind)]:
        _remove(leftover)
    staging = tempfile.mkdtemp(prefix=f".{name}.batchfit-tmp-", dir=parent)
    ready = staging.replace(f".{name}.batchfit-tmp-", f".{name}.batchfit-new-")
    old = staging.replace(f".{name}.batchfit-tmp-", f".{name}.batchfit-old-")
    try:
        _write_durably(os.path.join(staging, _CONFIG), lambda f: f.write(json.dumps(config, indent=2).encode()))
        _write_durably(os.path.join(staging, _WEIGHTS), lambda f: np.savez(f, **weights))
        _fsync_folder(staging)
        os.replace(staging, ready)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(ready, path)
        _fsync_folder(parent)
        _remove(old)
    finally:
        _remove(staging)
        recover_folder(path)                 # an error between the renames: put a copy back
    return path


def read_model(path) -> tuple[dict, list]:
    """(config, weights) of the folder a save wrote; no pickle: arrays are read with allow_pickle=False.
    CheckpointError (a ValueError) names the file when one is damaged."""
    path = os.fspath(path)
    recover_folder(path)
    config_path, weights_path = os.path.join(path, _CONFIG), os.path.join(path, _WEIGHTS)
    if not os.path.isfile(config_path) or not os.path.isfile(weights_path):
        raise FileNotFoundError(f"'{path}' is not a saved batchfit model: it needs {_CONFIG} and {_WEIGHTS}. "
                                f"Pass the folder that model.save() wrote.")
    with reading(config_path):
        with open(config_path, "rb") as f:
            config = json.loads(f.read())
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise CheckpointError(f"'{config_path}' is not a batchfit model file of version {VERSION} "
                              f"(format {config.get('format') if isinstance(config, dict) else None!r}, version "
                              f"{config.get('version') if isinstance(config, dict) else None!r}).")
    with reading(weights_path):
        with np.load(weights_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        manifest = config.get("weights_manifest")
        if manifest is not None:
            check_manifest(weights_path, {"w": manifest}, {k.replace("w", "w/", 1): v for k, v in arrays.items()})
        weights = [arrays[f"w{i}"] for i in range(len(arrays))]
    return config, weights


def check_manifest(path: str, manifests: dict, arrays: dict) -> None:
    """Each array `f"{prefix}/i"` present with the [dtype, shape] its manifest recorded; CheckpointError if not."""
    for prefix, manifest in manifests.items():
        for i, (dtype, shape) in enumerate(manifest):
            name = f"{prefix}/{i}"
            if name not in arrays:
                raise CheckpointError(f"'{path}' lacks the array {name} (its manifest lists {len(manifest)} "
                                      f"{prefix} arrays). Load an intact copy.")
            value = arrays[name]
            stored = "float32" if dtype != "prng_key" and jnp.dtype(dtype).kind == "V" else dtype
            if dtype != "prng_key" and (value.dtype.name != stored or list(value.shape) != list(shape)):
                raise CheckpointError(f"'{path}': array {name} is {value.dtype}{list(value.shape)}, but the file "
                                      f"recorded {dtype}{list(shape)}. The file was altered; load an intact copy.")


# ----- the one-file format of model.save("m.keras"): Keras's .keras layout, without pickle -------------
#
# A zip holding `config.json` (Keras's {"module", "class_name", "config", "build_config",
# "compile_config"}), `metadata.json` (format, versions, and the saved arrays' original dtypes and
# shapes) and `model.weights.npz` (NumPy's own zip of .npy files, read with allow_pickle=False):
# "weights/i" (get_weights() order), "model_state/i" (every non-trainable leaf of the training
# state, RNG streams included), "optimizer/i" and "optimizer/step".

KERAS_FORMAT, KERAS_VERSION = "batchfit-keras", 1
CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE = "config.json", "metadata.json", "model.weights.npz"
MODELS = Registry("model")       # bf.Model subclasses by class name (Model.__init_subclass__ fills it)


def _storable(value) -> tuple[np.ndarray, str]:
    """(array .npz can hold, the original dtype's name): bfloat16 as float32 (exact), RNG keys as their data."""
    if jax.dtypes.issubdtype(getattr(value, "dtype", None), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(value)), "prng_key"
    array = np.asarray(value)
    return (array.astype(np.float32) if array.dtype.kind == "V" else array), array.dtype.name


def pack(prefix: str, leaves: list) -> tuple[dict, list]:
    """{f"{prefix}/i": array} and the [dtype name, shape] of each leaf as it was (for the checks on load)."""
    arrays, manifest = {}, []
    for i, leaf in enumerate(leaves):
        arrays[f"{prefix}/{i}"], dtype = _storable(leaf)
        manifest.append([dtype, list(np.shape(leaf))])
    return arrays, manifest


def unpack(arrays: dict, prefix: str, like: list, what: str) -> list:
    """The leaves `f"{prefix}/i"` shaped and typed as `like` (the state a loaded model starts with);
    ValueError when their number, a shape or a dtype differs."""
    saved = [arrays[f"{prefix}/{i}"] for i in range(sum(k.startswith(prefix + "/") and k[len(prefix) + 1:].isdigit()
                                                         for k in arrays))]
    if len(saved) != len(like):
        raise ValueError(f"The saved {what} has {len(saved)} arrays; this model's has {len(like)}. Load it into a "
                         f"model of the same architecture, compiled with the same optimizer.")
    out = []
    for i, (value, target) in enumerate(zip(saved, like)):
        if jax.dtypes.issubdtype(target.dtype, jax.dtypes.prng_key):
            key_data = jax.random.key_data(target)
            if value.shape != key_data.shape or value.dtype != key_data.dtype:
                raise ValueError(f"{what} array {i}: a random key of data {value.dtype}{list(value.shape)}; this "
                                 f"model's is {key_data.dtype}{list(key_data.shape)}.")
            out.append(jax.random.wrap_key_data(jax.device_put(value), impl=jax.random.key_impl(target)))
            continue
        if tuple(value.shape) != tuple(np.shape(target)) or (
                value.dtype != target.dtype and not (target.dtype.kind == "V" and value.dtype == np.float32)):
            raise ValueError(f"{what} array {i} is {value.dtype}{list(value.shape)}; this model's is "
                             f"{target.dtype}{list(np.shape(target))}. Load it into a model of the same "
                             f"architecture, compiled with the same optimizer.")
        out.append(jax.device_put(np.asarray(value, target.dtype)))
    return out


def write_archive(path, config: dict, metadata: dict, arrays: dict) -> str:
    """Write one zip at `path`, atomically and durably (see write_file)."""
    weights = io.BytesIO()
    np.savez(weights, **arrays)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_FILE, json.dumps(metadata, indent=2))
            archive.writestr(CONFIG_FILE, json.dumps(config, indent=2))
            archive.writestr(WEIGHTS_FILE, weights.getvalue())
    return write_file(path, write)


def read_archive(path) -> tuple[dict, dict, dict]:
    """(config, metadata, arrays) of a file write_archive wrote; arrays are read with allow_pickle=False.
    A damaged file (truncated, a flipped bit, a missing member or array, broken JSON, an array whose
    dtype or shape differs from what the file recorded, an object array) raises CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file at '{path}'. Pass the path that model.save('....keras') wrote.")
    with reading(path), zipfile.ZipFile(path) as archive:
        missing = {CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE} - set(archive.namelist())
        if missing:
            raise CheckpointError(f"'{path}' lacks {sorted(missing)}: it is damaged, or was not written by "
                                  f"batchfit's model.save().")
        with reading(path, METADATA_FILE):
            metadata = json.loads(archive.read(METADATA_FILE))
        if not isinstance(metadata, dict) or metadata.get("format") != KERAS_FORMAT or \
                metadata.get("version") != KERAS_VERSION:
            found = metadata if isinstance(metadata, dict) else {}
            raise CheckpointError(f"'{path}' is not a batchfit .keras file of version {KERAS_VERSION} (format "
                                  f"{found.get('format')!r}, version {found.get('version')!r}). A file Keras "
                                  f"wrote holds Keras's HDF5 weights, which batchfit does not read.")
        with reading(path, CONFIG_FILE):
            config = json.loads(archive.read(CONFIG_FILE))
        with reading(path, WEIGHTS_FILE):
            with np.load(io.BytesIO(archive.read(WEIGHTS_FILE)), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        check_manifest(path, metadata.get("arrays") or {}, arrays)
    return config, metadata, arrays


# ----- objects in configs: by name, or {"module", "class_name", "config"} --------------------------

def to_json(value, what: str):
    """`value` made of JSON types (initializer objects as their configs); TypeError naming `what` otherwise."""
    def default(obj):
        from batchfit import initializers
        if isinstance(obj, initializers.Initializer):
            return initializers.serialize(obj)
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            return obj.item()
        if isinstance(obj, tuple):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} {obj!r}")
    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} holds a Python object that JSON cannot write ({e}). Give activations, "
                        f"initializers and regularizers by name (e.g. activation='relu'), or define get_config() "
                        f"returning plain values, to save the model.") from e


def serialize_object(obj):
    """A compile() argument as JSON: a name as is; an object with get_config as {"module", "class_name",
    "config"}; a function by its name. None when it cannot be written (an optax transformation, a lambda)."""
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "get_config") and not isinstance(obj, type):
        config = obj.get_config()
    elif inspect.isfunction(obj) and obj.__name__ != "<lambda>":
        return {"module": obj.__module__, "class_name": "function", "config": obj.__name__}
    else:
        return None
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError):
        return None
    return {"module": type(obj).__module__, "class_name": type(obj).__name__, "config": config}


def deserialize_object(entry, kind: str, custom_objects: dict | None):
    """The compile() argument `serialize_object` wrote; `kind` is "optimizer", "loss" or "metric"."""
    if entry is None or isinstance(entry, str):
        return entry
    from batchfit import losses, metrics, optimizers
    home = {"optimizer": optimizers, "loss": losses, "metric": metrics}[kind]
    name = entry["config"] if entry["class_name"] == "function" else entry["class_name"]
    found = (custom_objects or {}).get(name) or getattr(home, name, None)
    if found is None:
        raise ValueError(f"Unknown {kind} '{name}' in the saved compile settings. Pass its class or function "
                         f"to load_model(..., custom_objects={{'{name}': {name}}}), or load_model(..., "
                         f"compile=False) and compile yourself.")
    if entry["class_name"] == "function":
        return found
    config, parameters = entry["config"], inspect.signature(found.__init__).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):    # get_config may list more than __init__ takes
        config = {k: v for k, v in config.items() if k in {p.name for p in parameters}}
    return found.from_config(config) if hasattr(found, "from_config") else found(**config)


# ----- what a subclassed model was built on -----------------------------------------------------

def input_spec(x):
    """x's structure with each array as {"shape": [None, ...], "dtype": name} (JSON)."""
    if isinstance(x, dict):
        return {key: input_spec(value) for key, value in x.items()}
    if isinstance(x, (list, tuple)):
        return [input_spec(value) for value in x]
    return {"shape": [None, *(int(d) for d in np.shape(x)[1:])], "dtype": np.dtype(x.dtype).name}


def zeros_like_spec(spec):
    """One row of zeros in the structure `input_spec` described."""
    if isinstance(spec, list):
        return [zeros_like_spec(s) for s in spec]
    if set(spec) == {"shape", "dtype"} and isinstance(spec["shape"], list):
        return np.zeros((1, *spec["shape"][1:]), spec["dtype"])
    return {key: zeros_like_spec(value) for key, value in spec.items()}


# ----- Keras's keras.saving names ---------------------------------------------------------------

def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model`: the same function as `bf.models.load_model`."""
    from batchfit.models import load_model as load
    return load(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


def save_model(model, filepath, overwrite=True, **kwargs):
    """`keras.saving.save_model(model, filepath)`: `model.save(filepath)`."""
    return model.save(filepath, overwrite=overwrite)


def register_keras_serializable(package="Custom", name=None):
    """Keras's decorator for custom classes, accepted as it is: batchfit's Layer and Model subclasses
    register themselves by class name, so load_model finds them once their module is imported."""
    def register(cls):
        return cls
    return register


from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
