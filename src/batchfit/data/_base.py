"""The Dataset base class, its constants and the helpers the pipeline steps share.

The public methods build steps looked up by name in STEPS, which the step classes
(_ops.py) fill as they are defined: the steps import this module, never the reverse.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np

from batchfit.errors import check_int, describe
from batchfit.registry import Registry

__all__ = ["Dataset", "TensorSpec", "FusedPlan", "STEPS", "AUTOTUNE", "INFINITE_CARDINALITY",
           "UNKNOWN_CARDINALITY", "row_elements", "truth"]

AUTOTUNE = -1
INFINITE_CARDINALITY = -1
UNKNOWN_CARDINALITY = -2
_AUTOTUNE_DEPTH = 8
_ROW_BLOCK = 256                       # rows of a tuple of arrays read at once (row_elements)
STEPS = Registry("dataset step")      # name -> the Dataset subclass that runs that transformation


class TensorSpec(NamedTuple):
    """The shape (None: any size; shape None: any rank) and dtype of one element component, for `from_generator`."""

    shape: tuple
    dtype: Any = np.float32
    name: str | None = None


class FusedPlan(NamedTuple):
    """A dataset that fit can run on the device: `batch(batch_size)` of (shuffled) rows of `tensors`."""

    tensors: Any
    batch_size: int
    drop_remainder: bool
    order: Callable | None    # order(key) -> the row indices of the iteration `key`; None: not shuffled


def _call(fn, element):
    """tf.data's calling convention: a tuple element is spread over the arguments."""
    return fn(*element) if isinstance(element, tuple) else fn(element)


def _as_tensor(value):
    """An array for one component; Python numbers follow tf.data: floats -> float32, ints -> int32."""
    if isinstance(value, np.ndarray):        # memmaps stay memmaps: read row by row, never whole
        return value
    if hasattr(value, "to_numpy"):           # pandas
        return value.to_numpy()
    array = np.asarray(value)
    if isinstance(value, (list, float, int)) and not isinstance(value, bool):   # Python data, not NumPy's
        if array.dtype == np.float64:
            return array.astype(np.float32)
        if array.dtype == np.int64 and (not array.size or np.iinfo(np.int32).min <= array.min() <= array.max()
                                        <= np.iinfo(np.int32).max):
            return array.astype(np.int32)     # tf.data too keeps int64 for ints that int32 cannot hold
        if array.dtype.kind == "U":
            return np.char.encode(array, "utf-8")      # tf.string: bytes
    return array


def _stack(elements: list):
    try:
        return jax.tree.map(lambda *parts: np.stack(parts), *elements)
    except ValueError as e:
        raise ValueError(f"batch() cannot stack elements {describe(elements[0])} ... {describe(elements[-1])}: {e}. "
                         f"Every element of a batch must have the same structure and shape.") from e


def truth(value, method: str, index: int) -> bool:
    """A predicate's result for element `index` as a bool; it must be a scalar, as in tf.data."""
    array = np.asarray(value)
    if array.ndim or array.dtype.kind not in "biuf":
        raise ValueError(f"{method}(): the predicate returned {describe(value)} for element {index}; it must "
                         f"return one bool. Reduce it, e.g. np.all(...) or np.any(...).")
    return bool(array)


