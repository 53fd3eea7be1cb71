"""bf.data.Dataset: a tf.data-style input pipeline over NumPy arrays and Python generators.

    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=0).batch(32).prefetch(bf.data.AUTOTUNE)
    model.fit(ds, epochs=10)

Elements are NumPy arrays (or tuples / dicts of them), produced lazily on iteration.
Differences from tf.data, on purpose:

* `shuffle(n)` over rows of `from_tensor_slices` with `n` >= the number of rows is one
  uniform permutation per iteration, drawn as `fit(shuffle=True, seed=seed)` draws it, so a
  dataset and the same arrays give the same batches. A smaller buffer is tf.data's windowed
  shuffle, except inside `fit`'s fused device path, which always draws a full permutation.
* `shuffle(seed=None)` draws the seed once, when the dataset is built.
* `prefetch(AUTOTUNE)` keeps a fixed number of elements ready (8); in `fit` the
  engine's own chunk prefetch replaces a trailing `prefetch`.
* `map(num_parallel_calls=...)` runs `fn` on threads and always keeps the input order.
* `cache()` keeps elements in memory; `cache(filename)` with a file is not supported.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np

from batchfit.errors import check_int, describe

__all__ = ["Dataset", "TensorSpec", "AUTOTUNE", "INFINITE_CARDINALITY", "UNKNOWN_CARDINALITY"]

AUTOTUNE = -1
INFINITE_CARDINALITY = -1
UNKNOWN_CARDINALITY = -2
_AUTOTUNE_DEPTH = 8


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
        return _ops.Slices(tensors)

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
        return _ops.Generator(generator, tuple(args or ()), output_signature)

    # ----- transformations ---------------------------------------------------------

    def shuffle(self, buffer_size: int, seed: int | None = None, reshuffle_each_iteration: bool = True) -> "Dataset":
        """Shuffle with a buffer of `buffer_size` elements; a new order each iteration unless told not to."""
        return _ops.Shuffle(self, buffer_size, seed, bool(reshuffle_each_iteration))

    def batch(self, batch_size: int, drop_remainder: bool = False, num_parallel_calls=None,
              deterministic=None) -> "Dataset":
        """Stack `batch_size` consecutive elements; the last batch is smaller unless `drop_remainder`."""
        return _ops.Batch(self, check_int("batch_size", batch_size, 1), bool(drop_remainder))

    def map(self, map_func: Callable, num_parallel_calls=None, deterministic=None) -> "Dataset":
        """Apply `map_func` to every element (`num_parallel_calls` threads; the order is kept)."""
        workers = 1 if num_parallel_calls is None else int(num_parallel_calls)
        if workers == AUTOTUNE:
            workers = min(32, (os.cpu_count() or 1) + 4)
        return _ops.Map(self, map_func, check_int("num_parallel_calls", workers, 1))

    def filter(self, predicate: Callable) -> "Dataset":
        """Keep the elements for which `predicate(element)` is true."""
        return _ops.Filter(self, predicate)

    def repeat(self, count: int | None = None) -> "Dataset":
        """Repeat the dataset `count` times (None or -1: forever)."""
        count = None if count is None or count == -1 else check_int("count", count, 0)
        return _ops.Repeat(self, count)

    def take(self, count: int) -> "Dataset":
        """The first `count` elements (-1: all)."""
        return _ops.Take(self, count if count == -1 else check_int("count", count, 0))

    def skip(self, count: int) -> "Dataset":
        """All but the first `count` elements (-1: skip all)."""
        return _ops.Skip(self, count if count == -1 else check_int("count", count, 0))

    def prefetch(self, buffer_size: int) -> "Dataset":
        """Produce up to `buffer_size` elements ahead on a background thread (AUTOTUNE: 8)."""
        depth = _AUTOTUNE_DEPTH if buffer_size == AUTOTUNE else check_int("buffer_size", buffer_size, 0)
        return _ops.Prefetch(self, depth)

    def cache(self, filename: str = "") -> "Dataset":
        """Keep the elements of the first complete iteration in memory and replay them afterwards."""
        if filename:
            raise ValueError(f"cache(filename={filename!r}): caching to a file is not supported; "
                             f"use cache() to cache in memory.")
        return _ops.Cache(self)

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
        return _ops.row_elements(self._rows, self._indices(key))

    def _indices(self, key: tuple):
        raise NotImplementedError

    def _cardinality(self) -> int:
        return self._input._cardinality()


from batchfit.data import _ops  # noqa: E402  (the pipeline steps subclass Dataset)
