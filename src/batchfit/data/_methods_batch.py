"""tf.data's reshaping and nesting steps: unbatch, rebatch, padded_batch, window (flat_map and interleave:
_nested.py), group_by_window, bucket_by_sequence_length; and apply, reduce, element_spec, options / with_options.

Each step registers itself in STEPS under the name the Dataset method (_base.py) looks up.
"""

from __future__ import annotations

import copy
import itertools

import jax
import numpy as np

from batchfit.data._base import (STEPS, UNKNOWN_CARDINALITY, Dataset, TensorSpec, _call, _check_int,
                                 _stack)
from batchfit.data._captured import seeded_call, setup_nested_seeds
from batchfit.data._methods import Elements
from batchfit.data._ops import Batch, Unary
from batchfit.errors import describe

__all__ = ["Options"]


def _rows_of(element, index: int):
    """The rows of the batch `element` (every component split along its first axis)."""
    leaves, treedef = jax.tree.flatten(element)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"unbatch(): element {index} is {describe(element)}; every component needs a first "
                         f"(batch) axis of one common length.")
    for i in range(sizes.pop()):
        yield jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves])


@STEPS.register("unbatch")
class Unbatch(Unary):
    def __init__(self, input):
        super().__init__(input)
        self._batched = False

    def _elements(self, key):
        for index, element in enumerate(self._input._elements(key)):
            yield from _rows_of(element, index)

    def _cardinality(self):
        node, n = self._input, self._input._cardinality()
        if isinstance(node, Batch) and node.drop_remainder and n >= 0:
            return n * node.batch_size          # tf.data knows the size only when every batch is full
        return n if n in (0, -1) else UNKNOWN_CARDINALITY


@STEPS.register("rebatch")
class Rebatch(Unary):
    def __init__(self, input, batch_size, drop_remainder):
        super().__init__(input)
        sizes = list(batch_size) if isinstance(batch_size, (list, tuple, np.ndarray)) else [batch_size]
        fix = "Pass the number of rows per batch, or a list of them to cycle through."
        self._sizes = [_check_int("rebatch", "batch_size", b, 1, fix) for b in sizes] if sizes else None
        if not self._sizes:
            raise ValueError(f"rebatch(): `batch_size` is an empty list. {fix}")
        self._drop, self._batched = bool(drop_remainder), True

    def _elements(self, key):
        rows = itertools.chain.from_iterable(_rows_of(e, i) for i, e in enumerate(self._input._elements(key)))
        for size in itertools.cycle(self._sizes):
            group = list(itertools.islice(rows, size))
            if not group or (self._drop and len(group) < size):
                return
            yield _stack(group)

    def _cardinality(self):
        return self._input._cardinality() if self._input._cardinality() in (0, -1) else UNKNOWN_CARDINALITY


def _shape_leaves(shapes, count: int, method: str) -> list:
    """`shapes` (one shape, or a structure of them matching the element) as `count` shapes."""
    is_shape = lambda v: v is None or (isinstance(v, (list, tuple)) and all(
        d is None or isinstance(d, (int, np.integer)) for d in v))
    leaves = jax.tree.leaves(shapes, is_leaf=is_shape) if shapes is not None else [None] * count
    if len(leaves) != count:
        raise ValueError(f"{method}(): `padded_shapes` has {len(leaves)} shapes ({shapes!r}), but the elements have "
                         f"{count} components. Give one shape per component, in the element's structure.")
    return leaves


