"""The seeds a bf.data pipeline drew when it was built, so that a resumed fit reads in the same order.

`shuffle(seed=None)` draws its seed when the step is built (data/_drawn.fresh_seed). A job restarted
after a crash builds its dataset again and draws other seeds; training positions therefore carry the
drawn seeds (`drawn_seeds`), and a resumed fit puts them back (`put_drawn_seeds`) before it reads a
batch. Steps that were given a seed are left alone: the pipeline's code says what they are.

>>> import numpy as np
>>> first = Dataset.from_tensor_slices(np.arange(6)).shuffle(6).batch(3)
>>> again = Dataset.from_tensor_slices(np.arange(6)).shuffle(6).batch(3)    # another seed drawn
>>> put_drawn_seeds(again, drawn_seeds(first))
True
>>> [b.tolist() for b in again] == [b.tolist() for b in first]
True
"""

from __future__ import annotations

import numpy as np

from batchfit.data._base import STEPS, Dataset

__all__ = ["drawn_seeds", "put_drawn_seeds", "seeds_record", "seeds_from_record"]


def _inputs(node: Dataset) -> list:
    """The datasets `node` reads, in the order its attributes hold them (zip, concatenate and samplers
    hold several)."""
    found = []
    for name, value in vars(node).items():
        if name == "_rows":                 # the rows' source, not an input step
            continue
        if isinstance(value, Dataset):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, Dataset))
    return found


def _steps(dataset: Dataset) -> list:
    """Every step of the pipeline ending in `dataset`, outermost first, depth first, each once."""
    seen, order, stack = set(), [], [dataset]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        stack.extend(reversed(_inputs(node)))
    return order


def _drawing(dataset: Dataset) -> list:
    """The steps of the pipeline that drew their `seed` when built (Shuffle marks itself `drawn`)."""
    return [step for step in _steps(dataset) if getattr(step, "drawn", False) is True]


def drawn_seeds(dataset: Dataset | None) -> tuple:
    """The seeds of the `shuffle(seed=None)` steps of `dataset`, outermost first (ints; () when none drew)."""
    return () if dataset is None else tuple(step.seed for step in _drawing(dataset))


def put_drawn_seeds(dataset: Dataset | None, seeds) -> bool:
    """Give the `shuffle(seed=None)` steps of `dataset` the `seeds` that `drawn_seeds` read from the same
    pipeline built earlier (by an interrupted run); returns whether a seed changed (seeds None: none given;
    dataset None: arrays, nothing to do).

    Raises ValueError, before any batch is read, when the pipeline has another number of such steps, or
    when a `cache()` sits after one (it replays the order of its first pass, which a position does not hold;
    a flat_map / interleave / map counts when its function has built a seed=None step so far: fit reads the
    first batch before it puts the seeds back), or when a flat_map / interleave / group_by_window function
    has so far returned a dataset holding a drawn seed that is neither its call's nor carried
    (data/_captured.py); one such function returns later raises when it is returned.
    """
    if seeds is None or dataset is None:
        return False
    seeds = tuple(int(s) for s in seeds)
    steps = _drawing(dataset)
    if len(seeds) != len(steps):
        raise ValueError(f"The training position was saved with a dataset whose pipeline drew {len(seeds)} shuffle "
                         f"seed(s) (shuffle(seed=None) steps), but this dataset has {len(steps)} such step(s). "
                         f"Resume with the same pipeline, or delete the backup to start over.")
    if tuple(step.seed for step in steps) == seeds:
        return False
    for cache in (step for step in _steps(dataset) if isinstance(step, STEPS.get("cache"))):
        if any(getattr(step, "derives", True) for step in _drawing(cache._input)):
            raise ValueError("This dataset caches after a shuffle(seed=None) step (or a flat_map / interleave / map "
                             "whose function builds one): the cache replays the order of its first pass, which a "
                             "training position does not hold, so fit cannot resume it in the same order. Give that "
                             "shuffle a seed (shuffle(n, seed=...)), or cache() before shuffling.")
    for step in _steps(dataset):
        if getattr(step, "uncarried", None):
            raise ValueError(f"This dataset cannot be resumed in the saved order: {step.uncarried}")
    for step, seed in zip(steps, seeds):
        step.seed = seed
    for step in _steps(dataset):
        if hasattr(step, "uncarried"):   # flat_map, interleave, group_by_window: refuse what a later call returns
            step.resumed = True
    return True


# The Position fields that hold data-order seeds (engine/state.py), as checkpoint.py records them.
_RECORDED = {"data_seeds": (), "validation_seed": None, "validation_data_seeds": None}


def seeds_record(position) -> dict:
    """A Position's seed fields as JSON for a checkpoint's record: ints, lists of ints, or None."""
    plain = lambda v: v if v is None else int(v) if isinstance(v, (int, np.integer)) else [int(s) for s in v]
    return {name: plain(getattr(position, name, default)) for name, default in _RECORDED.items()}


def seeds_from_record(record: dict) -> dict | None:
    """The Position fields `seeds_record` wrote, as tuples (a record written before a field was kept gives
    its default); None when one is not what `seeds_record` writes (a damaged record)."""
    found = {}
    for name, default in _RECORDED.items():
        value = record.get(name, default)
        if name in record and not _recordable(name, value):
            return None
        found[name] = tuple(value) if isinstance(value, list) else value
    return found


def _recordable(name: str, value) -> bool:
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if value is None:
        return name != "data_seeds"
    if name == "validation_seed":
        return is_int(value)
    return isinstance(value, list) and all(map(is_int, value))
