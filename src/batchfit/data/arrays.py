"""In-memory arrays: check once at the boundary, put on the device, plan each epoch's chunks.

The epoch order is drawn on the host (one permutation per epoch from (seed, epoch)) and
applied by a gather inside the compiled call, so the loop over batches reads contiguous rows.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import random
import threading
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.distribution import agree_across_processes, distribution, from_processes
from batchfit.errors import describe

__all__ = ["Chunk", "DeviceData", "Piece", "standardize", "num_samples", "sample_weights", "take",
           "plan_chunks", "fresh_seed", "epoch_order", "target_dtype", "leaves", "check_finite", "is_memmap",
           "release_pages", "read_rows", "aligned_empty", "to_device", "put_chunk",
           "shared_piece", "pass_ended"]


class Chunk(NamedTuple):
    """One compiled call: batches [first, last], starting at sample `start` of the epoch order."""

    first: int
    last: int
    start: int
    num_steps: int   # full batches fused with lax.scan
    tail: int        # size of the partial last batch run after them (0: none)

    def rows(self, order, batch_size: int):
        """This chunk's part of an epoch order (None: the rows are in order)."""
        if order is None:
            return None
        end = self.start + self.num_steps * batch_size + self.tail
        return order if self.start == 0 and end == len(order) else order[self.start:end]


class DeviceData(NamedTuple):
    """Samples on the device: x (array or dict) [N, ...], y [N, ...], w [N] (y, w None to predict)."""

    x: Any
    y: Any
    w: Any


class Piece(NamedTuple):
    """The input of one compiled call: `chunk` says which batches, `data` holds them.

    `order`: int32 indices of the chunk's rows in `data`, gathered in the compiled call (a
    shuffled epoch); None: the rows are contiguous from `chunk.start`.
    """

    chunk: Chunk
    data: DeviceData
    batch_size: int
    order: Any = None


def target_dtype(dtype, name: str) -> np.dtype:
    """The dtype batchfit trains on for input of `dtype`: float32 for bool and floats, int32 for 64-bit ints."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"`{name}` must be numeric (bool, int or float); got dtype {dtype}. "
            f"Encode strings or objects as numbers first (e.g. with np.unique(..., return_inverse=True)).")
    if dtype.kind in "bf":
        return np.dtype(np.float32)
    return np.dtype(np.int32) if dtype.itemsize == 8 else dtype


def leaves(tree) -> list:
    """The arrays of `tree` (an array, a dict of arrays, a tuple, or None); one array costs nothing."""
    if tree is None:
        return []
    if isinstance(tree, (np.ndarray, jax.Array)):
        return [tree]
    return jax.tree.leaves(tree)


def is_memmap(tree) -> bool:
    """True when some leaf of `tree` is a NumPy memmap (data on disk, streamed rather than copied)."""
    return any(isinstance(leaf, np.memmap) for leaf in leaves(tree))


def release_pages(array) -> None:
    """Drop the pages of a memmap that this process has read, so they stop counting in its RSS.

    The data stays in the file and the OS page cache; a later read maps it again. Private
    (copy-on-write, mode 'c') maps are left alone: dropping their pages would lose writes.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is None or getattr(array, "mode", "c") == "c" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):   # closed or unsupported: only memory use is at stake
        pass


_vdot = getattr(np.vdot, "_implementation", np.vdot)     # the C function, past __array_function__


def _squares_finite(array) -> bool:
    """True proves every value finite: a finite sum of squares (NaN and inf propagate). False
    proves nothing (an overflow of finite values). One BLAS call, cheaper than a ufunc reduction."""
    return math.isfinite(_vdot(array, array))


def check_finite(array: np.ndarray, name: str, allow_nonfinite: bool = False, message: str | None = None) -> None:
    """Refuse NaN and inf in a float array (a no-op for integer arrays or with `allow_nonfinite`).

    The one finiteness rule, for in-memory arrays once per call and for streams once per chunk.
    """
    if allow_nonfinite or array.dtype.kind != "f" or _squares_finite(array):
        return
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"`{name}` ({describe(array)}) contains {bad} NaN or infinite values. " + (message or
            "Clean or impute them, or pass `allow_nonfinite=True` to compile() to train on them anyway."))