def pad_group(group: list, shapes, values, method: str = "padded_batch"):
    """The elements `group` stacked into one batch, each component padded to `shapes` (None / -1 dims:
    the group's longest) with `values` (default 0, or b'' for strings)."""
    first, treedef = jax.tree.flatten(group[0])
    shapes = _shape_leaves(shapes, len(first), method)
    pads = jax.tree.leaves(values) if values is not None else [None] * len(first)
    pads = pads * len(first) if len(pads) == 1 else pads
    if len(pads) != len(first):
        raise ValueError(f"{method}(): `padding_values` has {len(pads)} values ({values!r}) for {len(first)} "
                         f"components. Give one value, or one per component in the element's structure.")
    columns = list(zip(*(jax.tree.leaves(e) for e in group)))
    out = []
    for i, (column, shape, pad) in enumerate(zip(columns, shapes, pads)):
        arrays = [np.asarray(v) for v in column]
        if len({a.ndim for a in arrays}) > 1:
            raise ValueError(f"{method}(): component {i} has elements of different ranks "
                             f"({describe(arrays[0])}, ...); pad elements of one rank.")
        longest = np.max([a.shape for a in arrays], axis=0) if arrays[0].ndim else ()
        if shape is not None and len(shape) != arrays[0].ndim:
            raise ValueError(f"{method}(): component {i} has rank {arrays[0].ndim} ({describe(arrays[0])}), but "
                             f"padded_shapes gives {tuple(shape)}. Give a shape of the same rank.")
        target = tuple(int(m) if d is None or d == -1 else int(d) for d, m in zip(shape or longest, longest))
        if any(a.ndim != len(target) or any(s > t for s, t in zip(a.shape, target)) for a in arrays):
            big = next(a for a in arrays if a.ndim != len(target) or any(s > t for s, t in zip(a.shape, target)))
            raise ValueError(f"{method}(): an element's component {i} is {describe(big)}, larger than its padded "
                             f"shape {target} (or of another rank). Raise padded_shapes or truncate the element.")
        fill = pad if pad is not None else (b"" if arrays[0].dtype.kind in "SU" else 0)
        batch = np.full((len(arrays), *target), fill, dtype=arrays[0].dtype)
        for j, a in enumerate(arrays):
            batch[(j, *(slice(0, s) for s in a.shape))] = a
        out.append(batch)
    return jax.tree.unflatten(treedef, out)


@STEPS.register("padded_batch")
class PaddedBatch(Unary):
    def __init__(self, input, batch_size, padded_shapes, padding_values, drop_remainder):
        super().__init__(input)
        self.batch_size = _check_int("padded_batch", "batch_size", batch_size, 1, "Pass e.g. padded_batch(32).")
        self._shapes, self._values, self.drop_remainder = padded_shapes, padding_values, bool(drop_remainder)
        self._batched = True

    def _elements(self, key):
        elements = self._input._elements(key)
        while True:
            group = list(itertools.islice(elements, self.batch_size))
            if not group or (self.drop_remainder and len(group) < self.batch_size):
                return
            yield pad_group(group, self._shapes, self._values)

    _cardinality = Batch._cardinality


def _components(elements: list):
    """A window's elements as the element's structure with one Dataset per component (tf.data's form)."""
    leaves = [jax.tree.flatten(e) for e in elements]
    treedef = leaves[0][1]
    return jax.tree.unflatten(treedef, [Elements([parts[i] for parts, _ in leaves]) for i in range(treedef.num_leaves)])


