"""The steps of a bf.data pipeline: one small Dataset subclass per transformation.

Rows of `from_tensor_slices` stay index arrays through shuffle / take / skip / repeat /
cache, so that `batch` gathers whole batches at once instead of stacking rows one by one.
Each step registers itself in STEPS under the name the Dataset method looks up.

Steps that run user code (a generator, a map function) check between elements whether the
Prefetcher they run on was closed, so a closed prefetch stops within one element even when
an outer step (a batch, fit's chunk of K batches) would otherwise keep drawing.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading

import jax
import numpy as np

from batchfit.data._base import (INFINITE_CARDINALITY, STEPS, UNKNOWN_CARDINALITY, Dataset, FusedPlan, TensorSpec,
                                 _as_tensor, _call, _stack, row_elements, truth)
from batchfit.data._captured import captured_datasets
from batchfit.data._drawn import fresh_seed
from batchfit.data._shuffle_order import buffer_shuffle, window_order
from batchfit.data._map import MappedRows, batched_map, fold
from batchfit.data._map_seeds import keyed_generator, seeded_map, setup_map_seeds
from batchfit.data._workers import parallel_map
from batchfit.data.arrays import epoch_order, is_memmap, read_rows, release_pages
from batchfit.data.prefetch import Prefetcher, stoppable
from batchfit.errors import describe

__all__ = ["fused_plan", "without_prefetch", "row_elements", "window_order", "inline_prefetch"]

_RELEASE_BYTES = 64 << 20         # memmap bytes mapped between two releases of its pages
_INLINE = threading.local()       # set on fit's stream worker: its own prefetch replaces a dataset's


@contextlib.contextmanager
def inline_prefetch():
    """Within this block (on this thread), prefetch() steps pass elements through without a thread."""
    before = getattr(_INLINE, "on", False)
    _INLINE.on = True
    try:
        yield
    finally:
        _INLINE.on = before


def fused_plan(dataset: Dataset) -> FusedPlan | None:
    """This pipeline as arrays + batch size + shuffle, when it is no more than that."""
    node, frozen = dataset, False
    while isinstance(node, (Prefetch, Cache)):
        frozen, node = frozen or isinstance(node, Cache), node._input
    if not isinstance(node, Batch):
        return None
    batch, node, maps = node, node._input, []
    while isinstance(node, (Cache, Map)):
        maps, node = maps + [node] * isinstance(node, Map), node._input
    shuffle = node if isinstance(node, Shuffle) else None
    node = node._input if shuffle else node
    while isinstance(node, (Cache, Map)):
        maps, node = maps + [node] * isinstance(node, Map), node._input
    if not isinstance(node, Slices) or is_memmap(node._tensors) or (shuffle and frozen):
        return None       # cached shuffled batches: the stream replays the first iteration's, as tf.data
    tensors = node._tensors
    for step in reversed(maps):          # a traced map runs on all rows at once (_map.fold)
        tensors = step.fold(tensors)
        if tensors is None:
            return None
    # The rows come in the order the streamed path reads them (the same windowed shuffle, the same
    # caches), so adding a map or steps_per_epoch never changes the order.
    return FusedPlan(tensors, batch.batch_size, batch.drop_remainder, batch._input._indices if shuffle else None)


def without_prefetch(dataset: Dataset) -> Dataset:
    node = dataset
    while isinstance(node, Prefetch):
        node = node._input
    return node


@STEPS.register("slices")
class Slices(Dataset):
    _batched = False

    def __init__(self, tensors):
        is_node = lambda v: isinstance(v, (tuple, dict))
        self._tensors = jax.tree.map(_as_tensor, tensors, is_leaf=lambda v: not is_node(v))
        self._leaves, self._treedef = jax.tree.flatten(self._tensors)
        if not self._leaves:
            raise ValueError("from_tensor_slices() needs at least one array; got an empty structure.")
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in self._leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"from_tensor_slices() needs arrays with a first axis of one common length; got "
                             f"{describe(self._tensors)}. Slice them to the same number of rows.")
        self._n = sizes.pop()
        self._rows = self

    def _indices(self, key):
        return range(self._n)

    def _cardinality(self):
        return self._n


@STEPS.register("generator")
class Generator(Dataset):
    def __init__(self, generator, args, signature):
        self._generator, self._args, self._signature = generator, args, signature
        self._captured = captured_datasets((generator, args))      # inputs for the seed walk (_map_seeds.py)
        if signature is not None:
            self._specs, self._spec_tree = jax.tree.flatten(signature, is_leaf=lambda v: isinstance(v, TensorSpec))

    def _elements(self, key):
        iterator = stoppable(keyed_generator(self, key) if self._captured else iter(self._generator(*self._args)))
        if self._signature is None:
            return iterator
        return (self._check(element, i) for i, element in enumerate(iterator))

    def _check(self, element, index):
        specs, treedef = self._specs, self._spec_tree
        leaves, got = jax.tree.flatten(element)
        if got != treedef:
            raise ValueError(f"Element {index} of the generator has structure {got}; "
                             f"output_signature says {treedef}.")
        out = []
        for leaf, spec in zip(leaves, specs):
            array = np.asarray(leaf)
            shape = tuple(array.shape if spec.shape is None else spec.shape)
            if array.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, array.shape)):
                raise ValueError(f"Element {index} of the generator has shape {array.shape}; output_signature "
                                 f"expects {shape} (None: any size).")
            out.append(array.astype(np.dtype(spec.dtype), copy=False))
        return jax.tree.unflatten(treedef, out)

    def _cardinality(self):
        return UNKNOWN_CARDINALITY


class Unary(Dataset):
    def __init__(self, input: Dataset):
        self._input = input
        self._batched = input._batched


@STEPS.register("shuffle")
class Shuffle(Unary):
    def __init__(self, input, buffer_size, seed, reshuffle):
        super().__init__(input)
        self.buffer_size = buffer_size
        self.seed = fresh_seed() if seed is None else int(seed)
        self.drawn = seed is None        # a resumed fit puts back the seed drawn here (data/_seeds.py)
        self.reshuffle = reshuffle
        self._rows = input._rows

    def _rng_key(self, key):
        return key if self.reshuffle else (0,)

    def _indices(self, key):
        base = self._input._indices(key)
        n, key = len(base), self._rng_key(key)
        if self.buffer_size >= n and len(key) == 1:
            order = epoch_order(n, self.seed, key[0])       # exactly fit(shuffle=True, seed=seed)'s order
        else:
            rng = np.random.default_rng((self.seed, *key))
            order = rng.permutation(n) if self.buffer_size >= n else window_order(n, self.buffer_size, rng)
        if isinstance(base, range):       # arithmetic on the indices, not a gather of them
            return order if base.start == 0 and base.step == 1 else base.start + base.step * order.astype(np.int64)
        return np.asarray(base)[order]

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        rng = np.random.default_rng((self.seed, *self._rng_key(key)))
        return buffer_shuffle(self._input._elements(key), self.buffer_size, rng)


@STEPS.register("batch")
class Batch(Unary):
    def __init__(self, input, batch_size, drop_remainder):
        super().__init__(input)
        self.batch_size, self.drop_remainder = batch_size, drop_remainder
        self._batched = True

    def _elements(self, key):
        if self._input._rows is not None:
            return self._row_batches(self._input._rows, self._input._indices(key))
        return self._stacked(self._input._elements(key))

    def _stacked(self, elements):
        while True:
            group = list(itertools.islice(elements, self.batch_size))
            if not group or (self.drop_remainder and len(group) < self.batch_size):
                return
            yield _stack(group)

    def _row_batches(self, rows, indices):
        """Batches gathered from the row arrays at once (no per-row Python work)."""
        b, n = self.batch_size, len(indices)
        end = n - n % b if self.drop_remainder else n
        mapped = [leaf for leaf in rows._leaves if isinstance(leaf, np.memmap)]
        read = 0
        for start in range(0, end, b):
            block = indices[start:start + b]
            if isinstance(block, range) and block.step != 1:      # shard()'s rows: every k-th
                block = np.arange(block.start, block.stop, block.step)
            if isinstance(block, range):
                parts = [leaf[block.start:block.stop] for leaf in rows._leaves]
                read += sum(p.nbytes for p in parts)
            else:      # scattered rows of a memmap are read from its file, not through the mapping
                parts = [read_rows(leaf, block) if isinstance(leaf, np.memmap) else leaf[block]
                         for leaf in rows._leaves]
            if mapped and read >= _RELEASE_BYTES:   # views read later fault their pages in again: fine
                for leaf in mapped:
                    release_pages(leaf)
                read = 0
            yield jax.tree.unflatten(rows._treedef, parts)
        for leaf in mapped:
            release_pages(leaf)

    def _cardinality(self):
        n = self._input._cardinality()
        if n < 0:
            return n
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)


@STEPS.register("map")
class Map(Unary):
    """`fn` on every element. On rows of arrays, a traceable pure `fn` is rows again (_map.MappedRows):
    `batch` then maps whole blocks of rows at once, and fit's fused path can map all rows (`fold`). An `fn`
    that builds a shuffle(seed=None) or the like runs per element with derived seeds (_map_seeds.py)."""

    def __init__(self, input, fn, workers):
        super().__init__(input)
        self._fn, self._workers = fn, workers
        self._seeding = setup_map_seeds(self, fn)
        self._plan = batched_map(fn, input._rows) if input._rows is not None and not self._seeding else None
        self._rows = MappedRows(input._rows, self._plan, fn) if self._plan is not None else None

    def _indices(self, key):
        return self._input._indices(key)

    def fold(self, tensors):
        """`tensors` mapped row by row at once (fit's fused path), or None when this map cannot be."""
        return None if self._plan is None else fold(self._plan, tensors)

    def _elements(self, key):
        elements = stoppable(self._input._elements(key))
        if self._seeding:        # each call keyed by its element's index, on whichever thread runs it
            return parallel_map(seeded_map(self, key), enumerate(elements), self._workers)
        return parallel_map(self._fn, elements, self._workers)


@STEPS.register("filter")
class Filter(Unary):
    def __init__(self, input, predicate):
        super().__init__(input)
        self._predicate = predicate

    def _elements(self, key):
        predicate = self._predicate
        return (e for i, e in enumerate(self._input._elements(key)) if truth(_call(predicate, e), "filter", i))

    def _cardinality(self):
        return UNKNOWN_CARDINALITY


@STEPS.register("repeat")
class Repeat(Unary):
    def __init__(self, input, count):
        super().__init__(input)
        self._count = count
        self._rows = input._rows if count is not None else None

    def _indices(self, key):
        parts = [np.asarray(self._input._indices(key + (r,))) for r in range(self._count)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        return self._repeated(key)

    def _repeated(self, key):
        for r in itertools.count() if self._count is None else range(self._count):
            empty = True
            for element in self._input._elements(key + (r,)):
                empty = False
                yield element
            if empty:            # repeating nothing forever would never end
                return

    def _cardinality(self):
        n = self._input._cardinality()
        if n == 0 or n == UNKNOWN_CARDINALITY:
            return n
        if self._count is None or n == INFINITE_CARDINALITY:
            return INFINITE_CARDINALITY if self._count != 0 else 0
        return n * self._count


class _Counted(Unary):
    """Take / Skip: `count` elements (-1: all), over the same rows as the input."""

    def __init__(self, input, count):
        super().__init__(input)
        self._count = count
        self._rows = input._rows


@STEPS.register("take")
class Take(_Counted):
    def _indices(self, key):
        indices = self._input._indices(key)
        return indices if self._count == -1 else indices[:self._count]

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        elements = self._input._elements(key)
        return elements if self._count == -1 else itertools.islice(elements, self._count)

    def _cardinality(self):
        n = self._input._cardinality()
        if self._count == -1 or n == UNKNOWN_CARDINALITY:
            return n
        return self._count if n == INFINITE_CARDINALITY else min(n, self._count)


@STEPS.register("skip")
class Skip(_Counted):
    def _indices(self, key):
        indices = self._input._indices(key)
        return indices[len(indices):] if self._count == -1 else indices[self._count:]

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        if self._count == -1:
            return iter(())
        return itertools.islice(self._input._elements(key), self._count, None)

    def _cardinality(self):
        n = self._input._cardinality()
        if n < 0:
            return n
        return 0 if self._count == -1 else max(0, n - self._count)


@STEPS.register("prefetch")
class Prefetch(Unary):
    def __init__(self, input, depth):
        super().__init__(input)
        self._depth = depth

    def _elements(self, key):
        if getattr(_INLINE, "on", False):
            return self._input._elements(key)
        return self._prefetched(key)

    def _prefetched(self, key):
        prefetcher = Prefetcher(lambda: self._input._elements(key), self._depth)
        try:
            yield from prefetcher
        finally:
            prefetcher.close()


@STEPS.register("cache")
class Cache(Unary):
    def __init__(self, input):
        super().__init__(input)
        self._rows = input._rows
        self._cached = None

    def _indices(self, key):
        if self._cached is None:
            self._cached = self._input._indices(key)
        return self._cached

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        if self._cached is not None:
            return iter(self._cached)
        return self._recording(key)

    def _recording(self, key):
        elements = []
        for element in self._input._elements(key):
            elements.append(element)
            yield element
        self._cached = elements           # only a complete iteration is kept, as in tf.data
