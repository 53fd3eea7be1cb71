"""The datasets a flat_map / interleave `map_func` (or group_by_window `reduce_func`) captures, and the
check that what it returns holds no drawn seed a resumed fit cannot put back.

A function may return a dataset it did not build: `lambda i: inner` or `lambda i: inner.skip(i)`, with
`inner = ...shuffle(n)` built (its seed drawn) at the top level. tf.data makes a dataset a function
captures an input of the function's graph; here the step that calls the function finds, when it is
built, the datasets the function can reach by name (`captured_datasets`) and holds them as inputs, so
the pipeline walk of data/_seeds.py carries their drawn seeds. One reached some other way (through an
object's attribute, a module's, a set, a generator) is not found: `seeded_call` notes it when the
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
import weakref

from batchfit.data._base import Dataset
from batchfit.data._drawn import current_call, derived_seeds, fresh_seed
from batchfit.data._map import has_contents
from batchfit.data._seeds import _inputs, _steps

__all__ = ["captured_datasets", "reached", "setup_nested_seeds", "seeded_call"]

_LIMIT = 2000                     # functions and containers looked into per captured_datasets call
_WIDE = 1000                      # a larger list, tuple or dict is data (a map's `lambda i: rows[i]`): not looked into
_CHECKED = 64                     # calls checked before any put-back (then every call); see seeded_call
_GLOBAL_LOADS = {"LOAD_GLOBAL", "LOAD_NAME"}


def captured_datasets(fn) -> tuple:
    """The Datasets `fn` can reach by name, in a fixed order: its closure cells, defaults, keyword
    defaults and the globals its code loads (nested functions' code too), a functools.partial's
    function and arguments, a bound method's object (or that object's attributes) and function;
    followed through the functions, lists, tuples and dicts found there (each once, at most `_LIMIT`
    of them; a Dataset, and a container of more than `_WIDE` items, are not looked into)."""
    return tuple(value for value in reached(fn) if isinstance(value, Dataset))


def reached(fn):
    """The Datasets, functions, methods, partials and containers `fn` can reach by name (captured_datasets'
    walk), each once, in that order."""
    seen, budget, stack = set(), _LIMIT, [fn]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        if isinstance(value, Dataset):
            seen.add(id(value))
            yield value
        elif isinstance(value, _FOLLOWED) and budget > 0:
            seen.add(id(value))
            budget -= 1
            yield value
            stack.extend(reversed(_reachable(value)))


_FOLLOWED = (types.FunctionType, types.MethodType, functools.partial, list, tuple, dict)


def _reachable(value) -> list:
    """What one function, method, partial or container refers to, in order."""
    if isinstance(value, (list, tuple, dict)) and len(value) > _WIDE:
        return []
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, functools.partial):
        return [value.func, *value.args, *value.keywords.values()]
    if isinstance(value, types.MethodType):
        owner = value.__self__
        if isinstance(owner, Dataset) or not hasattr(owner, "__dict__"):
            return [owner, value.__func__]
        return [*vars(owner).values(), value.__func__]
    cells = [cell.cell_contents for cell in value.__closure__ or () if has_contents(cell)]
    names = value.__globals__
    loaded = [names[name] for name in _global_names(value.__code__) if name in names]
    return [*cells, *(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values(), *loaded]


@functools.lru_cache(maxsize=4096)   # a flat_map built inside a map_func is built once per element
def _global_names(code) -> tuple:
    """The global names `code` and the code objects nested in it load, in the order they appear."""
    names = [ins.argval for ins in dis.get_instructions(code) if ins.opname in _GLOBAL_LOADS]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return tuple(dict.fromkeys(names))


def setup_nested_seeds(step: Dataset, fn, seed) -> None:
    """Give a step that builds datasets with `fn` at iteration time its seed (None: drawn now, carried by
    training positions), and the datasets `fn` captures as inputs (`_captured`)."""
    step.seed = fresh_seed() if seed is None else int(seed)
    step.drawn = seed is None         # a resumed fit puts back the seed drawn here (data/_seeds.py)
    step.derives = False              # whether a call of fn has drawn a seed so far (the cache() rule)
    step.uncarried = None             # what a call returned that a position cannot carry (put_drawn_seeds)
    step.resumed = False              # seeds were put back into this pipeline: refuse uncarried ones at once
    step._checks_left = _CHECKED
    step._captured = captured_datasets(fn)
    step._known = None                # ids of this step's pipeline steps, its captured datasets' included
    call = current_call()             # built by another step's call: that step hears of what this one finds
    step._outer = None if call is None or call.owner is None else weakref.ref(call.owner)


def _chain(step: Dataset) -> list:
    """`step` and the steps whose function calls built it, innermost first."""
    found = [step]
    while found[-1]._outer is not None and found[-1]._outer() is not None:
        found.append(found[-1]._outer())
    return found


def seeded_call(step: Dataset, call, key: tuple, index: int, method: str):
    """`call()`, the function call for element (or window) `index` of iteration `key`, with the seed=None
    steps it builds seeded from `step.seed` (data/_drawn.py); then the check of what it returned.

    The check walks the returned pipeline (a few microseconds a call): it runs on the step's first calls,
    which include those of the first batch a resumed fit reads before it puts the seeds back, and on
    every call once they are put back (the resumed fit reads its pass from the start again)."""
    with derived_seeds(step.seed, key, index, step) as seeds:
        result = call()
    step.derives = step.derives or seeds.count > 0
    if isinstance(result, Dataset) and (step._checks_left > 0 or step.resumed
                                        or step._outer is not None and any(s.resumed for s in _chain(step))):
        step._checks_left -= 1
        _check_returned(step, result, seeds.given, method)
    return result


def _carried(seed, known: set) -> bool:
    """Whether `seed` was derived in a call of a step of `known` (or of a step such a call built)."""
    owner = getattr(seed, "owner", None)
    return owner is not None and (id(owner) in known or _carried(getattr(owner, "seed", None), known))


def _check_returned(step: Dataset, dataset: Dataset, given: list, method: str) -> None:
    """Note (raise, once seeds were put back) a drawn-seed step of `dataset` that the call neither built (its
    seed one of `given`) nor reached through `step`'s pipeline or captured datasets, and whose seed no call of
    a step of that pipeline derived (a map's: `window(n).map(lambda w: w.shuffle(n)).flat_map(lambda w: w)`)."""
    if step._known is None:
        step._known = {id(s) for s in _steps(step)}
    stack, seen = [dataset], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or id(node) in step._known:
            continue
        seen.add(id(node))
        if getattr(node, "drawn", False) is True and node.seed not in given and not _carried(node.seed, step._known):
            found = (f"{method}(): the function returned a dataset holding a {type(node).__name__} step whose seed "
                     f"was drawn (seed=None) neither in that call nor in a dataset the function captures (closure, "
                     f"defaults, the globals it names, a partial's arguments), so a training position cannot carry "
                     f"it. Capture that dataset in one of these ways, or give it a seed (e.g. shuffle(n, seed=...)).")
            for outer in _chain(step):          # the outermost is the step of the pipeline a position walks
                outer.uncarried = outer.uncarried or found
            if any(outer.resumed for outer in _chain(step)):
                raise ValueError(f"A resumed fit cannot read this dataset in the saved order: {found}")
            return
        stack.extend(_inputs(node))
