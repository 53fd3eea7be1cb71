"""Seeds for `seed=None`: drawn fresh when a step is built, or derived inside a flat_map / interleave function.

A `shuffle(seed=None)` (or `sample_from_datasets(seed=None)`) built at the top level draws its seed
once from Python's generator; training positions carry it (data/_seeds.py). One built inside a
flat_map / interleave `map_func` is built again for every element of every iteration, so a drawn seed
would give a rebuilt pipeline another order. While such a step calls `map_func` for element `index` of
iteration `key`, it opens `derived_seeds(its seed, key, index)`: the seeds drawn in that call are then
the `count`-th number of (that seed, key, index, count), so they follow from the step's own seed, which
a position carries.

>>> with derived_seeds(7, (0,), 3):
...     first = [fresh_seed(), fresh_seed()]
>>> with derived_seeds(7, (0,), 3):
...     again = [fresh_seed(), fresh_seed()]
>>> first == again and first[0] != first[1]
True
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from batchfit.data import arrays

__all__ = ["fresh_seed", "derived_seeds"]

_MASK = (1 << 64) - 1             # SeedSequence takes non-negative words
_CALL = threading.local()          # per thread: interleave may call map_func on another thread than flat_map


class _Call:
    """The (seed, key, index) of the map_func call running on this thread, and the seeds drawn in it so far."""

    def __init__(self, seed: int, key: tuple, index: int):
        self.entropy = [int(seed), len(key), *(int(k) & _MASK for k in key), int(index)]
        self.count = 0

    def next_seed(self) -> int:
        """The `count`-th seed of this call, as 31 bits like a drawn one."""
        state = np.random.SeedSequence([*self.entropy, self.count]).generate_state(1, np.uint32)
        self.count += 1
        return int(state[0] >> 1)


def fresh_seed() -> int:
    """A seed for a step built with `seed=None`: derived inside a map_func call that `derived_seeds` marks,
    else drawn (arrays.fresh_seed)."""
    call = getattr(_CALL, "current", None)
    return arrays.fresh_seed() if call is None else call.next_seed()


@contextlib.contextmanager
def derived_seeds(seed: int, key: tuple, index: int):
    """Within this block, on this thread, `fresh_seed()` returns the seeds of element `index` of iteration
    `key` of the step whose seed is `seed` (a nested step's own block replaces this one until it ends)."""
    before = getattr(_CALL, "current", None)
    _CALL.current = _Call(seed, key, index)
    try:
        yield
    finally:
        _CALL.current = before