def row_elements(rows, indices) -> Iterator:
    """The rows `indices` of a from_tensor_slices dataset `rows`, one element each. Rows of a tuple of
    in-memory arrays are read a block at a time (one gather per array, the block's rows as views of it)."""
    leaves, treedef = rows._leaves, rows._treedef
    if treedef != jax.tree.structure((0,) * len(leaves)) or any(isinstance(a, np.memmap) for a in leaves):
        for i in indices:
            yield jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves])
        return
    for start in range(0, len(indices), _ROW_BLOCK):
        block = indices[start:start + _ROW_BLOCK]
        block = slice(block.start, block.stop, block.step) if isinstance(block, range) else block
        yield from zip(*[list(leaf[block]) for leaf in leaves])


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

        `output_signature` (TensorSpecs), or tf.data's older `output_types` (dtypes) with optional
        `output_shapes`: every element is checked against it and cast to its dtypes, as tf.data does.
        """
        if not callable(generator):
            raise TypeError(f"from_generator() needs a function that returns an iterator; got "
                            f"{describe(generator)}. Pass `lambda: gen` or the generator function itself, or give the generator "
                            f"object to fit() directly.")
        if output_signature is None and output_types is not None:
            is_leaf = lambda v: not isinstance(v, (tuple, dict))
            shapes = output_shapes if output_shapes is not None else jax.tree.map(lambda t: None, output_types,
                                                                                  is_leaf=is_leaf)
            output_signature = jax.tree.map(lambda t, s: TensorSpec(s, t), output_types, shapes, is_leaf=is_leaf)
        return STEPS.get("generator")(generator, tuple(args or ()), output_signature)

    # ----- transformations ---------------------------------------------------------

    def shuffle(self, buffer_size: int, seed: int | None = None, reshuffle_each_iteration: bool = True) -> "Dataset":
        """Shuffle with a buffer of `buffer_size` elements; a new order each iteration unless told not to."""
        fix = ("There is no automatic shuffle buffer (AUTOTUNE is -1; tf.data too says \"buffer_size must be "
               "greater than zero or UNKNOWN_CARDINALITY\"): pass a positive int, e.g. the dataset's size "
               "(len(dataset)), or UNKNOWN_CARDINALITY (-2) to shuffle the whole dataset.")
        buffer_size = _check_int("shuffle", "buffer_size", buffer_size, 1, fix, allowed=(UNKNOWN_CARDINALITY,))
        if buffer_size == UNKNOWN_CARDINALITY:
            n = self._cardinality()
            if n == INFINITE_CARDINALITY:
                raise ValueError("shuffle(UNKNOWN_CARDINALITY) of an infinite dataset would never emit an "
                                 "element; pass a buffer size, or shuffle before repeat().")
            buffer_size = n if n >= 1 else 2**62     # unknown size: buffer every element
        return STEPS.get("shuffle")(self, buffer_size, seed, bool(reshuffle_each_iteration))

    def batch(self, batch_size: int, drop_remainder: bool = False, num_parallel_calls=None,
              deterministic=None) -> "Dataset":
        """Stack `batch_size` consecutive elements; the last batch is smaller unless `drop_remainder`."""
        batch_size = _check_int("batch", "batch_size", batch_size, 1,
                                "Pass the number of elements per batch, e.g. batch(32).")
        return STEPS.get("batch")(self, batch_size, bool(drop_remainder))

    def map(self, map_func: Callable, num_parallel_calls=None, deterministic=None) -> "Dataset":
        """Apply `map_func` to every element (`num_parallel_calls` threads, AUTOTUNE: threads or one at a time,
        whichever maps faster; the order is kept)."""
        workers = 1 if num_parallel_calls is None else _check_int(
            "map", "num_parallel_calls", num_parallel_calls, 1,
            "Pass a number of threads, AUTOTUNE, or None for one call at a time.", allowed=(AUTOTUNE,))
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

    # ----- tf.data's other methods: arguments are checked by the step they build ------

    @staticmethod
    def range(*args, dtype=np.int64, name=None) -> "Dataset":
        """range(stop), range(start, stop[, step]), as Python's, int64 scalars by default."""
        return STEPS.get("range")(args, dtype)

    @staticmethod
    def from_tensors(tensors, name=None) -> "Dataset":
        """One element: `tensors` whole (Python floats -> float32, ints -> int32, as tf.data)."""
        return STEPS.get("from_tensors")(tensors)

    @staticmethod
    def zip(*datasets, name=None) -> "Dataset":
        """Elements of several datasets side by side: zip((a, b)) or zip(a, b) -> (a_i, b_i); ends with the shortest."""
        return STEPS.get("zip")(datasets[0] if len(datasets) == 1 else datasets)

    @staticmethod
    def sample_from_datasets(datasets, weights=None, seed=None, stop_on_empty_dataset=False,
                             rerandomize_each_iteration=None) -> "Dataset":
        """Elements drawn at random from `datasets`, dataset i with probability weights[i] (uniform by default)."""
        return STEPS.get("sample_from_datasets")(datasets, weights, seed, stop_on_empty_dataset,
                                                 bool(rerandomize_each_iteration))

    @staticmethod
    def choose_from_datasets(datasets, choice_dataset, stop_on_empty_dataset=True) -> "Dataset":
        """The next element of datasets[c] for each integer c of `choice_dataset`."""
        return STEPS.get("choose_from_datasets")(datasets, choice_dataset, stop_on_empty_dataset)

    @staticmethod
    def list_files(file_pattern, shuffle=None, seed=None, name=None) -> "Dataset":
        """The file names (bytes) matching a glob pattern or list of them; shuffled unless shuffle=False."""
        return STEPS.get("list_files")(file_pattern, shuffle, seed)

    def concatenate(self, dataset: "Dataset", name=None) -> "Dataset":
        """This dataset's elements, then `dataset`'s (same structure and dtypes)."""
        return STEPS.get("concatenate")(self, dataset)

    def enumerate(self, start: int = 0, name=None) -> "Dataset":
        """(index, element) pairs, the index an int64 counting from `start`."""
        return STEPS.get("enumerate")(self, start)

    def shard(self, num_shards: int, index: int, name=None) -> "Dataset":
        """Every `num_shards`-th element, starting at `index` (one worker's share)."""
        return STEPS.get("shard")(self, num_shards, index)

    def take_while(self, predicate: Callable, name=None) -> "Dataset":
        """The elements up to (not including) the first for which `predicate` is false."""
        return STEPS.get("take_while")(self, predicate)

    def unique(self, name=None) -> "Dataset":
        """Each distinct scalar element (integers or strings) once, at its first occurrence."""
        return STEPS.get("unique")(self)

    def unbatch(self, name=None) -> "Dataset":
        """The rows of every batch, one element each."""
        return STEPS.get("unbatch")(self)

    def rebatch(self, batch_size, drop_remainder: bool = False, name=None) -> "Dataset":
        """The same rows in batches of `batch_size` (or cycling through a list of sizes)."""
        return STEPS.get("rebatch")(self, batch_size, drop_remainder)

    def padded_batch(self, batch_size: int, padded_shapes=None, padding_values=None, drop_remainder: bool = False,
                     name=None) -> "Dataset":
        """Batches of elements padded to `padded_shapes` (None or -1 dims: the batch's longest)."""
        return STEPS.get("padded_batch")(self, batch_size, padded_shapes, padding_values, drop_remainder)

    def window(self, size: int, shift=None, stride: int = 1, drop_remainder: bool = False, name=None) -> "Dataset":
        """Windows of `size` elements every `shift` (default size): each a Dataset per component."""
        return STEPS.get("window")(self, size, shift, stride, drop_remainder)

    def flat_map(self, map_func: Callable, name=None) -> "Dataset":
        """The elements of the dataset `map_func(element)` returns, for each element in turn."""
        return STEPS.get("flat_map")(self, map_func)

    def interleave(self, map_func: Callable, cycle_length=None, block_length=None, num_parallel_calls=None,
                   deterministic=None, name=None) -> "Dataset":
        """tf.data's interleave: `block_length` elements in turn from `cycle_length` open `map_func` datasets."""
        return STEPS.get("interleave")(self, map_func, cycle_length, block_length, num_parallel_calls)

    def group_by_window(self, key_func: Callable, reduce_func: Callable, window_size=None, window_size_func=None,
                        name=None) -> "Dataset":
        """Groups of `window_size` elements with one int key, each turned into a dataset by `reduce_func`."""
        return STEPS.get("group_by_window")(self, key_func, reduce_func, window_size, window_size_func)

    def bucket_by_sequence_length(self, element_length_func, bucket_boundaries, bucket_batch_sizes, padded_shapes=None,
                                  padding_values=None, pad_to_bucket_boundary=False, no_padding=False,
                                  drop_remainder=False, name=None) -> "Dataset":
        """Padded batches of elements of similar length: bucket i holds lengths in [boundaries[i-1], boundaries[i])."""
        return STEPS.get("bucket_by_sequence_length")(
            self, element_length_func, bucket_boundaries, bucket_batch_sizes, padded_shapes, padding_values,
            pad_to_bucket_boundary, no_padding, drop_remainder)

    def apply(self, transformation_func: Callable) -> "Dataset":
        """`transformation_func(self)`, which must return a Dataset (for reusable pipeline pieces)."""
        return STEPS.get("apply")(self, transformation_func)

    def reduce(self, initial_state, reduce_func: Callable):
        """`reduce_func(state, element)` folded over one iteration, from `initial_state`."""
        return STEPS.get("reduce")(self, initial_state, reduce_func)

    @property
    def element_spec(self):
        """The TensorSpec of each component (None for a batch axis that may be shorter)."""
        return STEPS.get("element_spec")(self)

    def options(self):
        """The Options set with `with_options` (a fresh Options if none)."""
        return STEPS.get("options")(self)

    def with_options(self, options) -> "Dataset":
        """This pipeline with `options` merged into its own (see Options for which ones act here)."""
        return STEPS.get("with_options")(self, options)

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