def _as_array(value, name: str, allow_nonfinite: bool):
    if type(value) is np.ndarray and value.dtype == np.float32 and value.ndim:   # the hot path
        check_finite(value, name, allow_nonfinite)
        return value
    if isinstance(value, jax.Array):
        array = value
    else:
        if hasattr(value, "to_numpy"):          # pandas DataFrame / Series
            value = value.to_numpy()
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` could not be read as a numeric array ({describe(value)}): {e}.") from e
    kind = np.dtype(array.dtype).kind
    if kind not in "biuf":
        raise TypeError(
            f"`{name}` must be numeric (bool, int or float); got {describe(array)}. "
            f"Encode strings or objects as numbers first (e.g. with np.unique(..., return_inverse=True)).")
    if kind == "f":
        check_finite(np.asarray(array), name, allow_nonfinite)
    if kind in "bf" and array.dtype != np.float32:
        array = array.astype(np.float32) if isinstance(array, np.ndarray) else array.astype(jnp.float32)
    elif kind in "iu" and array.dtype.itemsize == 8:
        array = array.astype(np.int32) if isinstance(array, np.ndarray) else array.astype(jnp.int32)
    if array.ndim == 0:
        raise ValueError(f"`{name}` must have a batch axis; got a scalar {describe(array)}.")
    return array


def standardize(tree, name: str, allow_nonfinite: bool = False):
    """Arrays (or a dict of arrays) with float32 / int32 dtypes, checked for type and finiteness."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: _as_array(v, f"{name}['{k}']", allow_nonfinite) for k, v in tree.items()}
    return _as_array(tree, name, allow_nonfinite)


def num_samples(*trees) -> int:
    """The common number of samples of `trees`; a clear error when they disagree."""
    arrays = [leaf for tree in trees for leaf in leaves(tree)]
    sizes = {leaf.shape[0] for leaf in arrays}
    if len(sizes) > 1:
        got = ", ".join(f"{leaf.shape[0]} ({describe(leaf)})" for leaf in arrays)
        raise ValueError(f"`x`, `y` and `sample_weight` must have the same number of samples; got {got}. "
                         f"Slice them to the same length.")
    n = sizes.pop() if sizes else 0
    if n == 0:
        raise ValueError("The data is empty (0 samples). Pass at least one sample.")
    return n


def _class_indices(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] > 1:
        return np.argmax(y, axis=-1).reshape(-1)
    return np.round(y.reshape(y.shape[0], -1)[:, 0]).astype(np.int64)


def sample_weights(y, n: int, sample_weight=None, class_weight=None) -> np.ndarray | None:
    """Per-sample weights [n] float32: `sample_weight` times the `class_weight` of each label.

    None when neither is given: every sample weighs 1, and the step needs no weights at all.
    NaN and inf weights are refused: one of them turns every trained weight into NaN.
    """
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n, np.float32)
    if sample_weight is not None:
        w = w * _sample_weight_array(sample_weight, n)
    if class_weight is not None:
        w = w * _class_weight_lookup(class_weight, y)
    return w


def _sample_weight_array(sample_weight, n: int) -> np.ndarray:
    """`sample_weight` as float32 [n], checked: numeric, one finite weight per sample."""
    if hasattr(sample_weight, "to_numpy"):
        sample_weight = sample_weight.to_numpy()
    try:
        sw = np.asarray(sample_weight)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`sample_weight` could not be read as an array ({describe(sample_weight)}): {e}.") from e
    if sw.dtype.kind not in "biuf" or sw.shape not in ((n,), (n, 1)):
        raise ValueError(f"`sample_weight` must be numeric with shape [{n}] (one weight per sample); got "
                         f"{describe(sample_weight) if sw.ndim == 0 else describe(sw)}. Pass a 1-D array of "
                         f"length {n}, e.g. np.full({n}, 2.0) to weigh every sample by 2.")
    sw = sw.astype(np.float32).reshape(n)
    check_finite(sw, "sample_weight", message="Every sample weight must be a finite number.")
    return sw


def _class_weight_lookup(class_weight, y) -> np.ndarray:
    """The weight of each sample's class [n] float32 (Keras's class_weight: class index -> weight)."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"`class_weight` must be a dict {{class_index: weight}}; got {describe(class_weight)}.")
    table = {}
    for key, value in class_weight.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value):
            raise ValueError(f"`class_weight` values must be finite numbers; got {value!r} for class {key!r}. "
                             f"Give every class a finite weight, e.g. {{0: 1.0, 1: 5.0}}.")
        table[int(key)] = float(value)
    labels = _class_indices(y)
    missing = sorted(set(np.unique(labels).tolist()) - set(table))
    if missing:
        raise ValueError(f"`class_weight` has no weight for classes {missing} found in `y`; "
                         f"it has keys {sorted(class_weight)}. Add a weight for every class.")
    return np.array([table[int(c)] for c in labels], np.float32)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary.

    The CPU backend takes such arrays as they are; an unaligned one is copied on every
    dispatch (measured: 700 us instead of 50 us for a 0.8 MB chunk).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(size + alignment, np.uint8)
    offset = (-buffer.ctypes.data) % alignment
    return buffer[offset:offset + size].view(dtype).reshape(shape)


def read_rows(array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` for a memmap, read with pread so that the rows' pages are never mapped.

    Gathering scattered rows through the mapping maps far more than it reads: the kernel
    maps whole page-cache folios around each fault (about 800 KiB per 1 KiB row measured
    here), so one shuffled epoch would map the whole file. Falls back to indexing for
    copy-on-write maps and rows that are not contiguous.
    """
    mapping = getattr(array, "_mmap", None)
    row_bytes = array.dtype.itemsize * math.prod(array.shape[1:])
    if (mapping is None or array.mode == "c" or array.ndim == 0 or array.strides[0] != row_bytes
            or not array[:1].flags.c_contiguous or getattr(array, "filename", None) is None):
        return array[rows]
    base = np.frombuffer(mapping, np.uint8).ctypes.data
    start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY + (array.ctypes.data - base)
    out = np.empty((len(rows),) + array.shape[1:], array.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(array.filename, "rb", buffering=0) as f:
        fd = f.fileno()
        for i, row in enumerate(np.asarray(rows, np.int64).tolist()):
            if row < 0:
                row += array.shape[0]
            os.preadv(fd, [view[i * row_bytes:(i + 1) * row_bytes]], start + row * row_bytes)
    return out


_copy_to_device = jax.jit(lambda tree: tree)     # one C++ dispatch, not device_put's Python path


def to_device(tree, several_calls: bool):
    """The samples [N, ...] as the compiled calls read them.

    One device: NumPy arrays copied to it once when `several_calls` read them (a single call's own
    argument transfer is the cheapest copy). DataParallel: replicated on every device once, each
    batch is split inside the call. DataParallel over several processes: each process passes its
    own share and gets [P, N, ...] arrays, row n of process p at [p, n] (on p's devices only).
    """
    current = distribution()
    if current is None:
        return _copy_to_device(tree) if several_calls else tree
    if current.num_processes == 1:
        return jax.device_put(tree, current.replicated)
    return from_processes(tree)


def put_chunk(data):
    """A stream's chunk [rows, ...] copied to the device ahead of its call: the default device, or every
    device of a one-process DataParallel (each batch is split inside the call, as for to_device's arrays).
    Across processes the consumer places each chunk (StreamFeed: every process at the same point)."""
    current = distribution()
    return jax.device_put(data) if current is None else jax.device_put(data, current.replicated)


def _describe_step(row) -> str:
    """One process's (has a chunk, first batch, full batches, tail, batch size, layout digest), in words."""
    more, first, num_steps, tail, batch_size, digest = row
    if not more:
        return "the pass ended"
    return (f"batches from {first}: {num_steps} of {batch_size} rows" + (f" and one of {tail}" if tail else "")
            + f" (layout {digest & 0xFFFFFFFF:08x})")      # the digest comes back as int32


def shared_piece(piece: Piece) -> Piece:
    """`piece` of this process as one global chunk [P, rows, ...] of every process's own rows, after every
    process has checked that the others bring a chunk of the same batches (one collective per chunk)."""
    chunk, leaves = piece.chunk, jax.tree.leaves(piece.data)
    digest = zlib.crc32(repr([(a.shape, str(a.dtype)) for a in leaves]).encode())
    agree_across_processes((1, chunk.first, chunk.num_steps, chunk.tail, piece.batch_size, digest), _describe_step)
    return piece._replace(data=from_processes(piece.data, checked=False))


def pass_ended() -> None:
    """Across processes, after a stream's pass: every process's pass ends at the same batch, or all of them
    raise, saying where each one stood (the collective that matches another process's next chunk)."""
    agree_across_processes((0,) * 6, _describe_step)


def take(tree, index):
    """`tree` restricted to the samples `index` (a slice or index array)."""
    return jax.tree.map(lambda a: a[index], tree)


@functools.lru_cache(maxsize=256)        # a pure function of ints that fit asks every epoch
def plan_chunks(n: int, batch_size: int, steps_per_execution: int, first_batch: int = 0,
                cuts: tuple = ()) -> tuple[Chunk, ...]:
    """Split an epoch of n samples, from batch `first_batch` on, into compiled calls of at most
    `steps_per_execution` batches; a call also ends after each batch in `cuts` (where a callback needs
    control), and the next one starts there.

    >>> plan_chunks(1000, 32, 16)[-1]
    Chunk(first=16, last=31, start=512, num_steps=15, tail=8)
    >>> [(c.first, c.last) for c in plan_chunks(1000, 32, 32, cuts=(9, 19))]
    [(0, 9), (10, 19), (20, 31)]
    """
    num_full, tail = divmod(n, batch_size)
    num_batches = num_full + (tail > 0)
    ends = sorted({c for c in cuts if first_batch <= c < num_batches - 1})
    chunks, first, next_end = [], first_batch, 0
    while first < num_batches:
        last = min(first + steps_per_execution, num_batches) - 1
        while next_end < len(ends) and ends[next_end] < first:
            next_end += 1
        if next_end < len(ends) and ends[next_end] < last:
            last = ends[next_end]
        has_tail = tail > 0 and last == num_batches - 1
        chunks.append(Chunk(first, last, first * batch_size, last - first + 1 - has_tail, tail if has_tail else 0))
        first = last + 1
    return tuple(chunks)


def fresh_seed() -> int:
    """A seed for `seed=None`, from Python's generator (seeded from the OS, and again in a forked child)."""
    return random.getrandbits(31)


_PHILOX = threading.local()     # epoch_order's generator, one per thread


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch [n] int32, a permutation drawn from (seed, epoch) on the host.

    A counter-based generator (Philox, keyed by `seed`, its counter at `epoch`) re-keyed in place: an
    epoch's order costs the shuffle alone, not a new generator and the hashing of its seed.
    """
    generator = getattr(_PHILOX, "generator", None)
    if generator is None:               # one per thread: the stream's workers draw orders too
        generator = _PHILOX.generator = np.random.Generator(np.random.Philox(0))
    generator.bit_generator.state = {
        "bit_generator": "Philox", "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0,
        "uinteger": 0, "state": {"counter": np.array([epoch % 2**64, 0, 0, 0], np.uint64),
                                 "key": np.array([seed % 2**64, seed // 2**64 % 2**64], np.uint64)}}
    order = np.arange(n, dtype=np.int32)
    generator.shuffle(order)
    return order
