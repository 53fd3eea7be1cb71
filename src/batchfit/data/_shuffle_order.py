"""The orders of tf.data's shuffle buffer: item by item (any elements), or all at once (rows by index).

`Dataset.shuffle(n)` (data/_ops.py) emits the elements in the order tf.data's buffer of `n` slots gives:
`buffer_shuffle` runs the buffer over any iterator; `window_order` computes the same order of n rows
from the same draws without a Python loop, so rows of in-memory arrays are gathered at once.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

__all__ = ["buffer_shuffle", "window_order"]


def buffer_shuffle(items: Iterator, size: int, rng) -> Iterator:
    """tf.data's shuffle: keep `size` items, emit a random one and put the next in its place."""
    buffer = list(itertools.islice(items, size))
    draws = iter(())
    for item in items:
        j = next(draws, None)
        if j is None:
            draws = iter(rng.integers(0, size, 4096).tolist())
            j = next(draws)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def window_order(n: int, size: int, rng) -> np.ndarray:
    """The order in which items 0..n-1 leave tf.data's shuffle buffer of `size` slots, without a Python loop.

    At step t a uniform slot j_t is emitted and refilled with item size + t; so step t emits
    the item that entered slot j_t at its previous pick (or item j_t itself, the first time).
    At the end the items left in the buffer come out in random order.
    """
    steps = n - size
    slots = rng.integers(0, size, steps)
    # By slot, then by time: a stable sort, on slots in their smallest dtype (16-bit keys get a radix sort)
    times = np.argsort(slots.astype(np.min_scalar_type(size - 1)), kind="stable")
    ordered = slots[times]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    emitted = np.empty(steps, np.int64)
    emitted[times] = np.where(first, ordered, size + np.r_[0, times[:-1]])
    left = np.arange(size)
    last = np.r_[ordered[1:] != ordered[:-1], True]
    left[ordered[last]] = size + times[last]
    return np.concatenate([emitted, rng.permutation(left)])
