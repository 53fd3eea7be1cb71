"""Training checkpoints: a Position (the whole TrainState and the loop's place) and a JSON record.

In one process, each save is one file `{step}.npz` (uncompressed, read with allow_pickle=False): the
arrays' raw bytes (the batch losses included) and the record (`record.json`: the epoch, batch, seeds,
running totals, each array's dtype, shape and SHA-256, and what the caller adds, such as History's
earlier epochs). It is written aside, fsynced, renamed into place and the folder fsynced: a crash at
any instant leaves the previous checkpoint as the latest, never a half-written one; a save removes
the temporary files a killed one left. Two fsyncs and a rename, where an orbax step costs about 30
fsyncs, threads and an event loop. Across processes (jax.distributed: arrays sharded over hosts),
each save is an orbax step folder written aside and renamed alike; restore reads either kind.

>>> import tempfile, batchfit as bf, numpy as np
>>> model = bf.Sequential([bf.layers.Dense(1, input_shape=(2,))], seed=0)
>>> model.compile(optimizer="sgd", loss="mse")
>>> _ = model.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=4, verbose=0)
>>> store = TrainingCheckpoints(tempfile.mkdtemp())
>>> store.save(model.get_position(), {"note": "after one epoch"})
0
>>> position, extra = store.restore(model.get_position().train)
>>> position.epoch, position.batch, extra["note"]
(1, 0, 'after one epoch')
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from batchfit.data._seeds import seeds_from_record, seeds_record
from batchfit.engine.state import Accumulated, Position, place_from_record, place_record
from batchfit.errors import CheckpointError, reading

__all__ = ["TrainingCheckpoints"]

_FORMAT = "batchfit.position"
_VERSION = 1


class TrainingCheckpoints:
    """The last `max_to_keep` Positions saved in `directory`, newest first on restore.

    Args:
      directory: a folder for these checkpoints only (created when missing).
      max_to_keep: how many saves to keep (older ones are deleted after a save succeeds).
    """

    def __init__(self, directory, max_to_keep: int = 1):
        self.directory = Path(os.fspath(directory)).absolute()
        self.max_to_keep = max_to_keep
        self._manager = None

    @property
    def manager(self):
        """The orbax CheckpointManager (across processes), opened on first use (orbax is imported only then)."""
        if self._manager is None:
            import orbax.checkpoint as ocp
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, enable_async_checkpointing=False, cleanup_tmp_directories=True,
                temporary_path_class=_durable_path_class())
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def steps(self) -> list[int]:
        """The saved steps, oldest first (none when the folder is missing)."""
        if not self.directory.exists():
            return []
        if _across_processes():
            return sorted(self.manager.all_steps())
        return sorted(step for step, _ in _step_entries(self.directory))

    def save(self, position: Position, extra: dict | None = None, step: int | None = None) -> int:
        """Save `position` and the JSON-able `extra` as `step` (default: the next after the newest saved);
        returns that step."""
        across = _across_processes()
        arrays, meta = encode(position, losses_as_array=not across)
        meta["extra"] = extra or {}
        if step is None:
            steps = self.steps()
            step = steps[-1] + 1 if steps else 0
        if across:
            self._save_with_orbax(step, arrays, meta)
            return step
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f".*{_STAGING}*"):          # from a save killed mid-write
            leftover.unlink(missing_ok=True)
        _write_aside(self.directory / f"{step}.npz", _file_bytes(arrays, meta))
        for _, entry in _step_entries(self.directory)[:-self.max_to_keep]:       # older steps, once this one is in
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return step

    def _save_with_orbax(self, step: int, arrays: dict, meta: dict) -> None:
        import orbax.checkpoint as ocp
        meta["check"] = _digest(meta)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()
        _fsync_folder(self.directory / str(step))      # orbax writes commit_success.txt after the rename
        _fsync_directory(self.directory)

    def restore(self, like) -> tuple[Position, dict] | None:
        """(the newest loadable Position, its `extra`), or None when nothing is saved.

        `like`: the model's TrainState (`model.get_position().train`), whose layout the saved
        state must have. A damaged newest step falls back to an older one when there is one;
        when none loads, CheckpointError names the folder and what is wrong.
        """
        steps, errors = self.steps(), []
        for step in reversed(steps):
            try:
                return self._restore_step(step, like)
            except CheckpointError as e:
                errors.append(str(e))
        if errors:
            raise CheckpointError(" ".join(errors))
        return None

    def _restore_step(self, step: int, like) -> tuple[Position, dict]:
        where = self.directory / f"{step}.npz"
        if not where.exists():
            return self._restore_orbax_step(step, like)
        with reading(str(where)), np.load(where, allow_pickle=False) as archive:   # one CheckpointError
            meta = json.loads(archive[_RECORD].tobytes())
            _check_meta(meta, where)
            arrays = _stored_arrays(archive, meta["layout"])
        return decode(arrays, meta, like, where), meta["extra"]

    def _restore_orbax_step(self, step: int, like) -> tuple[Position, dict]:
        import orbax.checkpoint as ocp
        where = self.directory / str(step)
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            _check_meta(meta, where)
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        except CheckpointError:
            raise
        except Exception as e:      # orbax, tensorstore and JSON each raise their own kinds
            raise CheckpointError(f"The training checkpoint {where} cannot be read ({type(e).__name__}: "
                                  f"{_first_line(e)}). Delete it to start over.") from None
        return decode(restored.state, meta, like, where), meta["extra"]

    def delete(self) -> None:
        """Remove every checkpoint and the folder."""
        self._manager = None
        shutil.rmtree(self.directory, ignore_errors=True)


# ----- a Position as named arrays and a JSON record -----------------------------------


def encode(position: Position, losses_as_array: bool = False) -> tuple[dict, dict]:
    """({part: {index: array}}, the JSON record) of a Position; PRNG keys as their uint32 data. The epoch's
    batch losses go in the record, or with `losses_as_array` in part "batch_losses" (a float32 [batch]
    array, thousands of floats that JSON would spell out; orbax cannot save it while it is empty)."""
    train, keys = _plain_leaves(jax.tree.leaves(position.train))
    losses = np.asarray(position.batch_losses, np.float32)
    arrays = {"train": _numbered(train), **({"batch_losses": {"00000": losses}} if losses_as_array else {})}
    if position.accumulated is not None:
        arrays["accumulated"] = _numbered(jax.tree.leaves(position.accumulated))
    metric_layout = None
    if position.metric_states is not None:
        metric_layout = [len(jax.tree.leaves(s)) for s in position.metric_states]
        arrays["metric_states"] = _numbered(jax.tree.leaves(position.metric_states))
    meta = {"format": _FORMAT, "version": _VERSION, "epoch": int(position.epoch), "batch": int(position.batch),
            "seed": int(position.seed), "keys": keys, "num_train": len(train),
            "totals": np.asarray(position.totals, np.float32).tolist(),
            **({} if losses_as_array else {"batch_losses": losses.tolist()}),
            "metric_states": metric_layout, **seeds_record(position), **place_record(position),   # _seeds.py, state.py
            "sha256": {f"{part}/{name}": _array_digest(a)
                       for part, named in arrays.items() for name, a in named.items()}}
    return arrays, meta


def decode(arrays: dict, meta: dict, like, where) -> Position:
    """The Position saved as `encode` wrote it, its training state checked against `like`."""
    _check_digests(arrays, meta, where)
    losses = arrays["batch_losses"]["00000"] if "batch_losses" in arrays else meta.get("batch_losses")
    if losses is None:
        raise CheckpointError(f"The training checkpoint {where} holds no batch losses. Delete it to start over.")
    leaves = [np.asarray(arrays["train"][k]) for k in _order(arrays["train"], meta["num_train"], where)]
    for index, impl in meta["keys"].items():
        leaves[int(index)] = jax.random.wrap_key_data(leaves[int(index)], impl=impl)
    _check_layout(leaves, jax.tree.leaves(like), where)
    train = jax.tree.unflatten(jax.tree.structure(like), [jax.numpy.asarray(a) for a in leaves])
    accumulated = None
    if "accumulated" in arrays:
        grads = [jax.numpy.asarray(arrays["accumulated"][k]) for k in _order(arrays["accumulated"], None, where)]
        params = jax.tree.leaves(like.params)
        _check_layout(grads[:-1], params, where)
        accumulated = Accumulated(jax.tree.unflatten(jax.tree.structure(like.params), grads[:-1]), grads[-1])
    states = None
    if meta["metric_states"] is not None:
        flat = [np.array(arrays["metric_states"][k]) for k in _order(arrays["metric_states"], None, where)]
        cuts = np.cumsum([0, *meta["metric_states"]])
        states = tuple(tuple(flat[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
    position = Position(train, meta["epoch"], meta["batch"], meta["seed"], np.asarray(meta["totals"], np.float32),
                        np.asarray(losses, np.float32), accumulated, states)
    return position._replace(**seeds_from_record(meta), **place_from_record(meta))     # checked by _check_meta


def _plain_leaves(leaves: list) -> tuple[list, dict]:
    """The leaves with each PRNG key array replaced by its data, and {index: the key's impl name}."""
    plain, keys = [], {}
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            keys[str(i)] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        plain.append(np.asarray(leaf))
    return plain, keys


def _numbered(leaves: list) -> dict:
    return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def _order(part: dict, expected: int | None, where) -> list:
    names = sorted(part)
    if names != [f"{i:05d}" for i in range(len(names))] or (expected is not None and len(names) != expected):
        raise CheckpointError(f"The training checkpoint {where} is incomplete: it holds arrays {names[:4]}... "
                              f"({len(names)}), expected {expected if expected is not None else 'a numbered run'}. "
                              f"Delete it to start over.")
    return names


def _check_layout(saved: list, expected: list, where) -> None:
    """Refuse arrays of another count, shape or dtype than the model's (object arrays included)."""
    if len(saved) != len(expected):
        raise CheckpointError(f"The training checkpoint {where} holds {len(saved)} arrays; this model's training "
                              f"state has {len(expected)}. Restore it into a model built and compiled alike.")
    for i, (a, b) in enumerate(zip(saved, expected)):
        if np.shape(a) != np.shape(b) or a.dtype != b.dtype:
            raise CheckpointError(f"The training checkpoint {where}: array {i} is {a.dtype}{list(np.shape(a))}, "
                                  f"but this model expects {b.dtype}{list(np.shape(b))}. Restore it into a model "
                                  f"built and compiled alike, or delete the checkpoint.")


def _check_meta(meta, where) -> None:
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise CheckpointError(f"The training checkpoint {where} is not a batchfit position (version {_VERSION}): "
                              f"its record says {_first_line(str(meta)[:80])}. Delete it to start over.")
    if meta.get("check") != _digest(meta):
        raise CheckpointError(f"The training checkpoint {where}: its record does not match its SHA-256 (the "
                              f"file was changed or damaged). Delete it to start over.")
    needed = {"epoch": int, "batch": int, "seed": int, "keys": dict, "num_train": int, "totals": list,
              "extra": dict, "sha256": dict}
    for name, kind in needed.items():
        if not isinstance(meta.get(name), kind):
            raise CheckpointError(f"The training checkpoint {where}: its record's `{name}` is "
                                  f"{type(meta.get(name)).__name__}, expected {kind.__name__}. Delete it.")
    # The seeds and place: absent in checkpoints written before they were kept; batch_losses: absent when an array.
    if None in (seeds_from_record(meta), place_from_record(meta)) or not isinstance(meta.get("batch_losses", []), list):
        raise CheckpointError(f"The training checkpoint {where}: its record's data seeds (`data_seeds`, `validation_seed`, "
                              f"`validation_data_seeds`), places (`data_place`, `validation_place` ([passes, batches])) "
                              f"or `batch_losses` are not numbers as a save writes them. Delete it.")


def _digest(meta: dict) -> str:
    """The SHA-256 of the record without its own check: a flipped bit in it is caught."""
    body = {k: v for k, v in meta.items() if k != "check"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _array_digest(a) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def _check_digests(arrays: dict, meta: dict, where) -> None:
    """Every array as it was saved: orbax's files have no checksum of their own."""
    found = {f"{part}/{name}": a for part, named in arrays.items() for name, a in named.items()}
    if sorted(found) != sorted(meta["sha256"]):
        raise CheckpointError(f"The training checkpoint {where} holds other arrays than its record lists "
                              f"({len(found)} found, {len(meta['sha256'])} listed). Delete it to start over.")
    for name, a in found.items():
        a = np.asarray(a)
        if a.dtype == object or _array_digest(a) != meta["sha256"][name]:
            raise CheckpointError(f"The training checkpoint {where}: array {name} ({a.dtype}{list(a.shape)}) is "
                                  f"not what was saved (its SHA-256 differs). Delete the checkpoint to start over.")


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


# ----- one file per step ------------------------------------------------------------

_RECORD = "record.json"
_ARRAYS = "arrays"
_STAGING = ".batchfit-tmp-"


def _across_processes() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _step_entries(directory: Path) -> list:
    """(step, path) of the steps saved in `directory`, oldest first: `{step}.npz` files, orbax `{step}` folders."""
    found = []
    for entry in os.scandir(directory):
        stem = entry.name.removesuffix(".npz")
        if stem.isdigit() and (entry.is_dir() if stem == entry.name else entry.is_file()):
            found.append((int(stem), Path(entry.path)))
    return sorted(found)


def _file_bytes(arrays: dict, meta: dict) -> bytes:
    """The .npz of {part: {name: array}} and the record: every array's bytes one after another in one
    uint8 [N] member, the dtype, shape and [start, stop) of each in the record's `layout` (so any dtype,
    bfloat16 included, reads back exactly, and without pickle)."""
    chunks, layout, start = [], {}, 0
    for part, named in arrays.items():
        layout[part] = {}                # a part may hold no array (no metric state): it is still there
        for name, a in named.items():
            a = np.asarray(a)            # (np.ascontiguousarray would make a scalar [1])
            chunks.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
            layout[part][name] = [a.dtype.name, list(a.shape), start, start + chunks[-1].size]
            start += chunks[-1].size
    meta["layout"] = layout
    meta["check"] = _digest(meta)
    buffer = io.BytesIO()
    np.savez(buffer, **{_ARRAYS: np.concatenate(chunks) if chunks else np.zeros(0, np.uint8),
                        _RECORD: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    return buffer.getvalue()


def _stored_arrays(archive, layout: dict) -> dict:
    """{part: {name: array}} read back from the .npz as `layout` ({part: {name: [dtype, shape, start, stop]}})
    says; each array is copied out of the member (aligned, and safe to keep)."""
    raw = archive[_ARRAYS]
    return {part: {name: np.array(raw[a:b]).view(jax.numpy.dtype(dtype)).reshape(tuple(shape))
                   for name, (dtype, shape, a, b) in named.items()} for part, named in layout.items()}


def _write_aside(path: Path, data: bytes) -> None:
    """`data` at `path`, atomically and durably: a sibling file written and fsynced, renamed onto `path`,
    then the folder fsynced (a kill at any instant leaves the old file or the new one)."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}{_STAGING}", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        _fsync(staging, os.O_RDONLY)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    _fsync_directory(path.parent)


# ----- durability ------------------------------------------------------------------


def _fsync_directory(path: Path) -> None:
    """Make the renames in `path` durable."""
    _fsync(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_folder(path: Path) -> None:
    """fsync every file under `path` and every folder (a rename is durable once its folder is)."""
    if not path.exists():
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name), os.O_RDONLY)
        _fsync_directory(root)


def _fsync(path: str, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _durable_path_class():
    """orbax's atomic-rename temporary folder, with every file fsynced before the rename."""
    from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath

    class DurableRenameTemporaryPath(AtomicRenameTemporaryPath):
        async def finalize(self, *args, **kwargs):
            _fsync_folder(Path(self.get()))
            await super().finalize(*args, **kwargs)

    return DurableRenameTemporaryPath
