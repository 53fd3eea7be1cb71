"""Streaming input: batches from any iterable, assembled into chunks on a background thread.

A chunk is K consecutive batches of one size B (and, optionally, one differently sized
batch that closes it: the tail), concatenated into arrays of K*B + p rows and put on the
device ahead of use. The compiled loop runs the same `fit_chunk` on it as on in-memory
data (start 0), so the numbers are the same as the array path's.

Epochs follow Keras. Without `steps`, an epoch is one pass: a fresh iterator of a
re-iterable input, or whatever is left of a one-shot iterator (a generator object is
consumed once; a later epoch that gets no batch stops training). With `steps`, an epoch is
`steps` batches drawn from one iterator kept across epochs; a re-iterable input starts
over when it runs out at the start of an epoch, and one that runs out inside an epoch ends
that epoch early (a warning), as in Keras. A resumed fit reads on from the place its
Position keeps (data/_stream_place.py).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import jax
import numpy as np

from batchfit.data._ops import inline_prefetch
from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
from batchfit.data._stream_place import StepsPlace
from batchfit.data.arrays import (Chunk, DeviceData, Piece, aligned_empty, check_finite, pass_ended, put_chunk,
                                  release_pages, sample_weights, shared_piece, target_dtype)
from batchfit.data.prefetch import Prefetcher, put_ahead, stoppable
from batchfit.distribution import across_processes
from batchfit.errors import describe

__all__ = ["StreamSource", "StreamFeed", "unpack", "STREAM_CHUNK_BYTES", "STREAM_MAX_STEPS"]

STREAM_CHUNK_BYTES = 16 << 20     # "auto" chunks of a stream stay under this many bytes ...
STREAM_MAX_STEPS = 512            # ... and this many steps, so that host and device overlap
EPOCH_END = object()
_NAMES = ("x", "y", "sample_weight")


def unpack(element) -> tuple:
    """Keras's rule for one batch: (x,), (x, y) or (x, y, sample_weight) tuples or lists; else x alone."""
    if isinstance(element, list):
        element = tuple(element)
    if not isinstance(element, tuple):
        return element, None, None
    if not 1 <= len(element) <= 3:
        raise ValueError(f"A batch must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple of "
                         f"{len(element)} ({describe(element)}). Yield at most three items.")
    return tuple(element) + (None,) * (3 - len(element))


def _host(leaf) -> np.ndarray:
    if isinstance(leaf, np.ndarray):          # memmaps stay memmaps, so their pages can be released
        return leaf
    if hasattr(leaf, "detach") and hasattr(leaf, "numpy"):     # torch.Tensor, without importing torch
        return leaf.detach().cpu().numpy()
    return np.asarray(leaf)


def _leaf_name(path) -> str:
    return _NAMES[path[0].idx] + "".join(str(key) for key in path[1:])


def _spec(leaf) -> str:
    return f"{leaf.dtype}[{', '.join(str(d) for d in leaf.shape)}]"


