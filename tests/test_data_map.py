"""Dataset.map on rows: traced once and run on whole batches when that is exact, per row otherwise.

The reference everywhere is per-row application: `fn` called on each row in order and the
results stacked (what tf.data's map followed by batch gives). Batched results must equal it
bit for bit, with the same dtypes, shapes and structure.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf
from batchfit.data import _map
from batchfit.data.arrays import epoch_order
from batchfit.data.dataset import Dataset
from batchfit.data._workers import tuple_if_list

X = np.random.default_rng(0).standard_normal((40, 5))          # float64 rows, as NumPy makes them
LABELS = np.random.default_rng(1).integers(0, 3, 40)            # int64
WEIGHTS = np.linspace(0.5, 1.5, 5)


def per_row(fn, order, batch_size, tensors=(X, LABELS)):
    """`fn` on each row of `tensors` in `order`, stacked `batch_size` at a time: the reference."""
    outputs = [tuple_if_list(fn(*[t[i] for t in tensors])) for i in order]
    return [jax.tree.map(lambda *parts: np.stack(parts), *outputs[s:s + batch_size])
            for s in range(0, len(outputs), batch_size)]


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert jax.tree.structure(g) == jax.tree.structure(w)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            assert type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()


X32, LABELS32 = X.astype(np.float32), LABELS.astype(np.int32)     # as after a cast: JAX computes the same

TRACEABLE = {   # name: (fn, rows, the batched form it gets: None when per row is the only exact form)
    "affine": (lambda x, y: (x * 2.0 + 1.0, y), (X, LABELS), "numpy"),
    "cast": (lambda x, y: (x.astype(np.float32), y.astype(np.int32)), (X, LABELS), "numpy"),
    "weights": (lambda x, y: (x * WEIGHTS, y), (X, LABELS), "numpy"),
    "jnp tanh": (lambda x, y: (jnp.tanh(x), y), (X, LABELS), "numpy"),
    "list is a tuple": (lambda x, y: [x, y], (X, LABELS), "numpy"),
    "dict": (lambda x, y: {"features": x, "label": y}, (X, LABELS), "numpy"),
    "int outputs": (lambda x, y: (jnp.argmax(x, axis=-1), (y == 2).astype(np.int8)), (X, LABELS), "numpy"),
    "argmax of the row": (lambda x, y: (jnp.argmax(x), y), (X32, LABELS32), "vmap"),
    "one-hot": (lambda x, y: (x, (y == jnp.arange(3)).astype(jnp.float32)), (X32, LABELS32), "vmap"),
    "fixed-key noise": (lambda x, y: (x + jax.random.normal(jax.random.key(0), x.shape), y), (X32, LABELS32),
                        "vmap"),
    "jnp row norm": (lambda x, y: ((x - jnp.mean(x)) / jnp.std(x), y), (X32, LABELS32), "eager"),
    "numpy row norm, float64": (lambda x, y: ((x - x.mean()) / x.std(), y), (X, LABELS), None),
    "softmax": (lambda x, y: (jax.nn.softmax(x), y), (X32, LABELS32), None),
    # exact in 64 bits: traced again on NumPy proxies (_numpy_trace), which compute as NumPy does
    "constant output": (lambda x, y: (x, 1.0), (X, LABELS), "vmap"),
    "branch on the shape, float64": (lambda x, y: (x * 2.0 if x.ndim == 1 else x, y), (X, LABELS), "vmap"),
}


@pytest.mark.parametrize("name", list(TRACEABLE))
def test_a_traceable_map_runs_batched_and_equals_per_row_application(name):
    fn, tensors, form = TRACEABLE[name]
    mapped = Dataset.from_tensor_slices(tensors).shuffle(40, seed=3).map(fn)
    assert (mapped._plan and mapped._plan.form) == form
    order = [int(i) for i in epoch_order(40, 3, 0)]                        # the shuffle's first epoch
    assert_same_batches(list(mapped.batch(16)), per_row(fn, order, 16, tensors))   # 16 + 16 + 8: the tail too
    elements = list(mapped)[:3]                                            # element by element: per row
    assert_same_batches([jax.tree.map(lambda v: np.stack([v]), e) for e in elements],
                        per_row(fn, order[:3], 1, tensors))


NOT_BATCHED = {   # name: fn; each must run per row, with the per-row results
    "branch on a value, paths of other dtypes": lambda x, y: (x if x[0] > 0 else x.astype(np.float32), y),
    "np.asarray of the row": lambda x, y: (np.asarray(x) * 2, y),
    "python float": lambda x, y: (x, float(y)),
}


@pytest.mark.parametrize("name", list(NOT_BATCHED))
def test_a_map_that_cannot_run_batched_runs_per_row(name):
    fn = NOT_BATCHED[name]
    mapped = Dataset.from_tensor_slices((X, LABELS)).map(fn)
    assert mapped._plan is None
    assert_same_batches(list(mapped.batch(16)), per_row(fn, range(40), 16))


def test_a_map_that_branches_on_the_shape_is_never_called_on_a_whole_batch():
    fn = TRACEABLE["branch on the shape, float64"][0]      # on a batch it would return x unchanged
    mapped = Dataset.from_tensor_slices((X32, LABELS32)).map(fn)
    assert mapped._plan.form == "vmap"                     # float32 rows: JAX computes as NumPy does
    assert_same_batches(list(mapped.batch(16)), per_row(fn, range(40), 16, (X32, LABELS32)))


def test_numpy_random_numbers_and_counters_are_side_effects_that_keep_a_map_per_row():
    noisy = Dataset.from_tensor_slices((X, LABELS)).map(lambda x, y: (x + np.random.normal(size=x.shape), y))
    assert noisy._plan is None                          # two traces drew different constants
    np.random.seed(5)
    got = list(noisy.batch(16))
    np.random.seed(5)
    assert_same_batches(got, per_row(lambda x, y: (x + np.random.normal(size=x.shape), y), range(40), 16))
    calls, counter = [], itertools.count()
    appends = Dataset.from_tensor_slices(X).map(lambda x: calls.append(1) or x * 2)
    counts = Dataset.from_tensor_slices(X).map(lambda x: x + next(counter))
    assert appends._plan is None and counts._plan is None and calls == []     # what the trace appended is undone
    list(appends.batch(8))
    assert len(calls) == 40                             # once per row, as per-row application does


def test_a_method_that_changes_its_object_runs_per_row():
    class Scaler:
        def __init__(self):
            self.seen = 0

        def __call__(self, x):
            self.seen = self.seen + 1
            return x * 3.0

    scaler = Scaler()
    mapped = Dataset.from_tensor_slices(X).map(scaler)
    assert mapped._plan is None and scaler.seen == 0          # the trace's change is undone
    assert_same_batches(list(mapped.batch(10)), [np.asarray(X[s:s + 10] * 3.0) for s in range(0, 40, 10)])
    assert scaler.seen == 40


def test_shuffle_take_and_repeat_after_a_batched_map_act_on_the_same_rows():
    fn = TRACEABLE["affine"][0]
    base = Dataset.from_tensor_slices((X, LABELS))
    after = base.map(fn).shuffle(7, seed=2).take(30).repeat(2).batch(9)
    before = base.shuffle(7, seed=2).take(30).repeat(2).map(fn).batch(9)
    assert_same_batches(list(after), list(before))          # a map adds nothing to the shuffle's order
    twice = base.map(fn).map(lambda x, y: (x - 1.0, y + 1))
    assert twice._plan is not None
    assert_same_batches(list(twice.batch(16)), per_row(lambda x, y: (x * 2.0 + 1.0 - 1.0, y + 1), range(40), 16))


def test_a_map_over_memmap_rows_reads_them_batched(tmp_path):
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    mapped = Dataset.from_tensor_slices((x, LABELS)).shuffle(40, seed=0).map(lambda a, b: (a * 2.0, b))
    order = [int(i) for i in epoch_order(40, 0, 0)]
    assert_same_batches(list(mapped.batch(16)), per_row(lambda a, b: (a * 2.0, b), order, 16, (x, LABELS)))


def test_fold_maps_every_row_at_once_within_its_size_limit(monkeypatch):
    fn = TRACEABLE["jnp row norm"][0]
    mapped = Dataset.from_tensor_slices((X32, LABELS32)).map(fn)
    assert_same_batches([mapped.fold((X32, LABELS32))], per_row(fn, range(40), 40, (X32, LABELS32)))
    assert Dataset.from_tensor_slices((X, LABELS)).map(NOT_BATCHED["python float"]).fold((X, LABELS)) is None
    monkeypatch.setattr(_map, "FOLD_MAX_BYTES", 40 * 5 * 4 + 40 * 4 - 1)   # one byte less than the mapped rows
    assert mapped.fold((X32, LABELS32)) is None


def test_a_list_result_is_a_tuple_and_a_dict_stays_on_every_path():
    from_generator = Dataset.from_generator(lambda: iter([np.ones(2), np.zeros(2)]))
    for ds in (from_generator, Dataset.from_tensor_slices(np.ones((2, 2)))):
        for workers in (None, 2):
            assert isinstance(next(iter(ds.map(lambda v: [v, v + 1], num_parallel_calls=workers))), tuple)
            assert isinstance(next(iter(ds.map(lambda v: {"v": v}, num_parallel_calls=workers))), dict)
    assert isinstance(next(iter(Dataset.from_tensor_slices(np.ones((2, 2))).map(lambda v: [v, v]).batch(2))), tuple)


def test_a_python_map_on_threads_keeps_the_order_of_a_serial_one():
    fn = NOT_BATCHED["np.asarray of the row"]
    serial = list(Dataset.from_tensor_slices((X, LABELS)).map(fn).batch(16))
    parallel = Dataset.from_tensor_slices((X, LABELS)).map(fn, num_parallel_calls=bf.data.AUTOTUNE).batch(16)
    assert_same_batches(list(parallel), serial)


def model():
    model = bf.Sequential([bf.layers.Dense(3, activation="relu", input_shape=(5,)), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    return model


def test_the_model_trains_identically_with_the_map_per_row_or_batched():
    """fit on ds.map(fn).batch(8) (batched map), on ds.batch(8).map(fn) and on the per-row results as arrays."""
    fn = lambda x, y: (jnp.tanh(x * WEIGHTS), (y == 1).astype(np.float32)[..., None])   # noqa: E731
    rows = Dataset.from_tensor_slices((X, LABELS))
    assert rows.map(fn)._plan is not None
    fx, fy = (np.concatenate(parts) for parts in zip(*per_row(fn, range(40), 8)))
    runs = {"per-row arrays": lambda m: m.fit(fx, fy, batch_size=8, epochs=2, shuffle=False, verbose=0),
            "map then batch": lambda m: m.fit(rows.map(fn).batch(8), epochs=2, verbose=0),
            "batch then map": lambda m: m.fit(rows.batch(8).map(fn), epochs=2, verbose=0)}
    weights = {}
    for name, fit in runs.items():
        m = model()
        history = fit(m)
        weights[name] = m.get_weights() + [np.array(history.history["loss"])]
    for name in runs:
        for a, b in zip(weights[name], weights["per-row arrays"]):
            np.testing.assert_array_equal(a, b)


def test_a_parallel_map_groups_fast_elements_and_keeps_slow_ones_apart():
    import time

    def slow(v):                       # 3 ms: longer than a task should take, so one element per task
        time.sleep(0.003)
        return v * 2

    for fn, n in ((slow, 12), (lambda v: v * 2, 500)):
        ds = Dataset.from_tensor_slices(np.arange(n)).map(fn, num_parallel_calls=3)
        assert [int(v) for v in ds] == list(range(0, 2 * n, 2))


def test_fit_maps_all_rows_at_once_on_its_fused_device_path():
    from batchfit.data._ops import fused_plan
    from batchfit.data.source import ArraySource, as_source
    fn = TRACEABLE["weights"][0]
    traced = Dataset.from_tensor_slices((X, LABELS.astype(np.float32))).shuffle(40, seed=1).map(fn).batch(8)
    assert isinstance(as_source(traced), ArraySource)
    plan = fused_plan(traced)
    assert_same_batches([tuple(plan.tensors)], per_row(fn, range(40), 40, (X, LABELS.astype(np.float32))))
    python = Dataset.from_tensor_slices((X, LABELS)).map(NOT_BATCHED["np.asarray of the row"]).batch(8)
    assert fused_plan(python) is None and not isinstance(as_source(python), ArraySource)


def test_dict_rows_string_rows_and_a_filter_after_a_batched_map():
    fn = lambda d: (d["x"] * 2.0, d["label"])                                      # noqa: E731
    mapped = Dataset.from_tensor_slices({"x": X, "label": LABELS}).map(fn)
    assert mapped._plan.form == "numpy"
    want = per_row(lambda x, label: fn({"x": x, "label": label}), range(40), 16)
    assert_same_batches(list(mapped.batch(16)), want)
    words = Dataset.from_tensor_slices(np.array(["a", "bb", "ccc"])).map(lambda s: s + "!")
    assert words._plan is None and [str(w) for w in words] == ["a!", "bb!", "ccc!"]
    kept = Dataset.from_tensor_slices(X).map(lambda x: x * 2.0).filter(lambda x: x[0] > 0)
    assert [v.tolist() for v in kept] == [(2.0 * r).tolist() for r in X if r[0] > 0]

