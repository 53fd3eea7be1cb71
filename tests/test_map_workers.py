"""A non-traceable per-row map on `num_parallel_calls` threads: the input order, errors and clean-up.

The reference is the serial map (`num_parallel_calls=None`): the same elements in the same
order, an error raised at the same element after the same elements, and no worker thread
left once an iteration ends, is abandoned or is interrupted.
"""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import batchfit as bf
from batchfit.data import _workers
from batchfit.data.dataset import Dataset

X = np.random.default_rng(0).random((300, 4))


def cap_outliers(x):
    """Python control flow on the row's values: JAX cannot trace it, so the map runs per row."""
    if x.max() > 0.9:
        x = np.minimum(x, 0.9)
    return x, int(x.argmax())


def map_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("batchfit-map")]


def wait_for_no_map_threads(timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while map_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return map_threads()


@pytest.mark.parametrize("workers", [2, 3, bf.data.AUTOTUNE])
def test_a_non_traceable_map_on_threads_gives_the_serial_elements_in_order(workers):
    rows = Dataset.from_tensor_slices(X).shuffle(300, seed=1)
    assert rows.map(cap_outliers)._plan is None                       # it runs per row
    serial = list(rows.map(cap_outliers).batch(32))
    parallel = list(rows.map(cap_outliers, num_parallel_calls=workers).batch(32))
    assert len(parallel) == len(serial) == 10                          # 9 x 32 + 12
    for (a, i), (b, j) in zip(parallel, serial):
        assert a.tobytes() == b.tobytes() and i.tolist() == j.tolist()
    assert wait_for_no_map_threads() == []


def test_slow_elements_finishing_out_of_order_are_yielded_in_order():
    def sleepy(v):                     # later elements finish first: 8 ms, 7 ms, ... per element
        time.sleep(0.001 * (8 - int(v) % 8))
        return int(v) * 10

    got = [int(v) for v in Dataset.from_tensor_slices(np.arange(24)).map(sleepy, num_parallel_calls=4)]
    assert got == [10 * v for v in range(24)]


def test_an_error_is_raised_at_its_element_after_the_elements_before_it():
    def fails_at_37(v):
        if int(v) == 37:
            raise ValueError("bad row 37")
        return int(v)

    for workers in (None, 3):
        seen = []
        with pytest.raises(ValueError, match="bad row 37"):
            for v in Dataset.from_tensor_slices(np.arange(100)).map(fails_at_37, num_parallel_calls=workers):
                seen.append(int(v))
        assert seen == list(range(37)), workers
    assert wait_for_no_map_threads() == []


def test_autotune_maps_serially_then_on_threads_and_keeps_the_faster(monkeypatch):
    """AUTOTUNE times `_PROBE` elements one at a time, the next `_PROBE` on threads, and maps the rest the
    faster way: threads for an `f` that releases the GIL (a 2 ms sleep: about 6 times faster on 6 threads)."""
    monkeypatch.setattr(_workers, "_PROBE", 8)
    where = {}

    def sleeps(v):
        time.sleep(0.002)
        where[int(v)] = threading.current_thread().name
        return int(v) * 10

    got = [int(v) for v in Dataset.from_tensor_slices(np.arange(40)).map(sleeps, num_parallel_calls=bf.data.AUTOTUNE)]
    assert got == [10 * v for v in range(40)]
    on_threads = [where[v].startswith("batchfit-map") for v in range(40)]
    assert on_threads == [False] * 8 + [True] * 32
    assert wait_for_no_map_threads() == []


@pytest.mark.parametrize("bad", [3, 10, 20])          # in the serial probe, the threaded probe, the rest
def test_autotune_raises_an_error_at_its_element_after_the_elements_before_it(monkeypatch, bad):
    monkeypatch.setattr(_workers, "_PROBE", 8)

    def fails(v):
        if int(v) == bad:
            raise ValueError(f"bad row {bad}")
        return int(v)

    seen = []
    with pytest.raises(ValueError, match=f"bad row {bad}"):
        for v in Dataset.from_tensor_slices(np.arange(30)).map(fails, num_parallel_calls=bf.data.AUTOTUNE):
            seen.append(int(v))
    assert seen == list(range(bad))
    assert wait_for_no_map_threads() == []


def test_breaking_out_or_dropping_an_iterator_stops_its_threads():
    ds = Dataset.from_tensor_slices(X).map(cap_outliers, num_parallel_calls=3)
    for i, _ in enumerate(ds):
        if i == 5:
            break
    gc.collect()
    assert wait_for_no_map_threads() == []
    iterator = iter(ds)
    next(iterator)
    assert map_threads()                                               # working ahead
    del iterator
    gc.collect()
    assert wait_for_no_map_threads() == []


def test_an_interrupt_in_the_consumer_stops_the_threads():
    ds = Dataset.from_tensor_slices(np.arange(10_000)).map(lambda v: int(v) if v >= 0 else 0,
                                                           num_parallel_calls=2)
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(ds):
            if i == 50:
                raise KeyboardInterrupt
    gc.collect()
    assert wait_for_no_map_threads() == []


CHILD = textwrap.dedent("""
    import sys, time, numpy as np
    from batchfit.data.dataset import Dataset

    def slow(v):
        time.sleep(0.002)
        return int(v) if v >= 0 else 0

    print("started", flush=True)
    try:
        for v in Dataset.from_tensor_slices(np.arange(1_000_000)).map(slow, num_parallel_calls=2):
            pass
    except KeyboardInterrupt:
        import threading
        print("interrupted", sum(t.name.startswith("batchfit-map") for t in threading.enumerate()), flush=True)
        sys.exit(3)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_during_a_parallel_map_ends_the_process_promptly():
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (started in the background), and so it is in a child")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert child.stdout.readline().strip() == "started"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 3 and out.split() == ["interrupted", "0"]   # no map thread left behind


def test_the_interpreter_exits_with_an_unfinished_parallel_map():
    """An iterator left open at exit (kept in a global) does not keep the process alive."""
    code = textwrap.dedent("""
        import numpy as np
        from batchfit.data.dataset import Dataset
        ds = Dataset.from_tensor_slices(np.arange(1_000_000)).map(lambda v: int(v) if v >= 0 else 0,
                                                                  num_parallel_calls=2)
        ITERATOR = iter(ds)
        print(sum(next(ITERATOR) for _ in range(100)), flush=True)     # 0 + 1 + ... + 99
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout.split() == ["4950"], done.stderr[-2000:]
