"""bf.data.Dataset follows tf.data: elements, cardinality, shuffle, batch, map, filter, repeat, take, skip, cache."""

import threading
import traceback

import numpy as np
import pytest

import batchfit as bf
from batchfit.data.arrays import epoch_order

Dataset = bf.data.Dataset


def values(ds):
    return [np.asarray(e).tolist() for e in ds]


def test_slices_of_a_tuple_and_a_dict():
    x, y = np.arange(6.0).reshape(3, 2), np.array([10, 11, 12])
    first = next(iter(Dataset.from_tensor_slices((x, y))))
    assert isinstance(first, tuple) and first[0].tolist() == [0.0, 1.0] and first[1] == 10
    row = next(iter(Dataset.from_tensor_slices({"a": x, "b": y}).skip(2)))
    assert row["a"].tolist() == [4.0, 5.0] and row["b"] == 12
    assert values(Dataset.from_tensor_slices([1, 2, 3])) == [1, 2, 3]     # a list is one tensor, as in tf
    with pytest.raises(ValueError, match="one common length"):
        Dataset.from_tensor_slices((x, y[:2]))


def test_batch_sizes_and_cardinality():
    ds = Dataset.from_tensor_slices(np.arange(10))
    assert values(ds.batch(4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert values(ds.batch(4, drop_remainder=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert (len(ds.batch(4)), len(ds.batch(4, drop_remainder=True))) == (3, 2)      # ceil(10/4), floor(10/4)
    assert len(ds.take(3)) == 3 and len(ds.skip(3)) == 7 and len(ds.skip(-1)) == 0 and len(ds.repeat(3)) == 30
    assert ds.repeat().cardinality() == bf.data.INFINITE_CARDINALITY
    assert ds.filter(lambda v: v > 4).cardinality() == bf.data.UNKNOWN_CARDINALITY
    assert ds.repeat().take(4).cardinality() == 4
    with pytest.raises(TypeError, match="infinite"):
        len(ds.repeat())
    with pytest.raises(TypeError, match="unknown"):
        len(ds.filter(lambda v: True))


def test_map_filter_repeat_take_skip():
    ds = Dataset.from_tensor_slices((np.arange(6), np.arange(6) * 10))
    assert values(ds.map(lambda a, b: a + b)) == [0, 11, 22, 33, 44, 55]     # tuples spread over arguments
    assert values(ds.map(lambda a, b: a).filter(lambda a: a % 2 == 0)) == [0, 2, 4]
    plain = Dataset.from_tensor_slices(np.arange(3))
    assert values(plain.repeat(2)) == [0, 1, 2, 0, 1, 2]
    assert values(plain.repeat().skip(2).take(4)) == [2, 0, 1, 2]
    assert values(plain.batch(2).repeat(2)) == [[0, 1], [2], [0, 1], [2]]
    assert values(Dataset.from_tensor_slices(np.arange(0)).repeat()) == []    # nothing, not a hang


def test_map_in_parallel_keeps_the_order():
    ds = Dataset.from_tensor_slices(np.arange(50)).map(lambda v: v * v, num_parallel_calls=bf.data.AUTOTUNE)
    assert values(ds) == [v * v for v in range(50)]


def test_shuffle_with_a_full_buffer_is_fits_epoch_order():
    ds = Dataset.from_tensor_slices(np.arange(20)).shuffle(20, seed=3)
    first, second = values(ds), values(ds)
    assert first == epoch_order(20, 3, 0).tolist() and second == epoch_order(20, 3, 1).tolist()
    fixed = Dataset.from_tensor_slices(np.arange(20)).shuffle(100, seed=3, reshuffle_each_iteration=False)
    assert values(fixed) == values(fixed) == first
    assert values(Dataset.from_tensor_slices(np.arange(20)).shuffle(20, seed=3)) == first      # seeded


def test_a_small_shuffle_buffer_only_mixes_within_its_window():
    ds = Dataset.from_tensor_slices(np.arange(100)).shuffle(5, seed=0)
    order = values(ds)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    for position, value in enumerate(order):      # the buffer holds items [0, position + 5) at that point
        assert value < position + 5
    mapped = Dataset.from_tensor_slices(np.arange(100)).map(lambda v: v).shuffle(5, seed=0)   # element level
    assert all(v < p + 5 for p, v in enumerate(values(mapped))) and sorted(values(mapped)) == list(range(100))


def test_both_shuffle_buffers_draw_the_orders_tf_data_can_produce():
    from batchfit.data._ops import window_order    # rows: vectorized; other elements: the loop
    from batchfit.data.dataset import _buffer_shuffle
    # 4 items through 2 slots: the first out is 0 or 1, each later one is in the buffer then: 8 orders
    possible = {(0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3), (0, 2, 3, 1),
                (1, 0, 2, 3), (1, 0, 3, 2), (1, 2, 0, 3), (1, 2, 3, 0)}
    for shuffle in (lambda rng: window_order(4, 2, rng), lambda rng: _buffer_shuffle(iter(range(4)), 2, rng)):
        counts = {}
        for seed in range(4000):
            order = tuple(int(v) for v in shuffle(np.random.default_rng(seed)))
            counts[order] = counts.get(order, 0) + 1
        assert set(counts) == possible
        assert all(abs(c / 4000 - 1 / 8) < 0.03 for c in counts.values())    # each with chance 1/8


def test_cache_replays_the_first_complete_iteration():
    calls = []
    ds = Dataset.from_tensor_slices(np.arange(4)).map(lambda v: calls.append(1) or v * 2).cache()
    assert values(ds) == values(ds) == [0, 2, 4, 6]
    assert len(calls) == 4                                 # the map ran once per element, not twice
    shuffled = Dataset.from_tensor_slices(np.arange(30)).shuffle(30, seed=1).cache()
    assert values(shuffled) == values(shuffled)            # the first order is kept
    with pytest.raises(ValueError, match="not supported"):
        Dataset.from_tensor_slices(np.arange(3)).cache("/tmp/cache")


def test_from_generator_is_called_again_for_each_iteration_and_checks_its_signature():
    ds = Dataset.from_generator(lambda n: (np.full((2,), i, np.float64) for i in range(n)), args=(3,),
                                output_signature=bf.data.TensorSpec((None,), np.float32))
    assert values(ds) == values(ds) == [[0, 0], [1, 1], [2, 2]]
    assert next(iter(ds)).dtype == np.float32
    bad = Dataset.from_generator(lambda: iter([np.zeros(2), np.zeros((2, 2))]),
                                 output_signature=bf.data.TensorSpec((2,)))
    with pytest.raises(ValueError, match=r"Element 1 .* shape \(2, 2\).*expects \(2,\)"):
        values(bad)
    with pytest.raises(TypeError, match="function that returns an iterator"):
        Dataset.from_generator(iter([1, 2]))


def test_prefetch_yields_the_same_elements_and_leaves_no_thread():
    ds = Dataset.from_tensor_slices(np.arange(40)).batch(3).prefetch(bf.data.AUTOTUNE)
    assert values(ds) == values(Dataset.from_tensor_slices(np.arange(40)).batch(3))
    iterator = iter(ds)
    next(iterator)
    iterator.close()                                       # stopping early stops the worker
    assert not [t for t in threading.enumerate() if t.name == "batchfit-prefetch" and t.is_alive()]


def test_an_error_in_a_map_function_keeps_its_traceback():
    def broken(v):
        if v == 3:
            raise KeyError("row 3")
        return v

    for workers in (None, 2):
        ds = Dataset.from_tensor_slices(np.arange(6)).map(broken, num_parallel_calls=workers).prefetch(2)
        with pytest.raises(KeyError, match="row 3") as info:
            values(ds)
        assert "broken" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]


def test_the_articles_pipeline_stays_on_the_fused_device_path():
    from batchfit.data.source import ArraySource, as_source
    x, y = np.random.rand(100, 10), np.random.rand(100, 1)
    dataset = Dataset.from_tensor_slices((x, y))                       # the second article's pipeline
    dataset = dataset.shuffle(buffer_size=10000).batch(32).prefetch(buffer_size=bf.data.AUTOTUNE)
    source = as_source(dataset)
    assert isinstance(source, ArraySource) and source.shuffle and source.num_batches == 4
    assert not isinstance(as_source(dataset.map(lambda a, b: (a, b))), ArraySource)


def test_public_names():
    assert sorted(bf.data.__all__) == ["AUTOTUNE", "Dataset", "INFINITE_CARDINALITY", "TensorSpec",
                                       "UNKNOWN_CARDINALITY"]


def test_epoch_orders_are_shared_read_only_and_exact():
    """Orders are remembered (the last, and the next fit's, drawn ahead) but always equal a fresh draw."""
    from batchfit.data import arrays
    first = epoch_order(50, 7, 2)
    assert not first.flags.writeable
    for seed in range(5):                       # evicts it from the memo
        arrays.draw_ahead(50, seed)
    again = epoch_order(50, 7, 2)
    np.testing.assert_array_equal(again, np.random.default_rng((7, 2)).permutation(50))
    np.testing.assert_array_equal(again, first)
    upcoming = arrays._next_seed
    arrays.draw_ahead(40, 0)
    assert arrays.fresh_seed() == upcoming                      # drawn ahead, then handed out
    np.testing.assert_array_equal(epoch_order(40, upcoming, 0), np.random.default_rng((upcoming, 0)).permutation(40))


def test_a_forked_child_draws_other_fresh_seeds():
    import subprocess
    import sys
    code = ("import os; from batchfit.data import arrays\n"
            "r, w = os.pipe(); pid = os.fork()\n"
            "if pid == 0:\n    os.write(w, str(arrays.fresh_seed()).encode()); os._exit(0)\n"
            "os.waitpid(pid, 0); child = int(os.read(r, 64)); mine = arrays.fresh_seed()\n"
            "print(child != mine)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
