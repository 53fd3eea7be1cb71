"""tf.data's sources, combinations and selections: range, from_tensors, zip, concatenate, enumerate,
shard, take_while, unique, sample_from_datasets, choose_from_datasets.

Each step registers itself in STEPS under the name the Dataset method (_base.py) looks up, and
checks its own arguments when it is built, so a mistake is reported before any element is read.
Cardinalities follow tf.data (tests/data/tfdata_reference.json records them).
"""

from __future__ import annotations

import itertools

import jax
import numpy as np

from batchfit.data._base import (INFINITE_CARDINALITY, STEPS, UNKNOWN_CARDINALITY, Dataset, _as_tensor, _call,
                                 _check_int, truth)
from batchfit.data._ops import Unary
from batchfit.data._drawn import fresh_seed
from batchfit.errors import describe

__all__ = ["Elements", "check_datasets"]


def check_datasets(method: str, datasets, minimum: int = 1) -> list:
    """`datasets` as a list of Datasets, else a TypeError naming `method`."""
    if isinstance(datasets, Dataset) or not isinstance(datasets, (list, tuple)) or len(datasets) < minimum:
        raise TypeError(f"{method}() needs a list of at least {minimum} bf.data.Datasets; got {describe(datasets)}. "
                        f"Pass e.g. [dataset_a, dataset_b].")
    for i, dataset in enumerate(datasets):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{method}(): item {i} is {describe(dataset)}, not a bf.data.Dataset. Wrap arrays "
                            f"with Dataset.from_tensor_slices.")
    return list(datasets)


class Elements(Dataset):
    """A dataset of the elements in a list (the windows and groups that window / group_by_window hand out)."""

    _batched = False

    def __init__(self, elements: list):
        self._list = elements

    def _elements(self, key):
        return iter(self._list)

    def _cardinality(self):
        return len(self._list)


@STEPS.register("range")
class Range(Dataset):
    _batched = False

    def __init__(self, args, dtype):
        if not 1 <= len(args) <= 3:
            raise TypeError(f"range() takes 1 to 3 integers (stop | start, stop[, step]); got {len(args)}.")
        ints = [_check_int("range", "argument", a, -2**63, "Pass integers, as to Python's range.") for a in args]
        if len(ints) == 3 and ints[2] == 0:
            raise ValueError("range(): `step` must not be 0; got step=0.")
        self._range, self._type = range(*ints), np.dtype(dtype).type

    def _elements(self, key):
        return map(self._type, self._range)

    def _cardinality(self):
        return len(self._range)


@STEPS.register("from_tensors")
class FromTensors(Dataset):
    def __init__(self, tensors):
        is_node = lambda v: isinstance(v, (tuple, dict))
        self._element = jax.tree.map(_as_tensor, tensors, is_leaf=lambda v: not is_node(v))

    def _elements(self, key):
        return iter((self._element,))

    def _cardinality(self):
        return 1


def _combined_cardinality(counts, combine) -> int:
    if UNKNOWN_CARDINALITY in counts:
        return UNKNOWN_CARDINALITY
    return combine(counts)


@STEPS.register("zip")
class Zip(Dataset):
    def __init__(self, datasets):
        self._datasets, self._treedef = jax.tree.flatten(datasets, is_leaf=lambda v: isinstance(v, Dataset))
        if not self._datasets or not all(isinstance(d, Dataset) for d in self._datasets):
            raise TypeError(f"zip() needs datasets, as zip((a, b)), zip(a, b) or zip({{'x': a, 'y': b}}); got "
                            f"{describe(datasets)}.")
        batched = {d._batched for d in self._datasets}
        self._batched = batched.pop() if len(batched) == 1 else None

    def _elements(self, key):
        iterators = [d._elements(key) for d in self._datasets]
        for parts in zip(*iterators):
            yield jax.tree.unflatten(self._treedef, list(parts))

    def _cardinality(self):
        def shortest(counts):
            finite = [n for n in counts if n != INFINITE_CARDINALITY]
            return min(finite) if finite else INFINITE_CARDINALITY
        return _combined_cardinality([d._cardinality() for d in self._datasets], shortest)


def _signature(element) -> tuple:
    leaves, treedef = jax.tree.flatten(element)
    return treedef, [(np.asarray(leaf).dtype, np.ndim(leaf)) for leaf in leaves]


@STEPS.register("concatenate")
class Concatenate(Dataset):
    def __init__(self, first, second):
        check_datasets("concatenate", [first, second])
        self._parts = (first, second)
        self._batched = first._batched if first._batched == second._batched else None

    def _elements(self, key):
        first = None
        for element in self._parts[0]._elements(key):
            first = first or _signature(element)
            yield element
        for index, element in enumerate(self._parts[1]._elements(key)):
            if index == 0 and first is not None and _signature(element) != first:
                raise TypeError(f"concatenate(): the second dataset's elements ({describe(element)}) differ in "
                                f"structure, dtype or rank from the first's {first}. Cast or reshape one of them.")
            yield element

    def _cardinality(self):
        def total(counts):
            return INFINITE_CARDINALITY if INFINITE_CARDINALITY in counts else sum(counts)
        return _combined_cardinality([d._cardinality() for d in self._parts], total)


