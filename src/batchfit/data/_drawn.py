"""Seeds for `seed=None`: drawn fresh when a step is built, or derived inside a flat_map / interleave function.

A `shuffle(seed=None)` (or `sample_from_datasets(seed=None)`) built at the top level draws its seed
once from Python's generator; training positions carry it (data/_seeds.py). One built inside a
flat_map / interleave `map_func` is built again for every element of every iteration, so a drawn seed
would give a rebuilt pipeline another order. While such a step calls `map_func` for element `index` of
iteration `key`, it opens `derived_seeds(its seed, key, index)`: the seed drawn `count`-th in that call
is then the BLAKE2b hash of (that seed, key, index, count), so they follow from the step's own seed,
which a position carries.

>>> with derived_seeds(7, (0,), 3):
...     first = [fresh_seed(), fresh_seed()]
>>> with derived_seeds(7, (0,), 3):
...     again = [fresh_seed(), fresh_seed()]
>>> first == again and first[0] != first[1]
True
"""

from __future__ import annotations

import hashlib
import struct
import threading

from batchfit.data import arrays

__all__ = ["fresh_seed", "derived_seeds", "current_call", "DerivedSeed", "hashed_seed"]

_MASK = (1 << 64) - 1             # each word packed as 8 bytes
_CALL = threading.local()          # per thread: interleave may call map_func on another thread than flat_map


def hashed_seed(words) -> int:
    """31 bits of the BLAKE2b hash of integer `words` (each as 8 bytes): a seed that follows from them
    (hashlib: far cheaper than a SeedSequence)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(words)}Q", *(int(w) & _MASK for w in words)), digest_size=4)
    return int.from_bytes(digest.digest(), "little") >> 1


class DerivedSeed(int):
    """A seed handed out in a call of the step `owner` (a flat_map, a map, ...): it follows from `owner`'s own
    seed, so a dataset holding it is carried wherever `owner` is (data/_captured.py)."""

    owner = None


def current_call() -> "derived_seeds | None":
    """The `derived_seeds` block open on this thread (None: at the top level)."""
    return getattr(_CALL, "current", None)


def fresh_seed() -> int:
    """A seed for a step built with `seed=None`: derived inside a map_func call that `derived_seeds` marks,
    else drawn (arrays.fresh_seed)."""
    call = getattr(_CALL, "current", None)
    return arrays.fresh_seed() if call is None else call.next_seed()


class derived_seeds:
    """Within this block, on this thread, `fresh_seed()` returns the seeds of element `index` of iteration
    `key` of the step whose seed is `seed` (a nested step's own block replaces this one until it ends).

    `given` lists the seeds handed out so far (data/_captured.py: a step the call built has one of them);
    `owner` is the step that makes the call (None where not said).
    A class, not a contextmanager: flat_map opens one per element."""

    __slots__ = ("seed", "key", "index", "count", "given", "owner", "before")

    def __init__(self, seed: int, key: tuple, index: int, owner=None):
        self.seed, self.key, self.index, self.count, self.given, self.owner = seed, key, index, 0, [], owner

    def __enter__(self) -> "derived_seeds":
        self.before = getattr(_CALL, "current", None)
        _CALL.current = self
        return self

    def __exit__(self, *exc) -> None:
        _CALL.current = self.before

    def next_seed(self) -> int:
        """The `count`-th seed of this call, as 31 bits like a drawn one."""
        seed = DerivedSeed(hashed_seed([int(self.seed), len(self.key), *self.key, int(self.index), self.count]))
        self.count += 1
        seed.owner = self.owner
        self.given.append(seed)
        return seed
