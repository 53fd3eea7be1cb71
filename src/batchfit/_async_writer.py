"""Checkpoint writes off the training thread: a device-side snapshot at the cut, one background writer.

At a save, the training thread takes `snapshot(leaves)`: one compiled call that packs every array
(PRNG keys as their data) into a single new uint8 buffer on the device. It is cheap, it is ordered
before the next training call (which donates the originals), and it does not wait for the device.
The job that reads it back (`Snapshot.arrays()`), serializes and writes goes to `WRITER`: one thread,
started by a job and ended when no job is left (so none outlives a fit, which waits for its writes).

Semantics (ModelCheckpoint and BackupAndRestore):
- Jobs run one at a time, in the order their keys were first submitted. A job submitted under a key
  that already has a job waiting replaces that job: a file saved more often than it can be written
  is then at most one interval staler than in a synchronous run, and never torn (each write is
  atomic). Jobs under other keys (other file names) are all written.
- `wait(owner)` blocks until every job is written; fit's end, Ctrl-C and the next fit call it, so
  after fit returns the files are those a synchronous run leaves. Fit waits for the last write's
  fsyncs too, on purpose, although the thread could finish them after fit returns (the atexit hook
  below waits for it at a normal exit): a failed write (a full disk, an I/O error) then raises in
  fit, not in a later line or never; a process killed right after fit returns (a scheduler's
  SIGKILL, a notebook restarted) keeps the last checkpoint; a file loaded right after fit is the
  last one; and a backup that delete_checkpoint removes cannot outlive the run and be resumed by the
  next one. The wait is for the write running and the newest one waiting when training ends (a
  few ms per file; a fit of several epochs pays it once).
- A job's error is kept for its owner and raised in the training thread by `check(owner)` (at the
  next save) or `wait(owner)` (at fit's end), with a note naming the job: never lost.
- The writer starts the next job as soon as one ends: a save that falls due while a write runs is
  written right after it (or replaced, as above, by a newer save of the same file).
"""

from __future__ import annotations

import atexit
import threading
import warnings
from typing import Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Snapshot", "snapshot", "Writer", "WRITER"]


class _Leaf(NamedTuple):
    """Where one array lies in a packed snapshot: its bytes [start, stop), dtype and shape."""

    start: int
    stop: int
    dtype: np.dtype
    shape: tuple
    key_impl: str | None          # the PRNG key implementation, for a key stored as its data


class Snapshot(NamedTuple):
    """A copy of some arrays taken at a cut: `packed` uint8 [N] on the device, and the layout of each."""

    packed: jax.Array
    layout: tuple

    def arrays(self) -> list:
        """The arrays as NumPy arrays (PRNG keys as their uint32 data); waits for the device."""
        raw = np.asarray(jax.device_get(self.packed))
        return [raw[leaf.start:leaf.stop].view(leaf.dtype).reshape(leaf.shape) for leaf in self.layout]


def _as_bytes(leaf):
    """An array as a flat uint8 vector of its bytes (a PRNG key as the bytes of its data)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if leaf.dtype == jnp.bool_:
        leaf = leaf.astype(jnp.uint8)
    return jnp.ravel(jax.lax.bitcast_convert_type(leaf, jnp.uint8))


@jax.jit
def _pack(leaves):
    return jnp.concatenate([_as_bytes(leaf) for leaf in leaves]) if leaves else jnp.zeros(0, jnp.uint8)


_LAYOUTS: dict = {}           # ((dtype, shape) of each leaf) -> its layout: worked out once per kind of state


def _layout(leaves: list) -> tuple:
    """The _Leaf of each of `leaves`, packed one after another."""
    layout, start = [], 0
    for leaf in leaves:
        impl = None
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl, leaf = str(jax.random.key_impl(leaf)), jax.eval_shape(jax.random.key_data, leaf)
        dtype, shape = np.dtype(leaf.dtype), tuple(leaf.shape)
        stop = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        layout.append(_Leaf(start, stop, dtype, shape, impl))
        start = stop
    return tuple(layout)


def snapshot(leaves: list) -> Snapshot:
    """A device-side copy of `leaves` (arrays [...] of any dtype, PRNG keys included) in one buffer."""
    leaves = list(leaves)
    kind = tuple((leaf.dtype, leaf.shape) for leaf in leaves)
    layout = _LAYOUTS.get(kind)
    if layout is None:
        layout = _LAYOUTS[kind] = _layout(leaves)
    return Snapshot(_pack(leaves), layout)


class Writer:
    """One background thread running write jobs; see the module docstring for the semantics."""

    def __init__(self):
        self._changed = threading.Condition()
        self._waiting: dict = {}          # key -> (owner, job, what), oldest key first
        self._running: Hashable | None = None
        self._errors: dict = {}           # owner -> the first error of its jobs not yet raised
        self._thread: threading.Thread | None = None     # the writer thread; it ends when no job is left
        self._ended: threading.Thread | None = None      # the last one that ended, for `wait` to join

    def submit(self, key: Hashable, job: Callable[[], None], owner, what: str) -> None:
        """Run `job()` in the background; it replaces a job still waiting under `key`. `what` names it in errors."""
        if jax.distributed.is_initialized() and jax.process_count() > 1:
            self.wait()      # orbax syncs a save's processes with collectives in one order everywhere: write now
            job()
            return
        with self._changed:
            self._waiting[key] = (owner, job, what)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="batchfit-checkpoint-writer", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def cancel(self, owner) -> None:
        """Drop `owner`'s jobs that have not started (a job running finishes; `wait` waits for it)."""
        with self._changed:
            self._waiting = {k: v for k, v in self._waiting.items() if v[0] is not owner}

    def check(self, owner) -> None:
        """Raise the error of one of `owner`'s jobs, if one failed since the last check."""
        with self._changed:
            error = self._errors.pop(owner, None)
        if error is not None:
            raise error

    def wait(self, owner=None, raise_errors: bool = True) -> None:
        """Block until every job submitted so far is done, then raise `owner`'s error if one failed (with
        `raise_errors=False`, as a warning: for when another exception is already on its way)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._waiting and self._thread is None)
            ended = self._ended
        if ended is not None and ended is not threading.current_thread():
            ended.join()                   # it has left its loop: no writer thread outlives the wait
        if owner is None:
            return
        if raise_errors:
            self.check(owner)
            return
        with self._changed:
            error = self._errors.pop(owner, None)
        if error is not None:
            warnings.warn(f"A background checkpoint write failed: {type(error).__name__}: {error} "
                          f"({' '.join(getattr(error, '__notes__', []))})", RuntimeWarning, stacklevel=2)

    def _next(self) -> tuple | None:
        """Take the next job; None when none is left (the thread then ends: `submit` starts another)."""
        with self._changed:
            if not self._waiting:
                self._thread, self._ended = None, threading.current_thread()
                self._changed.notify_all()
                return None
            key = next(iter(self._waiting))
            self._running = key
            return self._waiting.pop(key)

    def _work(self) -> None:
        while (taken := self._next()) is not None:
            owner, job, what = taken
            try:
                job()
            except BaseException as e:       # noqa: BLE001 - handed to the training thread, never lost
                e.add_note(f"batchfit: raised by the background write of {what}.")
                with self._changed:
                    self._errors.setdefault(owner, e)
            finally:
                with self._changed:
                    self._running = None
                    self._changed.notify_all()


WRITER = Writer()
atexit.register(WRITER.wait)          # a script that ends while a write is pending still gets its file