class _Layout:
    """The structure, feature shapes and dtypes of the first batch; every later batch must match."""

    def __init__(self, batch: tuple):
        paths, self.treedef = jax.tree_util.tree_flatten_with_path(batch)
        self.names = [_leaf_name(path) for path, _ in paths]
        leaves = [_host(leaf) for _, leaf in paths]
        for name, leaf in zip(self.names, leaves):
            if leaf.ndim == 0:
                raise ValueError(f"`{name}` of the first batch is a scalar ({_spec(leaf)}); batches need a "
                                 f"batch axis. Batch the data first (e.g. Dataset.batch(32)).")
        if len({leaf.shape[0] for leaf in leaves}) > 1:
            self._sizes_differ(leaves, 0)
        self.first = leaves
        self.specs = [(leaf.shape[1:], leaf.dtype) for leaf in leaves]
        self.targets = [target_dtype(leaf.dtype, name) for name, leaf in zip(self.names, leaves)]
        self.checked = [i for i, name in enumerate(self.names)     # finite check: float x and y
                        if not name.startswith("sample_weight") and leaves[i].dtype.kind == "f"]
        self._shapes = {}
        plain = all(len(path) == 1 for path, _ in paths)           # x, y, w each one array (no dicts)
        self.slots = frozenset(path[0].idx for path, _ in paths) if plain else None
        self.arity = len(leaves) if self.slots == frozenset(range(len(leaves))) else None
        self.dtypes = [dtype for _, dtype in self.specs]
        self.quick = self._quick_check()

    def _quick_check(self):
        """`quick(element)`: (leaves, size) when `element` is a tuple of NumPy arrays just like the
        first batch, else None (then `check` decides). The hot path of streaming: locals only,
        an (x, y) pair unrolled.
        """
        arity, shapes_of, dtypes, ndarray = self.arity, self._shapes, self.dtypes, np.ndarray
        dtype_x, dtype_y = (dtypes + [None, None])[:2]

        def quick(element):
            if type(element) is not tuple or len(element) != arity:
                return None
            x = element[0]
            if type(x) is not ndarray or not x.ndim:
                return None
            shapes = shapes_of.get(x.shape[0])
            if shapes is None:
                return None
            if arity == 2:
                y = element[1]
                if (type(y) is ndarray and x.shape == shapes[0] and y.shape == shapes[1]
                        and x.dtype is dtype_x and y.dtype is dtype_y):
                    return element, shapes[0][0]
                return None
            for leaf, shape, dtype in zip(element, shapes, dtypes):
                if type(leaf) is not ndarray or leaf.shape != shape or leaf.dtype is not dtype:
                    return None
            return element, shapes[0][0]
        return quick

    def check(self, batch: tuple, index: int) -> tuple[list, int]:
        """The leaves of `batch` (index `index` in its epoch) as NumPy arrays, and its size."""
        leaves = self._flat_leaves(batch) if self.slots else None
        if leaves is None:
            leaves, treedef = jax.tree.flatten(batch)
            if treedef != self.treedef:
                raise ValueError(f"Batch {index} of the input has structure {treedef}, but the first batch had "
                                 f"{self.treedef}. Yield the same (x, y[, sample_weight]) structure every time.")
            leaves = [_host(leaf) for leaf in leaves]
        size = leaves[0].shape[0] if leaves[0].ndim else -1
        shapes = self._shapes.get(size) or self._shapes_for(size)
        for i, leaf in enumerate(leaves):
            if leaf.shape != shapes[i] or leaf.dtype != self.specs[i][1]:
                self._mismatch(leaves, index, i)
        if size == 0:
            raise ValueError(f"Batch {index} of the input is empty ({_spec(leaves[0])}). Skip empty batches.")
        return leaves, size

    def _flat_leaves(self, batch):
        """The fast path for batches of plain NumPy arrays: no tree flattening."""
        slots = self.slots
        if any(type(batch[i]) is not np.ndarray if i in slots else batch[i] is not None for i in range(3)):
            return None
        return [batch[i] for i in range(3) if i in slots]

    def _shapes_for(self, size):
        self._shapes[size] = [(size, *shape) for shape, _ in self.specs]
        return self._shapes[size]

    def _sizes_differ(self, leaves, index):
        sizes = ", ".join(f"{n}: {_spec(a)}" for n, a in zip(self.names, leaves))
        raise ValueError(f"Batch {index} of the input has different numbers of samples ({sizes}). "
                         f"x, y and sample_weight of a batch must have the same length.")

    def _mismatch(self, leaves, index, i):
        leaf, name = leaves[i], self.names[i]
        if leaf.shape[1:] == self.specs[i][0] and leaf.dtype == self.specs[i][1]:
            self._sizes_differ(leaves, index)
        raise ValueError(f"Batch {index} of the input has `{name}` {_spec(leaf)}, but batch 0 had "
                         f"{_spec(self.first[i])}. Every batch must have the same feature shape and dtype "
                         f"(only the batch size may change); fix the generator or cast the batch.")

    def columns(self, group: list, rows: int, first_index: int, allow_nonfinite: bool) -> list:
        """The leaves of the batches in `group` (`rows` samples), concatenated and cast: one array per leaf."""
        columns = []
        for i, target in enumerate(self.targets):
            parts = [leaves[i] for leaves in group]
            column = np.concatenate(parts, out=aligned_empty((rows, *self.specs[i][0]), target), casting="unsafe")
            for part in parts[-1:]:
                if isinstance(part, np.memmap):     # a batch sliced from a memmap: read, now let it go
                    release_pages(part)
            if i in self.checked:
                try:
                    check_finite(column, self.names[i], allow_nonfinite)
                except ValueError:
                    self._nonfinite(group, first_index, i)
            columns.append(column)
        return columns

    def _nonfinite(self, group, first_index, i):
        for offset, leaves in enumerate(group):
            bad = int(np.size(leaves[i]) - np.count_nonzero(np.isfinite(leaves[i])))
            if bad:
                raise ValueError(
                    f"Batch {first_index + offset} of the input has {bad} NaN or infinite values in "
                    f"`{self.names[i]}` ({_spec(leaves[i])}). Clean or impute them, or pass "
                    f"`allow_nonfinite=True` to compile() to train on them anyway.")


