"""The process-wide seed that `bf.utils.set_random_seed` sets, as Keras's global seed generator.

Anything drawn without a seed of its own (a model's `seed=None`, a layer built outside a model,
an initializer object called without a seed) takes `next_seed()`: a fresh OS-seeded draw until
`set_global_seed(s)` is called, then the same sequence after every call with the same `s`.
"""

from __future__ import annotations

import random

import numpy as np

from batchfit.errors import check_int

__all__ = ["set_global_seed", "next_seed", "seed_or_next"]

_sequence: np.random.SeedSequence | None = None


def set_global_seed(seed: int) -> None:
    """Make every later `next_seed()` follow from `seed`."""
    global _sequence
    _sequence = np.random.SeedSequence([int(seed), 0x6266])


def next_seed() -> int:
    """A 31-bit seed: the next of the global sequence, or a fresh one when no global seed is set."""
    if _sequence is None:
        return random.getrandbits(31)
    return int(_sequence.spawn(1)[0].generate_state(1)[0] >> 1)


def seed_or_next(seed) -> int:
    """`seed=` as fit and Model take it: a non-negative int, or None for `next_seed()`."""
    return next_seed() if seed is None else check_int("seed", seed, 0)
