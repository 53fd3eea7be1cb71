"""Seeds for a map function that builds datasets, and for a from_generator generator that reads captured ones.

`Dataset.map(fn)` calls `fn` at iteration time, once per element. A step that draws a seed when built
(`shuffle(seed=None)`, `sample_from_datasets`, `list_files`, `flat_map`, `interleave`, `group_by_window`)
built by `fn` (`ds.window(4).map(lambda w: w.shuffle(4))`, `map(lambda i: Dataset.range(i).shuffle(3))`)
would draw another seed at every call, and a rebuilt pipeline other orders. When `map()` is called, the
code of `fn` and of the functions it reaches by name is read for a call of such a method (`builds_seeds`);
a map that may make one gets flat_map's treatment (data/_nested.py): a seed of its own, drawn now and
carried by training positions, and the call for element i of iteration k made inside
derived_seeds(seed, k, i) on whichever thread runs it (num_parallel_calls), so the seeds follow from the
element's index, not from the order of the calls. Such a map runs per element, never batched. Any other
map runs as before, with no seed and no per-call work; the datasets a map function captures are inputs
of the map for the seed walk (data/_captured.py) either way.

A from_generator generator is Python that reads what it likes: the datasets it captures are inputs of
the step, so positions carry their drawn seeds; a generator reads them with `iter()`, whose order follows
the dataset's own count of iterations, so each pass of the step sets that count from the pass's key first.
What a generator builds itself, or reads another way (an object's attribute), is neither kept nor refused.

>>> import numpy as np
>>> from batchfit.data import Dataset
>>> from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
>>> def build():
...     return Dataset.range(1, 4).map(lambda i: Dataset.range(3 * i).shuffle(3)).flat_map(lambda d: d)
>>> first, again = build(), build()
>>> put_drawn_seeds(again, drawn_seeds(first))
True
>>> [int(v) for v in again] == [int(v) for v in first]
True
>>> builds_seeds(lambda x: np.random.shuffle(x)), builds_seeds(lambda w: w.shuffle(4))
(False, True)
"""

from __future__ import annotations

import builtins
import dis
import functools
import types

from batchfit.data._base import Dataset, _call
from batchfit.data._captured import captured_datasets, reached, seeded_call, setup_nested_seeds
from batchfit.data._drawn import hashed_seed
from batchfit.data._map import has_contents

__all__ = ["builds_seeds", "setup_map_seeds", "seeded_map", "keyed_generator"]

# The Dataset methods that build a step drawing a seed (seed=None), directly or as their own nested seed
_SEEDING = frozenset({"shuffle", "sample_from_datasets", "list_files", "flat_map", "interleave", "group_by_window",
                      "bucket_by_sequence_length"})
_ROOTS = {"LOAD_GLOBAL": "global", "LOAD_NAME": "global", "LOAD_DEREF": "deref", "LOAD_CLOSURE": "deref"}
_ATTRIBUTES = {"LOAD_ATTR", "LOAD_METHOD"}
_UNKNOWN = object()


def builds_seeds(fn) -> bool:
    """Whether `fn`, or a function it reaches by name, may call a method of `_SEEDING` on something that may be
    a Dataset: a local, an argument, a call's result, or a Dataset (or the class) reached by name. The
    method of an object reached by name that is not a Dataset (`np.random.shuffle`, `rng.shuffle` with `rng`
    a global or a closure cell) does not count."""
    return any(isinstance(v, types.FunctionType) and _calls_seeding(v) for v in reached(_callable(fn)))


def _callable(fn):
    """`fn`, or the bound `__call__` of an object that is called (a class with a Python `__call__`)."""
    if isinstance(fn, (types.FunctionType, types.MethodType, functools.partial)):
        return fn
    call = getattr(fn, "__call__", None)
    return call if isinstance(call, types.MethodType) else fn


def _calls_seeding(function: types.FunctionType) -> bool:
    cells = dict(zip(function.__code__.co_freevars, function.__closure__ or ()))
    for root, name, attributes in _seeding_loads(function.__code__, frozenset()):
        value = _UNKNOWN
        if root == "global":
            value = function.__globals__.get(name, getattr(builtins, name, _UNKNOWN))
        elif root == "deref" and name in cells and has_contents(cells[name]):
            value = cells[name].cell_contents
        for attribute in attributes:        # modules and classes only: an object's attribute may run code
            value = getattr(value, attribute, _UNKNOWN) if isinstance(value, (types.ModuleType, type)) else _UNKNOWN
        if value is _UNKNOWN or isinstance(value, Dataset) or isinstance(value, type) and issubclass(value, Dataset):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _seeding_loads(code, local: frozenset) -> tuple:
    """(root, name, attributes) of each load of a `_SEEDING` attribute in `code` and the code nested in it:
    the object it is loaded from is the global or closure cell `name` ("global" / "deref") followed by
    `attributes`, or unknown (root None: a local, an argument, a call's result). `local`: the cell names of
    the enclosing code (a nested function's closure cell by such a name is that code's local)."""
    found, chain = [], None
    for ins in dis.get_instructions(code):
        if ins.opname in _ROOTS:
            root = _ROOTS[ins.opname]
            chain = (None if root == "deref" and ins.argval in local else root, ins.argval, ())
        elif ins.opname in _ATTRIBUTES:
            if ins.argval in _SEEDING:
                found.append(chain or (None, None, ()))
            chain = chain and (chain[0], chain[1], chain[2] + (ins.argval,))
        else:
            chain = None
    inner = local | frozenset(code.co_cellvars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += _seeding_loads(const, inner)
    return tuple(found)


def setup_map_seeds(step: Dataset, fn) -> bool:
    """Give a map step the datasets `fn` captures as inputs (`_captured`) and, when `fn` may build a step that
    draws a seed, a seed of its own with derived calls (data/_captured.setup_nested_seeds); returns whether
    it did the latter."""
    if builds_seeds(fn):
        setup_nested_seeds(step, fn, None)
        return True
    captured = captured_datasets(fn)
    if captured:
        step._captured = captured
    return False


def seeded_map(step: Dataset, key: tuple):
    """`call(index, element)`: the map function of `step` on element `index` of iteration `key`, its seed=None
    steps seeded from the map's seed and the element's index (data/_captured.seeded_call)."""
    fn = step._fn
    return lambda index, element: seeded_call(step, lambda: _call(fn, element), key, index, "map")


def keyed_generator(step: Dataset, key: tuple):
    """The elements of the generator of a from_generator `step` for iteration `key`: the datasets it captures
    are iterated (by `iter()`) as their iteration numbered by the key's hash, then the following ones."""
    number = hashed_seed([len(key), *key])      # a 31-bit number for the pass's key
    for dataset in step._captured:
        dataset._iterations = number - 1           # Dataset.__iter__ counts up, then reads (count,)
    yield from step._generator(*step._args)