class StreamSource(StepsPlace):
    """Batches drawn from an iterable, checked and chunked on a background thread.

    Args:
      open: `open(key) -> iterator` of raw batches for one pass (`key`: the epoch index, or
        the pass number); a one-shot input returns the same iterator every time.
      reiterable: whether `open` starts over (False for generator objects).
      steps: batches per epoch (steps_per_epoch); None: until the input is exhausted.
      num_batches: batches per pass when known (len of the input), else None.
      need_y: whether batches must carry targets (fit, evaluate) or only x is used (predict).
      first_key: the key of the first pass; its first batch is read now to check the input.
      on_epoch_end: called after each epoch (or evaluation pass), on the worker (a PyDataset's hook).
    """

    def __init__(self, open: Callable[[Any], Iterator], *, reiterable: bool, steps: int | None,
                 num_batches: int | None, need_y: bool, class_weight=None, allow_nonfinite=False,
                 first_key=0, what: str = "The input", on_epoch_end: Callable[[], None] | None = None):
        self._open, self._reiterable, self._steps, self._on_epoch_end = open, reiterable, steps, on_epoch_end
        self.seed = 0
        self.check_targets = None      # y -> None, raising ValueError: the loss's rule, run on every chunk
        self._need_y, self._class_weight, self._allow_nonfinite = need_y, class_weight, allow_nonfinite
        self._current, self._starts, self._firsts = None, {}, {}       # places: data/_stream_place.py
        self._put_ahead = put_ahead()
        self._passes = self.evaluations = self._first_key = first_key     # iterators opened; evaluation passes
        with inline_prefetch():
            iterator = iter(open(first_key))
            first = next(iterator, EPOCH_END)
        if first is EPOCH_END:
            raise ValueError(f"{what} is empty: it yielded no batch. Pass a dataset or generator with data.")
        self._layout = _Layout(self._select(first, 0))
        self._pending = (first_key, itertools.chain([first], iterator))
        self.num_batches = steps if steps is not None else num_batches
        sample = self._layout.columns([self._layout.first], len(self._layout.first[0]), 0, allow_nonfinite)
        self.sample = self._batch(sample, host=True)
        self.batch_bytes = sum(a.nbytes for a in jax.tree.leaves(self.sample))

    def _select(self, element, index: int) -> tuple:
        if type(element) is tuple and len(element) == 2 and element[1] is not None:    # the common case
            return (element[0], element[1], None) if self._need_y else (element[0], None, None)
        x, y, w = unpack(element)
        if not self._need_y:
            return x, None, None
        if y is None:
            raise ValueError(f"Batch {index} of the input has x only ({describe(x)}); training and "
                             f"evaluating need (x, y) or (x, y, sample_weight) batches.")
        return x, y, w

    def _batch(self, columns: list, host: bool = False, where: str = "the first batch"):
        """The chunk's columns as DeviceData, after the value rules that need all of it (the
        loss's target rule, finite sample and class weights): an error names the chunk's batches."""
        x, y, w = jax.tree.unflatten(self._layout.treedef, columns)
        if self._need_y:
            try:
                if self.check_targets is not None:
                    self.check_targets(y)
                weights = sample_weights(y, jax.tree.leaves(x)[0].shape[0], w, self._class_weight)
            except ValueError as e:
                raise ValueError(f"{where.capitalize()} of the input: {e}") from None
            if weights is not None:                # None for every batch, or for none
                w = aligned_empty(weights.shape, weights.dtype)
                w[...] = weights
        data = DeviceData(x, y, w)
        return put_chunk(data) if self._put_ahead and not host and not across_processes() else data

    # ----- passes and epochs (run on the worker thread) -----------------------------

    def _iterator(self, key):
        if self._pending is not None:
            pending_key, iterator = self._pending
            self._pending = None
            if pending_key == key or not self._reiterable:
                return iterator
        return iter(self._open(key))

    def _batches(self, key, first_batch: int) -> Iterator:
        """The raw batches of the epoch (or evaluation pass) `key`, from batch `first_batch` on."""
        if self._steps is not None:
            yield from self._drawn(key, first_batch)        # read on: data/_stream_place.py
            return
        self._passes += not self._reiterable                # a one-shot input's pass: StepsPlace.place()
        # stoppable: a closed feed draws no more; not `yield from`: that would close the user's iterator
        for index, batch in enumerate(stoppable(self._iterator(key))):
            if index >= first_batch:
                yield batch

    def _pieces(self, key, steps_per_execution: int, first_batch: int = 0, control=None,
                seen: list | None = None) -> Iterator[Piece]:
        """Chunks of up to `steps_per_execution` batches, on the device; a different size closes a chunk, and
        so does a batch that `control(key, index, 1, seen)` names (a callback needs control after it).
        The epoch starts at batch `first_batch` (a resumed epoch)."""
        quick, check, select = self._layout.quick, self._layout.check, self._select
        group, size, first = [], 0, first_batch
        for index, element in enumerate(self._batches(key, first_batch), first_batch):
            found = quick(element)
            leaves, n = found if found is not None else check(select(element, index), index)
            if not group:
                size = n
            group.append(leaves)
            cut = control is not None and bool(tuple(control(key, index, 1, seen[0])))
            if control is not None:
                seen[0] += 1
            if n != size or len(group) == steps_per_execution or cut:
                yield self._piece(group, first, size, n if n != size else 0)
                first, group = first + len(group), []
        if group:
            yield self._piece(group, first, size, 0)

    def _piece(self, group, first, batch_size, tail) -> Piece:
        chunk = Chunk(first, first + len(group) - 1, 0, len(group) - (tail > 0), tail)
        columns = self._layout.columns(group, chunk.num_steps * batch_size + tail, first, self._allow_nonfinite)
        return Piece(chunk, self._batch(columns, where=f"batches {chunk.first}-{chunk.last}"), batch_size)

    def _run(self, keys, steps_per_execution, first_batch: int, control=None) -> Iterator:
        seen = [0]                         # the batches of this fit so far, for `control`
        with inline_prefetch():            # this thread is the prefetch: a dataset's own adds only hops
            for key in keys:
                yield from self._pieces(key, steps_per_execution, first_batch, control, seen)
                self._starts[key + 1] = self.place()    # fit's keys are epochs: StepsPlace.place_at
                if self._on_epoch_end is not None:      # Keras: at every epoch's end, steps_per_epoch or not
                    self._on_epoch_end()
                yield EPOCH_END
                first_batch = 0

    # ----- the consumer's side --------------------------------------------------------

    def steps_per_execution(self, setting, callback_limit: int | None) -> int:
        """With "auto": the steps that fit in STREAM_CHUNK_BYTES, at most STREAM_MAX_STEPS and the callbacks' limit."""
        if setting == "auto":
            k = min(STREAM_MAX_STEPS, max(1, STREAM_CHUNK_BYTES // max(1, self.batch_bytes)))
            k = min(k, callback_limit) if callback_limit else k
        else:
            k = setting
        return max(1, min(k, self.num_batches) if self.num_batches else k)

    def feed(self, keys, steps_per_execution: int, first_batch: int = 0, control=None,
             depth: int = 2) -> "StreamFeed":
        """Start the worker on the passes `keys` (epoch indices for fit), the first from batch
        `first_batch` on; read them with `epoch()`. `control`: as ArraySource.feed's."""
        if first_batch and not self.resumes_mid_epoch:
            raise ValueError(f"Training cannot resume at batch {first_batch} of an epoch of this input: a one-shot "
                             f"iterator cannot be read again from the epoch's start. Resume from an epoch boundary, "
                             f"or pass a re-iterable input (a bf.data.Dataset, a list, a PyDataset).")
        return StreamFeed(self, list(keys), steps_per_execution, first_batch, depth, control)

    @property
    def resumes_mid_epoch(self) -> bool:
        """Whether an epoch can restart at a batch inside it: the input can be read again (with steps_per_epoch,
        from the place fit's Position keeps: StepsPlace.read_on)."""
        return self._reiterable

    def drawn_seeds(self) -> tuple:
        """The seeds a Dataset's shuffle(seed=None) steps drew (data/_seeds.py); () for other streams."""
        return drawn_seeds(getattr(self._open, "dataset", None))

    def reseed(self, seed: int, data_seeds: tuple | None = None) -> None:
        """A Dataset's passes: read in order generation `seed`, with the shuffle seeds `data_seeds` of the run
        that saved the position (None: keep this dataset's). Other streams: no-op."""
        if hasattr(self._open, "generation") and (put_drawn_seeds(self._open.dataset, data_seeds) or seed != self.seed):
            self.seed = self._open.generation = seed
            self._pending = None              # its first batch was read in the former order

    def next_key(self):
        """The key of the next evaluation pass (validation data is read once per epoch)."""
        key, self.evaluations = self.evaluations, self.evaluations + 1
        return key


class StreamFeed:
    """The consumer's end of a StreamSource: one iterator of Pieces per pass, in order.

    `max_in_flight`: the loop waits for the dispatch before last before making another, so
    at most two chunks sit on the device besides the `depth` ready in the queue.
    """

    max_in_flight = 2

    def __init__(self, source: StreamSource, keys: list, steps_per_execution: int, first_batch: int, depth: int,
                 control=None):
        self._prefetcher = Prefetcher(lambda: source._run(keys, steps_per_execution, first_batch, control), depth)

    def epoch(self, key=None) -> Iterator[Piece]:
        shared = across_processes()         # each process's chunks joined into global ones
        for item in self._prefetcher:
            if item is EPOCH_END:
                return pass_ended() if shared else None
            yield shared_piece(item) if shared else item

    def close(self) -> None:
        self._prefetcher.close()