@STEPS.register("window")
class Window(Unary):
    def __init__(self, input, size, shift, stride, drop_remainder):
        super().__init__(input)
        self._size = _check_int("window", "size", size, 1, "Pass the number of elements per window.")
        self._shift = self._size if shift is None else _check_int("window", "shift", shift, 1, "Pass a step >= 1.")
        self._stride = _check_int("window", "stride", stride, 1, "Pass a step >= 1.")
        self._drop, self._batched = bool(drop_remainder), False

    def _elements(self, key):
        elements, buffer, first = self._input._elements(key), [], 0       # buffer[0] is element `first`
        span = (self._size - 1) * self._stride + 1
        for start in itertools.count(0, self._shift):
            buffer.extend(itertools.islice(elements, max(0, start + span - first - len(buffer))))
            del buffer[:max(0, start - first)]
            first = max(first, start)
            if not buffer or (self._drop and len(buffer) < span):
                return
            yield _components(buffer[::self._stride][:self._size])

    def _cardinality(self):
        n = self._input._cardinality()
        if n < 0:
            return n
        if self._drop:
            return max(0, (n - (self._size - 1) * self._stride - 1) // self._shift + 1)
        return -(-n // self._shift)


@STEPS.register("group_by_window")
class GroupByWindow(Unary):
    """`reduce_func(key, window)`'s dataset for each window of `window_size` elements with one key. Like
    flat_map (_nested.py), it draws a seed when built (carried by training positions) and calls
    reduce_func for window w of iteration k inside derived_seeds(seed, k, w), so the shuffles it builds
    resume in the same order; the datasets reduce_func captures are its inputs (data/_captured.py)."""

    def __init__(self, input, key_func, reduce_func, window_size, window_size_func):
        super().__init__(input)
        if (window_size is None) == (window_size_func is None):
            raise ValueError("group_by_window(): give exactly one of `window_size` and `window_size_func`; got "
                             f"window_size={window_size!r}, window_size_func={window_size_func!r}.")
        if window_size is not None:
            window_size = _check_int("group_by_window", "window_size", window_size, 1, "Pass the group size.")
        self._key, self._reduce, self._batched = key_func, reduce_func, None
        self._size = (lambda k: window_size) if window_size is not None else window_size_func
        setup_nested_seeds(self, reduce_func, None)

    def _group_key(self, element, index) -> int:
        key = np.asarray(_call(self._key, element))
        if key.ndim or key.dtype.kind not in "iu":
            raise ValueError(f"group_by_window(): key_func returned {describe(key)} for element {index}; it must "
                             f"return one integer.")
        return int(key)

    def _emit(self, group_key, elements, key, window: int):
        dataset = seeded_call(self, lambda: self._reduce(np.int64(group_key), Elements(elements)), key, window,
                              "group_by_window")
        if not isinstance(dataset, Dataset):
            raise TypeError(f"group_by_window(): reduce_func must return a bf.data.Dataset; it returned "
                            f"{describe(dataset)}.")
        return dataset._elements(key)

    def _elements(self, key):
        groups, windows = {}, itertools.count()
        for index, element in enumerate(self._input._elements(key)):
            group_key = self._group_key(element, index)
            groups.setdefault(group_key, []).append(element)
            if len(groups[group_key]) >= _check_int("group_by_window", "window_size_func(key)",
                                                    self._size(np.int64(group_key)), 1, "Return a size >= 1."):
                yield from self._emit(group_key, groups.pop(group_key), key, next(windows))
        for group_key in sorted(groups):          # tf.data flushes the partial groups in key order
            yield from self._emit(group_key, groups[group_key], key, next(windows))

    def _cardinality(self):
        return 0 if self._input._cardinality() == 0 else UNKNOWN_CARDINALITY


@STEPS.register("bucket_by_sequence_length")
def bucket_by_sequence_length(dataset, element_length_func, bucket_boundaries, bucket_batch_sizes, padded_shapes,
                              padding_values, pad_to_bucket_boundary, no_padding, drop_remainder) -> Dataset:
    """tf.data's bucketing: group_by_window on the bucket index, then a padded batch of the bucket's size.

    With pad_to_bucket_boundary and no padded_shapes, the first axis of each component is padded to the
    bucket's boundary - 1 (tf.data pads the axes of unknown size; here the first is taken as the sequence)."""
    boundaries = [int(b) for b in bucket_boundaries]
    if boundaries != sorted(set(boundaries)) or not boundaries:
        raise ValueError(f"bucket_by_sequence_length(): `bucket_boundaries` must be increasing ints; got "
                         f"{bucket_boundaries!r}.")
    sizes = [int(b) for b in bucket_batch_sizes]
    if len(sizes) != len(boundaries) + 1:
        raise ValueError(f"bucket_by_sequence_length(): len(bucket_batch_sizes) must equal len(bucket_boundaries) "
                         f"+ 1; got {len(sizes)} sizes for {len(boundaries)} boundaries.")

    def bucket(*element):
        return np.int64(np.searchsorted(boundaries, int(element_length_func(*element)), side="right"))

    def batch(bucket_id, group):
        if no_padding:
            return group.batch(sizes[bucket_id], drop_remainder=drop_remainder)
        shapes = padded_shapes
        if pad_to_bucket_boundary:
            if bucket_id >= len(boundaries):
                raise ValueError("bucket_by_sequence_length(): with pad_to_bucket_boundary=True, elements must have "
                                 "length < max(bucket_boundaries).")
            shapes = _boundary_shapes(group, padded_shapes, boundaries[bucket_id] - 1)
        return group.padded_batch(sizes[bucket_id], shapes, padding_values, drop_remainder=drop_remainder)

    return dataset.group_by_window(bucket, batch, window_size_func=lambda bucket_id: sizes[bucket_id])


def _boundary_shapes(group: Elements, padded_shapes, length: int):
    if padded_shapes is not None:
        is_shape = lambda v: isinstance(v, (list, tuple)) and all(d is None or isinstance(d, int) for d in v)
        return jax.tree.map(lambda s: [length if d in (None, -1) else d for d in s], padded_shapes, is_leaf=is_shape)
    return jax.tree.map(lambda v: [length, *np.shape(v)[1:]] if np.ndim(v) else [], group._list[0])


@STEPS.register("apply")
def apply(dataset, transformation_func) -> Dataset:
    result = transformation_func(dataset)
    if not isinstance(result, Dataset):
        raise TypeError(f"apply(): `transformation_func` must return a bf.data.Dataset; it returned "
                        f"{describe(result)}.")
    return result


@STEPS.register("reduce")
def reduce(dataset, initial_state, reduce_func):
    state = initial_state
    for element in dataset:
        state = reduce_func(state, element)
    return state


_END = object()


@STEPS.register("element_spec")
def element_spec(dataset):
    """TensorSpecs read from the first element; a batch axis that a last batch may shorten is None."""
    if getattr(dataset, "_signature", None) is not None:
        return dataset._signature
    element = next(iter(dataset._elements((0,))), _END)
    if element is _END:
        raise ValueError(f"element_spec of {dataset!r}: the dataset yields no element to read it from.")
    ragged = isinstance(dataset, (Batch, PaddedBatch)) and not dataset.drop_remainder or isinstance(dataset, Rebatch)

    def spec(value):
        if isinstance(value, Dataset):
            return value.element_spec
        array = np.asarray(value)
        shape = (None, *array.shape[1:]) if ragged and array.ndim else array.shape
        return TensorSpec(tuple(shape), array.dtype)
    return jax.tree.map(spec, element, is_leaf=lambda v: isinstance(v, Dataset))


class Options:
    """tf.data.Options, for code that sets them: `deterministic` is honoured (bf.data is always
    deterministic); the others are accepted and change nothing here (threads are bf.data's own)."""

    _NAMES = ("deterministic", "autotune", "threading", "experimental_optimization", "experimental_distribute",
              "experimental_slack", "experimental_warm_start", "experimental_external_state_policy")

    def __setattr__(self, name, value):
        if name not in self._NAMES:
            raise AttributeError(f"Options has no option {name!r}. Known: {', '.join(self._NAMES)}.")
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if name in self._NAMES:
            return None
        raise AttributeError(name)

    def merge(self, other: "Options") -> "Options":
        merged = copy.copy(self)
        for name, value in vars(other).items():
            object.__setattr__(merged, name, value)
        return merged


@STEPS.register("options")
def options(dataset) -> Options:
    node = dataset
    while node is not None and getattr(node, "_options", None) is None:
        node = getattr(node, "_input", None)
    return copy.copy(node._options) if node is not None else Options()


@STEPS.register("with_options")
def with_options(dataset, new: Options) -> Dataset:
    if not isinstance(new, Options):
        raise TypeError(f"with_options(): pass the Options of dataset.options(); got {describe(new)}.")
    result = copy.copy(dataset)          # the same pipeline (fit's device path still applies), new options
    result._options = options(dataset).merge(new)
    return result
