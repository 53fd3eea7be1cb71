"""Per-row maps on worker threads, in the input order: `Dataset.map(f, num_parallel_calls=n)` for an `f`
that cannot run batched (see _map.py)."""

from __future__ import annotations

import collections
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from batchfit.data._base import _call

__all__ = ["parallel_map", "tuple_if_list"]

_TASK_S = 1e-3                    # a task of a parallel map runs about this long (a group of elements)


def tuple_if_list(value):
    """tf.data's rule for a map's result: a list is a tuple (of components), anything else stays."""
    return tuple(value) if isinstance(value, list) else value


def parallel_map(fn: Callable, elements, workers: int):
    """`fn` of each element on `workers` threads, yielded in the input order (tf.data's deterministic map).

    A task maps a group of elements sized to take about _TASK_S by the last group's speed: a task per
    element costs more than a small `fn`, a large group would keep slow elements from running side by side.
    An error in `fn` is raised at its element, after the elements before it, as a serial map raises it.
    Threads, not processes: sending rows to spawned processes and back costs about what a small per-row `fn`
    does, so a process pool did not beat threads on a 2-core machine (benchmarks/input.py --workers).
    """
    per_element = [_TASK_S]                 # seconds per element, from the last finished group

    def run(group):
        start, out = time.perf_counter(), []
        try:
            for e in group:
                out.append(tuple_if_list(_call(fn, e)))
        except Exception as error:          # raised again in the consumer, at its element
            return out, error
        per_element[0] = max(1e-7, (time.perf_counter() - start) / len(group))
        return out, None

    with ThreadPoolExecutor(workers, thread_name_prefix="batchfit-map") as pool:
        pending = collections.deque()
        try:
            while group := list(itertools.islice(elements, max(1, min(64, round(_TASK_S / per_element[0]))))):
                pending.append(pool.submit(run, group))
                if len(pending) >= 2 * workers:
                    yield from _results(pending.popleft())
            while pending:
                yield from _results(pending.popleft())
        finally:
            for future in pending:
                future.cancel()


def _results(future):
    out, error = future.result()
    yield from out
    if error is not None:
        raise error
