"""Training checkpoints: a Position (the whole TrainState and the loop's place) saved with orbax.

Each save is a numbered orbax step folder holding the arrays (`state`, read by tensorstore: no
pickle) and a JSON record (`meta`: the epoch, batch, data-order seed, running totals and batch
losses, plus what the caller adds, such as History's earlier epochs). Orbax writes a step aside
and renames it into place; before the rename every file is fsynced, after it the folder, so a
crash at any instant leaves the previous checkpoint as the latest and never a half-written one.
Leftover temporary folders are removed when the next `TrainingCheckpoints` opens the folder.

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
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from batchfit.engine.state import Accumulated, Position
from batchfit.errors import CheckpointError

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
        """The orbax CheckpointManager, opened on first use (orbax is imported only then)."""
        if self._manager is None:
            import orbax.checkpoint as ocp
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, enable_async_checkpointing=False, cleanup_tmp_directories=True,
                temporary_path_class=_durable_path_class())
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def steps(self) -> list[int]:
        """The saved steps, oldest first (none when the folder is missing)."""
        return sorted(self.manager.all_steps()) if self.directory.exists() else []

    def save(self, position: Position, extra: dict | None = None, step: int | None = None) -> int:
        """Save `position` and the JSON-able `extra` as `step` (default: the next after the newest saved);
        returns that step."""
        import orbax.checkpoint as ocp
        arrays, meta = encode(position)
        meta["extra"] = extra or {}
        meta["check"] = _digest(meta)
        if step is None:
            steps = self.steps()
            step = steps[-1] + 1 if steps else 0
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()
        _fsync_folder(self.directory)
        return step

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


def encode(position: Position) -> tuple[dict, dict]:
    """({part: {index: array}}, the JSON record) of a Position; PRNG keys as their uint32 data."""
    train, keys = _plain_leaves(jax.tree.leaves(position.train))
    arrays = {"train": _numbered(train)}
    if position.accumulated is not None:
        arrays["accumulated"] = _numbered(jax.tree.leaves(position.accumulated))
    metric_layout = None
    if position.metric_states is not None:
        metric_layout = [len(jax.tree.leaves(s)) for s in position.metric_states]
        arrays["metric_states"] = _numbered(jax.tree.leaves(position.metric_states))
    meta = {"format": _FORMAT, "version": _VERSION, "epoch": int(position.epoch), "batch": int(position.batch),
            "seed": int(position.seed), "keys": keys, "num_train": len(train),
            "totals": np.asarray(position.totals, np.float32).tolist(),
            "batch_losses": np.asarray(position.batch_losses, np.float32).tolist(),
            "metric_states": metric_layout,
            "sha256": {f"{part}/{name}": _array_digest(a)
                       for part, named in arrays.items() for name, a in named.items()}}
    return arrays, meta


def decode(arrays: dict, meta: dict, like, where) -> Position:
    """The Position saved as `encode` wrote it, its training state checked against `like`."""
    _check_digests(arrays, meta, where)
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
    return Position(train, meta["epoch"], meta["batch"], meta["seed"], np.asarray(meta["totals"], np.float32),
                    np.asarray(meta["batch_losses"], np.float32), accumulated, states)


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
              "batch_losses": list, "extra": dict, "sha256": dict}
    for name, kind in needed.items():
        if not isinstance(meta.get(name), kind):
            raise CheckpointError(f"The training checkpoint {where}: its record's `{name}` is "
                                  f"{type(meta.get(name)).__name__}, expected {kind.__name__}. Delete it.")


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


# ----- durability ------------------------------------------------------------------


def _fsync_folder(path: Path) -> None:
    """fsync every file under `path` and every folder (a rename is durable once its folder is)."""
    if not path.exists():
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name), os.O_RDONLY)
        _fsync(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


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
