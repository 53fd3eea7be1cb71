"""The datasets a flat_map / interleave `map_func` (or group_by_window `reduce_func`) captures, and the
check that what it returns holds no drawn seed a resumed fit cannot put back.

A function may return a dataset it did not build: `lambda i: inner` or `lambda i: inner.skip(i)`, with
`inner = ...shuffle(n)` built (its seed drawn) at the top level. tf.data makes a dataset a function
captures an input of the function's graph; here the step that calls the function finds, when it is
built, the datasets the function can reach by name (`captured_datasets`) and holds them as inputs, so
the pipeline walk of data/_seeds.py carries their drawn seeds. One reached some other way (through an
object's attribute, a module's, a set, a generator) is not found: `check_returned` notes it when the
function returns it, and a resumed fit refuses such a pipeline (data/_seeds.put_drawn_seeds).

>>> import numpy as np
>>> from batchfit.data import Dataset
>>> inner = Dataset.from_tensor_slices(np.arange(4)).shuffle(4)
>>> step = Dataset.range(2).flat_map(lambda i: inner.skip(i))
>>> step._captured == (inner,)
True
"""

from __future__ import annotations

import dis
import functools
import types

from batchfit.data._base import Dataset
from batchfit.data._drawn import derived_seeds, fresh_seed
from batchfit.data._seeds import _steps

__all__ = ["captured_datasets", "setup_nested_seeds", "seeded_call"]

_LIMIT = 2000                     # functions and containers looked into per captured_datasets call
_GLOBAL_LOADS = {"LOAD_GLOBAL", "LOAD_NAME"}


def captured_datasets(fn) -> tuple:
    """The Datasets `fn` can reach by name, in a fixed order: its closure cells, defaults, keyword
    defaults and the globals its code loads (nested functions' code too), a functools.partial's
    function and arguments, a bound method's function and its object's attributes; followed through
    the functions, lists, tuples and dicts found there (each once; a Dataset is not looked into)."""
    found, seen, budget = [], set(), [_LIMIT]
    _visit(fn, found, seen, budget)
    return tuple(found)


def _visit(value, found: list, seen: set, budget: list) -> None:
    if isinstance(value, Dataset):
        if id(value) not in seen:
            seen.add(id(value))
            found.append(value)
        return
    if not isinstance(value, (types.FunctionType, types.MethodType, functools.partial, list, tuple, dict)):
        return
    if id(value) in seen or budget[0] <= 0:
        return
    seen.add(id(value))
    budget[0] -= 1
    for item in _reachable(value):
        _visit(item, found, seen, budget)


def _reachable(value) -> list:
    """What one function, method, partial or container refers to, in order."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, functools.partial):
        return [value.func, *value.args, *value.keywords.values()]
    if isinstance(value, types.MethodType):
        owner = value.__self__
        return [value.__func__, *(vars(owner).values() if hasattr(owner, "__dict__") else ())]
    cells = [cell.cell_contents for cell in value.__closure__ or () if _filled(cell)]
    names = value.__globals__
    loaded = [names[name] for name in _global_names(value.__code__) if name in names]
    return [*cells, *(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values(), *loaded]


def _global_names(code) -> list:
    """The global names `code` and the code objects nested in it load, in the order they appear."""
    names = [ins.argval for ins in dis.get_instructions(code) if ins.opname in _GLOBAL_LOADS]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return list(dict.fromkeys(names))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:                # a cell not filled yet
        return False
    return True


def setup_nested_seeds(step: Dataset, fn, seed) -> None:
    """Give a step that builds datasets with `fn` at iteration time its seed (None: drawn now, carried by
    training positions), and the datasets `fn` captures as inputs (`_captured`)."""
    step.seed = fresh_seed() if seed is None else int(seed)
    step.drawn = seed is None         # a resumed fit puts back the seed drawn here (data/_seeds.py)
    step.derives = False              # whether a call of fn has drawn a seed so far (the cache() rule)
    step.uncarried = None             # what a call returned that a position cannot carry (put_drawn_seeds)
    step.resumed = False              # seeds were put back into this pipeline: refuse uncarried ones at once
    step._captured = captured_datasets(fn)
    step._known = None                # ids of this step's pipeline steps, its captured datasets' included


def seeded_call(step: Dataset, call, key: tuple, index: int, method: str):
    """`call()`, the function call for element (or window) `index` of iteration `key`, with the seed=None
    steps it builds seeded from `step.seed` (data/_drawn.py); then the check of what it returned."""
    with derived_seeds(step.seed, key, index) as seeds:
        result = call()
    step.derives = step.derives or seeds.count > 0
    if isinstance(result, Dataset):
        _check_returned(step, result, seeds.given, method)
    return result


def _check_returned(step: Dataset, dataset: Dataset, given: list, method: str) -> None:
    """Note (raise, once seeds were put back) a drawn-seed step of `dataset` that the call neither built (its
    seed one of `given`) nor reached through `step`'s pipeline or captured datasets."""
    if step._known is None:
        step._known = {id(s) for s in _steps(step)}
    for node in _steps(dataset, stop=step._known):
        if getattr(node, "drawn", False) is True and node.seed not in given:
            step.uncarried = (
                f"{method}(): the function returned a dataset holding a {type(node).__name__} step whose seed was "
                f"drawn (seed=None) neither in that call nor in a dataset the function captures (closure, "
                f"defaults, the globals it names, a partial's arguments), so a training position cannot carry "
                f"it. Capture that dataset in one of these ways, or give it a seed (e.g. shuffle(n, seed=...)).")
            if step.resumed:
                raise ValueError(f"A resumed fit cannot read this dataset in the saved order: {step.uncarried}")
            return
