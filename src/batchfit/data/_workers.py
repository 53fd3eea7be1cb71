"""Per-row maps on worker threads, in the input order: `Dataset.map(f, num_parallel_calls=n)` for an `f`
that cannot run batched (see _map.py)."""

from __future__ import annotations

import collections
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from batchfit.data._base import _call

__all__ = ["parallel_map", "tuple_if_list"]

_TASK_S = 1e-3                    # a task of a parallel map runs about this long (a group of elements)
_PROBE = 512                      # elements timed serially, then on threads, before AUTOTUNE settles a pass


def tuple_if_list(value):
    """tf.data's rule for a map's result: a list is a tuple (of components), anything else stays."""
    return tuple(value) if isinstance(value, list) else value


def parallel_map(fn: Callable, elements, workers: int):
    """`fn` of each element on `workers` threads (1: on this one; AUTOTUNE, -1: see _autotuned), in the
    input order."""
    if workers == 1:
        return _serial(fn, elements)
    if workers < 0:
        return _autotuned(fn, iter(elements))
    return _threaded(fn, elements, workers)


def _autotuned(fn: Callable, elements):
    """num_parallel_calls=AUTOTUNE: `_PROBE` elements mapped serially, the next `_PROBE` on threads, each
    timed; the rest of the pass runs the faster way. Threads only wait for each other on a Python `f` (it
    holds the GIL) and help an `f` that releases it (NumPy on large arrays, reading files)."""
    serial, error, serial_s = _timed(_serial(fn, itertools.islice(elements, _PROBE)))
    yield from serial
    if error is not None:
        raise error
    workers = min(32, (os.cpu_count() or 1) + 4)
    threaded, error, threaded_s = _timed(_threaded(fn, itertools.islice(elements, _PROBE), workers))
    yield from threaded
    if error is not None:
        raise error
    yield from (_threaded(fn, elements, workers) if threaded_s < 0.9 * serial_s else _serial(fn, elements))


def _serial(fn: Callable, elements):
    return (tuple_if_list(_call(fn, e)) for e in elements)


def _timed(results) -> tuple:
    """(the results up to the end or the first error, that error or None, the seconds they took)."""
    out, start = [], time.perf_counter()
    try:
        for result in results:
            out.append(result)
    except Exception as error:              # raised again by the caller, after the results before it
        return out, error, time.perf_counter() - start
    return out, None, time.perf_counter() - start


def _threaded(fn: Callable, elements, workers: int):
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
            for result in _serial(fn, group):
                out.append(result)
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