@STEPS.register("enumerate")
class Enumerate(Unary):
    def __init__(self, input, start):
        super().__init__(input)
        self._start = _check_int("enumerate", "start", start, -2**63, "Pass an integer.")
        self._batched = None

    def _elements(self, key):
        return ((np.int64(i), e) for i, e in enumerate(self._input._elements(key), self._start))


@STEPS.register("shard")
class Shard(Unary):
    def __init__(self, input, num_shards, index):
        super().__init__(input)
        self._num = _check_int("shard", "num_shards", num_shards, 1, "Pass the number of workers, e.g. shard(2, 0).")
        self._index = _check_int("shard", "index", index, 0, "Pass this worker's index.")
        if self._index >= self._num:
            raise ValueError(f"shard(): `index` must be in [0, num_shards={self._num}); got index={self._index}.")
        self._rows = input._rows

    def _indices(self, key):
        return self._input._indices(key)[self._index::self._num]

    def _elements(self, key):
        if self._rows is not None:
            return super()._elements(key)
        return itertools.islice(self._input._elements(key), self._index, None, self._num)

    def _cardinality(self):
        n = self._input._cardinality()
        return n if n < 0 else n // self._num + (self._index < n % self._num)


@STEPS.register("take_while")
class TakeWhile(Unary):
    def __init__(self, input, predicate):
        super().__init__(input)
        self._predicate = predicate

    def _elements(self, key):
        for index, element in enumerate(self._input._elements(key)):
            if not truth(_call(self._predicate, element), "take_while", index):
                return
            yield element

    def _cardinality(self):
        return UNKNOWN_CARDINALITY if self._input._cardinality() != 0 else 0


@STEPS.register("unique")
class Unique(Unary):
    def _elements(self, key):
        seen = set()
        for index, element in enumerate(self._input._elements(key)):
            value = np.asarray(element) if not isinstance(element, (tuple, dict)) else None
            if value is None or value.ndim or value.dtype.kind not in "iuSU":
                raise TypeError(f"unique(): element {index} is {describe(element)}; unique() takes scalar integers "
                                f"or strings, as tf.data. Map each element to such a key first.")
            if value.item() not in seen:
                seen.add(value.item())
                yield element

    def _cardinality(self):
        return UNKNOWN_CARDINALITY if self._input._cardinality() != 0 else 0


@STEPS.register("sample_from_datasets")
class SampleFromDatasets(Dataset):
    """Each element from dataset i with probability weights[i]; an exhausted dataset drops out (or ends
    the whole, with stop_on_empty_dataset). tf.data's random stream cannot be reproduced: the choices
    come from NumPy's generator seeded with (seed, iteration), the iteration only with rerandomize."""

    def __init__(self, datasets, weights, seed, stop_on_empty, rerandomize):
        self._datasets = check_datasets("sample_from_datasets", datasets)
        k = len(self._datasets)
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"sample_from_datasets(): `weights` must be {k} non-negative numbers, not all 0, one per "
                             f"dataset; got {describe(weights)}.")
        self._weights, self._stop, self._rerandomize = w / w.sum(), bool(stop_on_empty), rerandomize
        self.seed = fresh_seed() if seed is None else _check_int("sample_from_datasets", "seed", seed, 0, "")
        self.drawn = seed is None          # data/_seeds.py: a resumed fit puts a drawn seed back
        batched = {d._batched for d in self._datasets}
        self._batched = batched.pop() if len(batched) == 1 else None

    def _elements(self, key):
        rng = np.random.default_rng((self.seed, *(key if self._rerandomize else ())))
        iterators = [d._elements(key) for d in self._datasets]
        weights = self._weights.copy()
        while weights.sum() > 0:
            i = int(rng.choice(len(weights), p=weights / weights.sum()))
            element = next(iterators[i], _END)
            if element is not _END:
                yield element
            elif self._stop:
                return
            else:
                weights[i] = 0.0

    def _cardinality(self):
        return UNKNOWN_CARDINALITY


_END = object()


@STEPS.register("choose_from_datasets")
class ChooseFromDatasets(Dataset):
    def __init__(self, datasets, choice_dataset, stop_on_empty):
        self._datasets = check_datasets("choose_from_datasets", datasets)
        if not isinstance(choice_dataset, Dataset):
            raise TypeError(f"choose_from_datasets(): `choice_dataset` must be a bf.data.Dataset of scalar integers; "
                            f"got {describe(choice_dataset)}. Pass e.g. Dataset.range(2).repeat(3).")
        self._choices, self._stop = choice_dataset, bool(stop_on_empty)
        batched = {d._batched for d in self._datasets}
        self._batched = batched.pop() if len(batched) == 1 else None

    def _elements(self, key):
        iterators = [d._elements(key) for d in self._datasets]
        for index, choice in enumerate(self._choices._elements(key)):
            c = np.asarray(choice)
            if c.ndim or c.dtype.kind not in "iu" or not 0 <= int(c) < len(iterators):
                raise ValueError(f"choose_from_datasets(): choice {index} is {describe(choice)}; each choice must be a "
                                 f"scalar integer in [0, {len(iterators)}) (one of the datasets).")
            element = next(iterators[int(c)], _END)
            if element is not _END:
                yield element
            elif self._stop:
                return

    def _cardinality(self):
        return UNKNOWN_CARDINALITY
