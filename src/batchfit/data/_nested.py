"""flat_map and interleave: the steps that build a dataset from each element, with `map_func` at iteration time.

A `shuffle(seed=None)` or `sample_from_datasets(seed=None)` inside `map_func` is built again for every
element of every iteration. Each of these steps draws one seed of its own when it is built (marked
`drawn`, so training positions carry it: data/_seeds.py) and calls `map_func` for element i of
iteration key k inside `derived_seeds(seed, k, i)` (data/_drawn.py): the nested steps' seeds follow
from it, and a pipeline built again with the seeds put back reads the same elements. Each iteration
(each fit epoch) still draws new nested orders, as tf.data does with reshuffle_each_iteration.

`map_func` may also return a dataset built outside it (`lambda i: inner.skip(i)`, `inner` shuffled at
the top level): the datasets it captures (closure, defaults, the globals it names, a partial's
arguments) are inputs of the step, so positions carry their drawn seeds too. One it reaches another
way (an object's attribute) is noted when returned, and a resumed fit refuses the pipeline: at the
put-back when a call before it returned one, else at the call that does (data/_captured.py).
group_by_window's `reduce_func` is called the same way, per window (_methods_batch.py).

>>> import numpy as np
>>> from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
>>> def build():
...     return Dataset.range(3).flat_map(lambda i: Dataset.from_tensor_slices(np.arange(4) + 10 * i).shuffle(4))
>>> first, again = build(), build()
>>> put_drawn_seeds(again, drawn_seeds(first))
True
>>> [int(v) for v in again] == [int(v) for v in first]
True
"""

from __future__ import annotations

import os

from batchfit.data._base import AUTOTUNE, STEPS, UNKNOWN_CARDINALITY, Dataset, _call, _check_int
from batchfit.data._captured import seeded_call, setup_nested_seeds
from batchfit.data._ops import Unary
from batchfit.errors import describe

__all__ = ["FlatMap", "Interleave"]


@STEPS.register("flat_map")
class FlatMap(Unary):
    """The elements of `fn(element)`'s dataset, for each element in turn. `seed`: the seed nested steps'
    seeds derive from (None: drawn now and carried by training positions). `derives`: whether a call of
    `fn` has drawn a seed so far (a cache() after this step then replays an order a position does not hold).
    `_captured`: the datasets `fn` captures, inputs of this step for the seed walk (data/_captured.py)."""

    def __init__(self, input, fn, seed=None):
        super().__init__(input)
        self._fn, self._batched = fn, None
        setup_nested_seeds(self, fn, seed)

    def _dataset_of(self, element, key: tuple, index: int, method: str) -> Dataset:
        """`fn(element)` for element `index` of iteration `key`, its seed=None steps seeded from this step's."""
        dataset = seeded_call(self, lambda: _call(self._fn, element), key, index, method)
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{method}(): `map_func` must return a bf.data.Dataset; it returned {describe(dataset)}. "
                            f"Wrap the values, e.g. Dataset.from_tensor_slices(values).")
        return dataset

    def _elements(self, key):
        for index, element in enumerate(self._input._elements(key)):
            yield from self._dataset_of(element, key, index, "flat_map")._elements(key)

    def _cardinality(self):
        return 0 if self._input._cardinality() == 0 else UNKNOWN_CARDINALITY


@STEPS.register("interleave")
class Interleave(FlatMap):
    """tf.data's interleave order: `block_length` elements from each of `cycle_length` open datasets in turn;
    an exhausted one is replaced, in its slot, by the next input element's. `num_parallel_calls` is accepted;
    the datasets are read on one thread and the order is always this deterministic one."""

    def __init__(self, input, fn, cycle_length, block_length, num_parallel_calls, seed=None):
        super().__init__(input, fn, seed)
        fix = "Pass a positive int, or AUTOTUNE."
        cycle = AUTOTUNE if cycle_length is None else _check_int("interleave", "cycle_length", cycle_length, 1,
                                                                  fix, allowed=(AUTOTUNE,))
        self._cycle = (os.cpu_count() or 1) if cycle == AUTOTUNE else cycle
        self._block = 1 if block_length is None else _check_int("interleave", "block_length", block_length, 1, fix)
        if num_parallel_calls is not None:
            _check_int("interleave", "num_parallel_calls", num_parallel_calls, 1, fix, allowed=(AUTOTUNE,))

    def _elements(self, key):
        inputs, slots = self._input._elements(key), [None] * self._cycle
        index = block = num_open = opened = 0
        end_of_input = False
        while not end_of_input or num_open:
            if slots[index] is not None:
                element = next(slots[index], _END)
                if element is not _END:
                    yield element
                    block += 1
                    if block < self._block:
                        continue
                else:
                    slots[index], num_open = None, num_open - 1
            elif not end_of_input:
                element = next(inputs, _END)
                end_of_input = element is _END
                if not end_of_input:
                    slots[index] = self._dataset_of(element, key, opened, "interleave")._elements(key)
                    num_open, opened = num_open + 1, opened + 1
                continue
            index, block = (index + 1) % self._cycle, 0


_END = object()
