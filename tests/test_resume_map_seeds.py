"""Shuffled datasets that a map function builds, or that a from_generator generator reads, resume in order.

A map whose function may build a step that draws a seed (shuffle(seed=None), ...) draws one seed of its own
when built and calls the function for element i of iteration k inside derived_seeds(seed, k, i), on whichever
thread runs it; the datasets a map function or a generator captures are inputs for the seed walk, and a
from_generator pass sets its captured datasets' iteration count from the pass's key (data/_map_seeds.py).
The references are uninterrupted runs on pipelines built again with the seeds put back.
"""

import doctest
import hashlib
import os
import random
import sys
import threading
import time
import types

import numpy as np
import pytest

import batchfit as bf
from batchfit.data import _map_seeds
from batchfit.data._map_seeds import builds_seeds
from batchfit.data._seeds import drawn_seeds, put_drawn_seeds

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402
from test_resume_captured import batches, resumed_after_interrupt, resumed_from_position  # noqa: E402
from test_resume_nested import assert_bitwise, fit, iterations, rebuilt  # noqa: E402

Dataset = bf.data.Dataset
(X, Y), _ = child.data()
_SHUFFLED = Dataset.range(4).shuffle(4)     # named by _make_shuffled: a global the walk reaches


def _group(i):
    return Dataset.from_tensor_slices((X[12 * int(i):12 * int(i) + 12], Y[12 * int(i):12 * int(i) + 12]))


def _make_shuffled(i):
    return Dataset.range(int(i) + 1).shuffle(3)


def mapped(kind: str):
    """backup_child's 72 training rows in batches of 8, each group of 12 shuffled (seed=None) by a map function
    ("generator": all 72 read by a generator from a shuffled dataset built at the top level)."""
    rows = Dataset.from_tensor_slices((X, Y))
    if kind == "window":             # windows of 12 rows, each a (x, y) pair of datasets zipped and shuffled
        return rows.window(12).map(lambda a, b: Dataset.zip((a, b)).shuffle(12)).flat_map(lambda d: d).batch(8)
    if kind in ("range", "parallel"):
        workers = 2 if kind == "parallel" else None
        return Dataset.range(6).map(lambda i: _group(i).shuffle(12), num_parallel_calls=workers).interleave(
            lambda d: d, cycle_length=2).batch(8)
    if kind == "reads":              # builds a shuffle, reads it whole, returns arrays [12, ...]
        return Dataset.range(6).map(lambda i: next(iter(_group(i).shuffle(12).batch(12)))).unbatch().batch(8)
    if kind == "generator":
        inner = rows.shuffle(72)

        def generate():
            yield from inner.as_numpy_iterator()
        return Dataset.from_generator(generate).batch(8)
    raise ValueError(kind)


_KINDS = ["window", "range", "parallel", "reads", "generator"]


