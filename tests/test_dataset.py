"""bf.data.Dataset follows tf.data: elements, cardinality, shuffle, batch, map, filter, repeat, take, skip, cache."""

import ast
import concurrent.futures
import itertools
import pathlib
import threading
import time
import traceback

import numpy as np
import pytest

import batchfit as bf
from batchfit.data.arrays import epoch_order
from batchfit.data.prefetch import Prefetcher, stoppable

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
    from batchfit.data._shuffle_order import buffer_shuffle, window_order    # rows: vectorized; other elements: the loop
    # 4 items through 2 slots: the first out is 0 or 1, each later one is in the buffer then: 8 orders
    possible = {(0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3), (0, 2, 3, 1),
                (1, 0, 2, 3), (1, 0, 3, 2), (1, 2, 0, 3), (1, 2, 3, 0)}
    for shuffle in (lambda rng: window_order(4, 2, rng), lambda rng: buffer_shuffle(iter(range(4)), 2, rng)):
        counts = {}
        for seed in range(4000):
            order = tuple(int(v) for v in shuffle(np.random.default_rng(seed)))
            counts[order] = counts.get(order, 0) + 1
        assert set(counts) == possible
        assert all(abs(c / 4000 - 1 / 8) < 0.03 for c in counts.values())    # each with chance 1/8


def test_window_order_is_the_buffer_loop_on_the_same_draws():
    from batchfit.data._shuffle_order import window_order
    # the loop written out: step t emits slot j_t and refills it with item size + t; then the rest, permuted
    for n, size, seed in ((12, 3, 0), (100, 7, 1), (300, 256, 2), (70_000, 65_537, 3), (9, 1, 4)):
        rng = np.random.default_rng(seed)
        slots, buffer, expected = rng.integers(0, size, n - size), list(range(size)), []
        for t, j in enumerate(slots):
            expected.append(buffer[j])
            buffer[j] = size + t
        expected += rng.permutation(np.array(buffer)).tolist()
        assert window_order(n, size, np.random.default_rng(seed)).tolist() == expected


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


class SlowSource:
    """A generator function that takes 0.05 s per item and counts the items drawn from it."""

    def __init__(self, num_items=None):
        self.drawn, self.num_items = 0, num_items

    def __call__(self):
        for i in itertools.count() if self.num_items is None else range(self.num_items):
            time.sleep(0.05)
            self.drawn += 1
            yield np.float32(i)


def drawn_after_close(source, iterator, consume):
    """Items drawn from `source` from the moment `iterator` is closed, once its threads have ended."""
    for _ in range(consume):
        next(iterator)
    before = source.drawn
    iterator.close()
    for thread in threading.enumerate():
        if thread.name.startswith("batchfit"):
            thread.join(2.0)
    time.sleep(0.2)                   # four more items' time: nothing may still be drawing
    assert not [t for t in threading.enumerate() if t.name.startswith("batchfit") and t.is_alive()]
    return source.drawn - before


@pytest.mark.parametrize("pipeline", [
    lambda ds: ds.prefetch(2),
    lambda ds: ds.batch(3).prefetch(1),                                          # 3 draws per element
    lambda ds: ds.map(lambda v: v + 1, num_parallel_calls=4).batch(3).prefetch(1),  # fills 8 ahead
    lambda ds: ds.prefetch(1).batch(3).prefetch(1),                              # a prefetch inside a prefetch
], ids=["prefetch", "batch", "parallel map", "nested"])
def test_a_closed_prefetch_stops_drawing_from_a_slow_generator_within_one_item(pipeline):
    source = SlowSource()
    ds = pipeline(Dataset.from_generator(source))
    assert drawn_after_close(source, iter(ds), consume=2) <= 1     # the draw under way when close() came


def test_a_producer_of_chunks_stops_between_the_draws_of_a_chunk():
    """fit's stream worker draws K batches per chunk from the user's generator: stoppable() ends it mid-chunk."""
    source = SlowSource()
    generator = source()

    def chunks():                         # as StreamSource._pieces does, 4 draws per item
        group = []
        for item in stoppable(generator):
            group.append(item)
            if len(group) == 4:
                yield group
                group = []

    assert drawn_after_close(source, Prefetcher(chunks, depth=1), consume=1) <= 1
    assert next(generator) == source.drawn - 1         # the user's generator is not closed: it goes on


def test_a_stopped_iteration_is_not_cached_as_complete():
    source = SlowSource(num_items=6)
    ds = Dataset.from_generator(source).cache().prefetch(1)
    drawn_after_close(source, iter(ds), consume=2)
    assert values(ds) == [0, 1, 2, 3, 4, 5]                # read again in full, not the 2-3 items seen before


