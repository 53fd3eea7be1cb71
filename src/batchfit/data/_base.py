"""The Dataset base class, its constants and the helpers the pipeline steps share.

The public methods build steps looked up by name in STEPS, which the step classes
(_ops.py) fill as they are defined: the steps import this module, never the reverse.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np

from batchfit.errors import check_int, describe
from batchfit.registry import Registry

__all__ = ["Dataset", "TensorSpec", "FusedPlan", "STEPS", "AUTOTUNE", "INFINITE_CARDINALITY",
           "UNKNOWN_CARDINALITY", "row_elements", "window_order"]

AUTOTUNE = -1
INFINITE_CARDINALITY = -1
UNKNOWN_CARDINALITY = -2
_AUTOTUNE_DEPTH = 8
STEPS = Registry("dataset step")      # name -> the Dataset subclass that runs that transformation


class TensorSpec(NamedTuple):
    """The shape (None: any size) and dtype of one element component, for `from_generator`."""

    shape: tuple
    dtype: Any = np.float32
    name: str | None = None


class FusedPlan(NamedTuple):
    """A dataset that fit can run on the device: `batch(batch_size)` of (shuffled) rows of `tensors`."""

    tensors: Any
    batch_size: int
    drop_remainder: bool
    seed: int | None          # None: not shuffled
    reshuffle: bool


def _call(fn, element):
    """tf.data's calling convention: a tuple element is spread over the arguments."""
    return fn(*element) if isinstance(element, tuple) else fn(element)


def _as_tensor(value):
    if isinstance(value, np.ndarray):        # memmaps stay memmaps: read row by row, never whole
        return value
    if hasattr(value, "to_numpy"):           # pandas
        return value.to_numpy()
    return np.asarray(value)


def _stack(elements: list):
    try:
        return jax.tree.map(lambda *parts: np.stack(parts), *elements)
    except ValueError as e:
        raise ValueError(f"batch() cannot stack elements {describe(elements[0])} ... {describe(elements[-1])}: {e}. "
                         f"Every element of a batch must have the same structure and shape.") from e


def _buffer_shuffle(items: Iterator, size: int, rng) -> Iterator:
    """tf.data's shuffle: keep `size` items, emit a random one and put the next in its place."""
    buffer = list(itertools.islice(items, size))
    draws = iter(())
    for item in items:
        j = next(draws, None)
        if j is None:
            draws = iter(rng.integers(0, size, 4096).tolist())
            j = next(draws)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def window_order(n: int, size: int, rng) -> np.ndarray:
    """The order in which items 0..n-1 leave tf.data's shuffle buffer of `size` slots, without a Python loop.

    At step t a uniform slot j_t is emitted and refilled with item size + t; so step t emits
    the item that entered slot j_t at its previous pick (or item j_t itself, the first time).
    At the end the items left in the buffer come out in random order.
    """
    steps = n - size
    slots = rng.integers(0, size, steps)
    times = np.lexsort((np.arange(steps), slots))          # by slot, then by time
    ordered = slots[times]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    emitted = np.empty(steps, np.int64)
    emitted[times] = np.where(first, ordered, size + np.r_[0, times[:-1]])
    left = np.arange(size)
    last = np.r_[ordered[1:] != ordered[:-1], True]
    left[ordered[last]] = size + times[last]
    return np.concatenate([emitted, rng.permutation(left)])


def row_elements(rows, indices) -> Iterator:
    """The rows `indices` of a from_tensor_slices dataset `rows`, one element each."""
    leaves, treedef = rows._leaves, rows._treedef
    for i in indices:
        yield jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves])