def _number(*words) -> int:
    """data/_drawn.py's derived seed: BLAKE2b of the words as 8-byte little-endian, 4 bytes, shifted to 31 bits."""
    digest = hashlib.blake2b(np.array(words, "<u8").tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") >> 1


# ----- which map functions build seeds ----------------------------------------------------------------

def test_map_functions_that_may_build_a_seeded_step_are_told_apart_from_plain_ones():
    rng = np.random.default_rng(0)

    def helper(i):                                 # a global function the map function calls
        return _make_shuffled(i)

    class Builder:
        def __call__(self, i):
            return Dataset.range(3).interleave(lambda j: Dataset.range(2))

    seeding = [lambda w: w.shuffle(4), lambda i: Dataset.range(3).shuffle(3), helper,
               lambda i: bf.data.Dataset.sample_from_datasets([Dataset.range(2)]),
               lambda i: (lambda: Dataset.list_files("*.txt"))(), Builder(), lambda d: d.flat_map(lambda x: x)]
    plain = [lambda x: x * 2, lambda x: np.random.shuffle(x), lambda x: rng.shuffle(x),
             lambda x: random.shuffle(x), lambda x, y: (np.asarray(x), y), lambda i: _SHUFFLED.skip(i).take(1)]
    assert [builds_seeds(f) for f in seeding] == [True] * 7
    assert [builds_seeds(f) for f in plain] == [False] * 6         # the last captures a shuffled dataset instead
    assert Dataset.range(4).map(plain[5])._captured == (_SHUFFLED,)
    rows = [np.zeros(2)] * 1000 + [_SHUFFLED]
    narrow = rows[1:]
    assert Dataset.range(4).map(lambda i: narrow[i])._captured == (_SHUFFLED,)              # 1000 items
    assert not hasattr(Dataset.range(4).map(lambda i: rows[i]), "_captured")    # 1001: data (rows[i]), not looked into


def test_plain_maps_carry_the_seeds_they_carried_before_and_draw_none():
    """No seed, no per-call work, the batched plan kept; Python's generator untouched by building them."""
    rng = np.random.default_rng(1)

    def augment(x, y):
        x = np.array(x)
        rng.shuffle(x)
        return x, y

    shuffled = Dataset.from_tensor_slices((X, Y)).shuffle(72)
    state = random.getstate()
    pipelines = [shuffled.map(lambda x, y: (x * 2, y)), shuffled.map(augment, num_parallel_calls=2),
                 shuffled.map(lambda x, y: (np.clip(x, 0.2, 0.8), y))]
    assert random.getstate() == state                        # no seed drawn: only the shuffles' (drawn apart)
    pipelines[2] = pipelines[2].shuffle(8)
    assert [drawn_seeds(p.batch(8)) for p in pipelines] == [(shuffled.seed,)] * 2 + [(pipelines[2].seed, shuffled.seed)]
    assert not any(p._seeding or hasattr(p, "seed") for p in pipelines[:2])
    assert pipelines[0]._plan.form == "numpy" and pipelines[1]._plan is None
    assert len(batches(pipelines[1].batch(8))) == 9


# ----- the seeds a map derives ------------------------------------------------------------------------------

def test_a_map_derives_its_seeds_from_its_own_by_element_index_on_any_thread():
    """Element i of iteration key k: the first seed=None step its call builds gets the BLAKE2b hash of
    (seed, len(key), *key, i, 0). Calls that sleep unevenly on 2 threads finish out of order: same seeds."""
    found = {}

    def build(i):
        time.sleep(0.004 if int(i) % 3 == 0 else 0.0005)      # 1 element per task: calls finish out of order
        ds = Dataset.range(5).shuffle(5)
        found.setdefault(threading.current_thread().name, {})[int(i)] = ds.seed
        return ds

    serial, threaded = Dataset.range(16).map(build), Dataset.range(16).map(build, num_parallel_calls=2)
    for ds in (serial, threaded):
        put_drawn_seeds(ds, (7,))
    assert serial.drawn and serial._seeding and serial._plan is None
    assert [list(d) for d in serial._elements((3,))] == [list(d) for d in threaded._elements((3,))]
    on_threads = {name: seeds for name, seeds in found.items() if name.startswith("batchfit-map")}
    assert len(on_threads) == 2                              # both worker threads made calls
    by_index = lambda seeds: {i: s for part in seeds for i, s in part.items()}
    assert by_index(on_threads.values()) == found[threading.current_thread().name] == \
        {i: _number(7, 1, 3, i, 0) for i in range(16)}
    assert serial.derives


@pytest.mark.parametrize("kind", _KINDS)
def test_a_rebuilt_pipeline_reads_alike_with_the_seeds_put_back(kind):
    first, other, again = mapped(kind), mapped(kind), mapped(kind)
    seeds = drawn_seeds(first)
    assert all(a != b for a, b in zip(drawn_seeds(other), seeds, strict=True))
    step = first._input if kind == "generator" else first._input._input     # the map (or from_generator) step
    expected = iterations(first)
    assert expected[0] != expected[1]                        # a new order each iteration, as tf.data
    rows = lambda iteration: sorted(row for x, _ in iteration for row in x)
    assert rows(expected[0]) == rows(expected[1]) == sorted(X.tolist())
    assert iterations(other) != expected
    if kind == "generator":
        assert step._captured and seeds == (step._captured[0].seed,)
        list(again._input._captured[0])          # iterated once more here: the passes read alike all the same
    elif kind == "reads":
        assert seeds == (step.seed,) and step._seeding
    else:                                    # the flat_map / interleave draws its own seed too (outermost first)
        assert seeds == (first._input.seed, step.seed) and step._seeding
    assert put_drawn_seeds(again, seeds) is True
    assert iterations(again) == expected


def test_a_cache_after_a_shuffling_map_is_refused_and_an_undetected_one_is_refused_when_returned():
    first, again = (Dataset.range(6).map(lambda i: _group(i).shuffle(12)).flat_map(lambda d: d).cache()
                    for _ in range(2))
    next(iter(again))
    with pytest.raises(ValueError, match=r"caches after a shuffle\(seed=None\) step"):
        put_drawn_seeds(again, drawn_seeds(first))
    hidden = types.SimpleNamespace(make=lambda i: _group(i).shuffle(12))     # reached through an attribute
    first, again = (Dataset.range(6).map(lambda i: hidden.make(i)).flat_map(lambda d: d).batch(8) for _ in range(2))
    assert not first._input._input._seeding and len(batches(first)) == 9
    next(iter(again))
    with pytest.raises(ValueError, match=r"cannot be resumed in the saved order: flat_map\(\)"):
        put_drawn_seeds(again, drawn_seeds(first))


# ----- fit resumes bitwise ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["window", "parallel", "reads", "generator"])
def test_fit_resumes_a_map_or_generator_shuffle_bitwise(tmp_path, kind):
    def read_once(again):               # the new job read the generator's dataset once already: its passes read alike
        if kind == "generator":
            list(again._input._captured[0])
    resumed, seeds = resumed_after_interrupt(tmp_path, mapped, kind, read_once)
    assert_bitwise(resumed, fit(rebuilt(mapped, kind, seeds), None, []))


def test_set_position_mid_epoch_resumes_a_map_built_shuffle_on_a_rebuilt_pipeline():
    resumed_from_position(mapped, "range")


def test_the_doctests_hold():
    result = doctest.testmod(_map_seeds)
    assert result.attempted >= 6 and result.failed == 0