@pytest.mark.parametrize("call, pattern", [
    (lambda ds: ds.shuffle(bf.data.AUTOTUNE), r"shuffle\(\): `buffer_size` must be an integer >= 1; got -1\. "
                                              r"There is no automatic .* the dataset's size"),
    (lambda ds: ds.shuffle(0), r"`buffer_size` .* got 0\."),
    (lambda ds: ds.shuffle(-5), r"`buffer_size` .* got -5\."),
    (lambda ds: ds.shuffle(10.0), r"`buffer_size` .* got 10\.0\."),
    (lambda ds: ds.shuffle(True), r"`buffer_size` .* got True\."),
    (lambda ds: ds.batch(0), r"batch\(\): `batch_size` must be an integer >= 1; got 0\. .* batch\(32\)"),
    (lambda ds: ds.batch(-1), r"`batch_size` .* got -1\."),
    (lambda ds: ds.take(2.5), r"take\(\): `count` must be an integer >= 0; got 2\.5\. .* -1 for all"),
    (lambda ds: ds.take(-1.0), r"`count` .* got -1\.0\."),
    (lambda ds: ds.skip("3"), r"skip\(\): `count` .* got '3'\."),
    (lambda ds: ds.prefetch(0), r"prefetch\(\): `buffer_size` must be an integer >= 1; got 0\. .* AUTOTUNE"),
    (lambda ds: ds.prefetch(-2), r"`buffer_size` .* got -2\."),
    (lambda ds: ds.repeat(-2), r"repeat\(\): `count` .* got -2\."),
    (lambda ds: ds.map(abs, num_parallel_calls=0), r"map\(\): `num_parallel_calls` .* got 0\."),
])
def test_sizes_and_counts_are_checked_when_the_pipeline_is_built(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(Dataset.from_tensor_slices(np.arange(10)))


def test_the_special_counts_still_work():
    ds = Dataset.from_tensor_slices(np.arange(4))
    assert values(ds.take(-1)) == [0, 1, 2, 3] and values(ds.skip(np.int64(-1))) == []
    assert values(ds.repeat(-1).take(6)) == [0, 1, 2, 3, 0, 1] and values(ds.prefetch(bf.data.AUTOTUNE)) == [0, 1, 2, 3]
    assert sorted(values(ds.shuffle(np.int64(4), seed=0))) == [0, 1, 2, 3]


def test_the_data_modules_import_one_way():
    """No cycle among batchfit.data's modules, lazy imports inside functions included."""
    folder = pathlib.Path(bf.data.__file__).parent
    modules = {path.stem for path in folder.glob("*.py")}
    graph = {}
    for name in modules:
        imported = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "batchfit.data":
                imported |= {alias.name for alias in node.names} & modules
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchfit.data."):
                imported.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[2] for a in node.names if a.name.startswith("batchfit.data.")}
        graph[name] = imported - {name}
    done = set()
    while len(done) < len(graph):                  # peel off the modules whose imports are all done
        ready = {name for name, needs in graph.items() if name not in done and needs <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done |= ready
    assert graph["_base"] == set() and "dataset" not in graph["_ops"]


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
    assert sorted(bf.data.__all__) == ["AUTOTUNE", "Dataset", "INFINITE_CARDINALITY", "Options", "TensorSpec",
                                       "TextLineDataset", "UNKNOWN_CARDINALITY"]


def test_epoch_orders_are_exact_permutations_drawn_from_seed_and_epoch():
    """epoch_order(n, seed, e) is NumPy's Philox keyed by seed at counter e, shuffling 0..n-1: the same for the
    same arguments, in any thread, whatever was drawn before."""
    from batchfit.data import arrays
    first = arrays.epoch_order(50, 7, 2)
    reference = np.arange(50)
    np.random.Generator(np.random.Philox(key=[7, 0], counter=[2, 0, 0, 0])).shuffle(reference)
    np.testing.assert_array_equal(first, reference)
    arrays.epoch_order(1000, 3, 0)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda _: arrays.epoch_order(50, 7, 2), range(4)))
    for order in [arrays.epoch_order(50, 7, 2), *again]:
        np.testing.assert_array_equal(order, first)
    assert arrays.epoch_order(50, 8, 2).tolist() != first.tolist()
    assert first.dtype == np.int32 and sorted(first.tolist()) == list(range(50))
    assert arrays.epoch_order(50, 7, 3).tolist() != first.tolist()


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


def test_rows_read_a_block_at_a_time_are_the_rows_read_one_at_a_time():
    """row_elements reads a tuple of arrays 256 rows at a time: the same elements, types and dtypes as
    indexing row by row, across block ends, for in-order, strided and shuffled indices."""
    from batchfit.data._base import row_elements
    x, y = np.arange(600 * 3, dtype=np.float32).reshape(600, 3), np.arange(600)
    rows = bf.data.Dataset.from_tensor_slices((x, y))
    for indices in (range(600), range(5, 600, 7), np.random.default_rng(0).permutation(600)):
        got = list(row_elements(rows, indices))
        assert len(got) == len(indices)
        for (a, b), i in zip(got, indices):
            assert type(a) is np.ndarray and a.dtype == np.float32 and a.tolist() == x[i].tolist()
            assert type(b) is type(y[i]) and b == y[i]


def test_batch_stacks_tuples_of_arrays_and_other_elements_alike():
    """batch() stacks tuples of arrays and NumPy scalars, nested tuples and Python numbers component by
    component, and refuses elements of other shapes with its own error."""
    from batchfit.data._base import _stack
    flat = [(np.full(2, i, np.float32), np.int64(i)) for i in range(3)]
    a, b = _stack(flat)
    assert a.tolist() == [[0, 0], [1, 1], [2, 2]] and a.dtype == np.float32 and b.dtype == np.int64
    nested = _stack([(np.zeros(2), (np.ones(1), 1.0)) for _ in range(3)])
    assert nested[1][0].shape == (3, 1) and nested[1][1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="batch\\(\\) cannot stack elements"):
        _stack([(np.zeros(2), np.int64(0)), (np.zeros(3), np.int64(1))])