def _check_int(method: str, name: str, value, minimum: int, fix: str, allowed: tuple = ()) -> int:
    """`value` as an int >= `minimum` (or exactly one of `allowed`), else a ValueError naming `method` and the fix."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in allowed:   # not -1.0
        return int(value)
    try:
        return check_int(name, value, minimum)
    except ValueError as e:
        raise ValueError(f"{method}(): {e} {fix}") from None


class Dataset:
    """A lazy, re-iterable pipeline of elements; build it with `from_tensor_slices` or `from_generator`.

    >>> ds = Dataset.from_tensor_slices(np.arange(5.0)).batch(2)
    >>> [b.tolist() for b in ds], len(ds)
    ([[0.0, 1.0], [2.0, 3.0], [4.0]], 3)
    """

    _rows = None            # the _Slices this dataset yields rows of (index-level ops), else None
    _batched = None         # True: elements are batches; False: single rows; None: unknown

    # ----- sources ---------------------------------------------------------------

    @staticmethod
    def from_tensor_slices(tensors) -> "Dataset":
        """One element per row of `tensors` (an array, or a tuple / dict of arrays with equal length)."""
        return STEPS.get("slices")(tensors)

    @staticmethod
    def from_generator(generator: Callable, output_types=None, output_shapes=None, args=None,
                       output_signature=None) -> "Dataset":
        """Elements from `generator(*args)`, called anew for each iteration (so it is re-iterable).

        `output_signature` (TensorSpecs, optional) is checked against every element.
        """
        if not callable(generator):
            raise TypeError(f"from_generator() needs a function that returns an iterator; got "
                            f"{describe(generator)}. Pass `lambda: gen` or the generator function itself, or give the generator "
                            f"object to fit() directly.")
        return STEPS.get("generator")(generator, tuple(args or ()), output_signature)

    # ----- transformations ---------------------------------------------------------

    def shuffle(self, buffer_size: int, seed: int | None = None, reshuffle_each_iteration: bool = True) -> "Dataset":
        """Shuffle with a buffer of `buffer_size` elements; a new order each iteration unless told not to."""
        fix = ("There is no automatic shuffle buffer (AUTOTUNE is -1): pass a positive int, e.g. the "
               "dataset's size (len(dataset)) for a full shuffle.")
        buffer_size = _check_int("shuffle", "buffer_size", buffer_size, 1, fix)
        return STEPS.get("shuffle")(self, buffer_size, seed, bool(reshuffle_each_iteration))

    def batch(self, batch_size: int, drop_remainder: bool = False, num_parallel_calls=None,
              deterministic=None) -> "Dataset":
        """Stack `batch_size` consecutive elements; the last batch is smaller unless `drop_remainder`."""
        batch_size = _check_int("batch", "batch_size", batch_size, 1,
                                "Pass the number of elements per batch, e.g. batch(32).")
        return STEPS.get("batch")(self, batch_size, bool(drop_remainder))

    def map(self, map_func: Callable, num_parallel_calls=None, deterministic=None) -> "Dataset":
        """Apply `map_func` to every element (`num_parallel_calls` threads; the order is kept)."""
        workers = 1 if num_parallel_calls is None else _check_int(
            "map", "num_parallel_calls", num_parallel_calls, 1,
            "Pass a number of threads, AUTOTUNE, or None for one call at a time.", allowed=(AUTOTUNE,))
        if workers == AUTOTUNE:
            workers = min(32, (os.cpu_count() or 1) + 4)
        return STEPS.get("map")(self, map_func, workers)

    def filter(self, predicate: Callable) -> "Dataset":
        """Keep the elements for which `predicate(element)` is true."""
        return STEPS.get("filter")(self, predicate)

    def repeat(self, count: int | None = None) -> "Dataset":
        """Repeat the dataset `count` times (None or -1: forever)."""
        if count is not None:
            count = _check_int("repeat", "count", count, 0,
                               "Pass a number of repetitions, or None or -1 to repeat forever.", allowed=(-1,))
        return STEPS.get("repeat")(self, None if count == -1 else count)

    def take(self, count: int) -> "Dataset":
        """The first `count` elements (-1: all)."""
        count = _check_int("take", "count", count, 0,
                           "Pass a number of elements, or -1 for all of them.", allowed=(-1,))
        return STEPS.get("take")(self, count)

    def skip(self, count: int) -> "Dataset":
        """All but the first `count` elements (-1: skip all)."""
        count = _check_int("skip", "count", count, 0,
                           "Pass a number of elements, or -1 to skip all of them.", allowed=(-1,))
        return STEPS.get("skip")(self, count)

    def prefetch(self, buffer_size: int) -> "Dataset":
        """Produce up to `buffer_size` elements ahead on a background thread (AUTOTUNE: 8)."""
        depth = _check_int("prefetch", "buffer_size", buffer_size, 1,
                           "Pass how many elements to keep ready, e.g. prefetch(2), or AUTOTUNE.", allowed=(AUTOTUNE,))
        return STEPS.get("prefetch")(self, _AUTOTUNE_DEPTH if depth == AUTOTUNE else depth)

    def cache(self, filename: str = "") -> "Dataset":
        """Keep the elements of the first complete iteration in memory and replay them afterwards."""
        if filename:
            raise ValueError(f"cache(filename={filename!r}): caching to a file is not supported; "
                             f"use cache() to cache in memory.")
        return STEPS.get("cache")(self)

    # ----- reading -----------------------------------------------------------------

    def __iter__(self) -> Iterator:
        self._iterations = getattr(self, "_iterations", -1) + 1
        return self._elements((self._iterations,))

    def as_numpy_iterator(self) -> Iterator:
        return iter(self)

    def cardinality(self) -> int:
        """The number of elements, or INFINITE_CARDINALITY (-1) / UNKNOWN_CARDINALITY (-2)."""
        return self._cardinality()

    def __len__(self) -> int:
        n = self._cardinality()
        if n == INFINITE_CARDINALITY:
            raise TypeError("The dataset is infinite.")
        if n == UNKNOWN_CARDINALITY:
            raise TypeError("The dataset length is unknown.")
        return n

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        n = self._cardinality()
        size = {INFINITE_CARDINALITY: "infinite", UNKNOWN_CARDINALITY: "unknown"}.get(n, n)
        return f"<{type(self).__name__.lstrip('_')}Dataset cardinality={size}>"

    # ----- internals ------------------------------------------------------------------

    def _elements(self, key: tuple) -> Iterator:
        """The elements of one iteration; `key` (a tuple of ints) seeds the shuffles in it."""
        return row_elements(self._rows, self._indices(key))

    def _indices(self, key: tuple):
        raise NotImplementedError

    def _cardinality(self) -> int:
        return self._input._cardinality()
