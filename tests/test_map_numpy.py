"""A NumPy-written map function runs batched when that is bit for bit its per-row result, with NumPy's types.

The reference is plain per-row Python: `fn` called on each NumPy row in order, the results
stacked. A NumPy `f` (np.where, np.clip, ufuncs, indexing, ...) is traced on NumPy proxies
(`_numpy_trace`); one that needs values (`float()`, a loop on values), draws random numbers or has a side
effect stays per row and gives exactly what per-row Python gives (an `if` on values: test_map_branches.py).
"""

import jax
import numpy as np
import pytest

from batchfit.data._numpy_trace import NotTraceable, NumpyProxy, numpy_traceable, x64
from batchfit.data.arrays import epoch_order
from batchfit.data.dataset import Dataset
from test_data_map import assert_same_batches, per_row

RNG = np.random.default_rng(0)
X64 = RNG.standard_normal((40, 6))                        # float64 rows, as NumPy makes them
X32 = X64.astype(np.float32)
I32 = (X64 * 10).astype(np.int32)
LABELS = RNG.integers(0, 3, 40)                           # int64
DATA = {"float64": X64, "float32": X32, "int32": I32}


NUMPY_WRITTEN = {   # name: fn (x [6], label []) -> element; JAX cannot trace any of them as they are
    "where": lambda x, y: (np.where(x > 0.5, x, 0.0), y),
    "clip": lambda x, y: (np.clip(x, -1, 1), y),
    "log1p": lambda x, y: (np.log1p(np.abs(x)), y),
    "arithmetic": lambda x, y: (np.maximum((x - 0.5) / 0.29, 0) ** 2, np.add(y, 1)),
    "constant indexing": lambda x, y: (np.sqrt(np.abs(x[1:4])) * 2.0, x[np.array([5, 0])], y),
    "concatenate": lambda x, y: (np.concatenate([x, np.abs(x[:2])]), y),
    "astype": lambda x, y: (np.square(x).astype(np.float32), np.multiply(y, 1).astype(np.int32)),
    "one-hot, stack": lambda x, y: (np.stack([x, -x]), (y == np.arange(3)).astype(np.float32)),
}

# float32 * 2.0 stays float32 (a Python scalar is weak, NEP 50); int32 * 2.0 is float64; float64 stays
EXPECTED_DTYPES = {   # (data dtype, name): the dtypes of the mapped element's leaves, worked out for NumPy 2
    ("float64", "where"): ["float64", "int64"], ("float32", "where"): ["float32", "int64"],
    ("int32", "where"): ["float64", "int64"],
    ("int32", "clip"): ["int32", "int64"], ("float32", "log1p"): ["float32", "int64"],
    ("int32", "log1p"): ["float64", "int64"],
    ("float32", "arithmetic"): ["float32", "int64"], ("int32", "arithmetic"): ["float64", "int64"],
    ("float32", "constant indexing"): ["float32", "float32", "int64"],
    ("int32", "constant indexing"): ["float64", "int32", "int64"],
    ("int32", "astype"): ["float32", "int32"], ("float32", "one-hot, stack"): ["float32", "float32"],
}


@pytest.mark.parametrize("dtype", list(DATA))
@pytest.mark.parametrize("name", list(NUMPY_WRITTEN))
def test_a_numpy_written_map_runs_batched_and_equals_per_row_numpy(name, dtype):
    fn, tensors = NUMPY_WRITTEN[name], (DATA[dtype], LABELS)
    with pytest.raises(Exception):                        # JAX alone cannot trace it: the proxies do
        jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(t.shape[1:], t.dtype) for t in (X32, LABELS)])
    mapped = Dataset.from_tensor_slices(tensors).shuffle(40, seed=3).map(fn)
    assert mapped._plan is not None and mapped._plan.form in ("numpy", "vmap", "eager")
    order = [int(i) for i in epoch_order(40, 3, 0)]
    want = per_row(fn, order, 16, tensors)
    assert_same_batches(list(mapped.batch(16)), want)                 # 16 + 16 + 8: the tail too
    if (dtype, name) in EXPECTED_DTYPES:
        assert [str(leaf.dtype) for leaf in jax.tree.leaves(want[0])] == EXPECTED_DTYPES[dtype, name]
    fused = mapped.fold(tensors)                                      # fit's fused path: all rows at once
    assert_same_batches([fused], per_row(fn, range(40), 40, tensors))


def test_the_elementwise_forms_run_numpy_itself_and_the_indexing_ones_vmap():
    forms = {name: Dataset.from_tensor_slices((X64, LABELS)).map(NUMPY_WRITTEN[name])._plan.form
             for name in ("clip", "log1p", "where", "constant indexing", "concatenate")}
    assert forms == {"clip": "numpy", "log1p": "numpy", "where": "vmap", "constant indexing": "vmap",
                     "concatenate": "vmap"}


def test_numpy_type_promotion_on_the_batched_path():
    cases = {   # fn on an int32 / float32 row -> the dtype NumPy 2 gives, which the batched map must give
        "int32 * 2.0 -> float64": (lambda x: x * 2.0, I32, np.float64),
        "int32 + 1 -> int32": (lambda x: np.add(x, 1), I32, np.int32),
        "float32 * 2.0 -> float32": (lambda x: np.multiply(x, 2.0), X32, np.float32),
        "float32 + np.float64(1) -> float64": (lambda x: np.add(x, np.float64(1)), X32, np.float64),
        "int32 sum -> int64": (lambda x: np.sum(x[:3]), I32, np.int64),
        "uint8 + 1 -> uint8": (lambda x: np.add(x, 1), (I32 % 200).astype(np.uint8), np.uint8),
    }
    for name, (fn, rows, dtype) in cases.items():
        mapped = Dataset.from_tensor_slices(rows).map(fn)
        assert mapped._plan is not None, name
        (batch,) = list(mapped.batch(40))
        assert batch.dtype == dtype, name
        assert batch.tobytes() == np.stack([fn(r) for r in rows]).tobytes(), name


NOT_TRACEABLE = {   # name: fn; each must run per row, with what plain per-row Python gives
    "value-dependent while": lambda x, y: (_halve_while_large(np.abs(x)), y),
    "float() of a value": lambda x, y: (np.sqrt(np.abs(x)) * float(x[0]), y),
    "list comprehension over values": lambda x, y: (np.array([v if v > 0 else 0.0 for v in x]), y),
    "an in-place write": lambda x, y: (_write_first(np.abs(x)), y),
    "a NumPy function jnp lacks": lambda x, y: (np.real_if_close(np.where(x > 0, x, 0.0)), y),
}


def _halve_while_large(x):
    while x.sum() > 1:               # a loop on values: more decisions than a trace follows (test_map_branches)
        x = x / 2
    return x


def _write_first(x):
    x[0] = 1.0                        # NumPy writes in place; a trace cannot
    return x


@pytest.mark.parametrize("name", list(NOT_TRACEABLE))
def test_a_numpy_map_that_needs_values_runs_per_row(name):
    fn = NOT_TRACEABLE[name]
    mapped = Dataset.from_tensor_slices((X64, LABELS)).map(fn)
    assert mapped._plan is None
    assert_same_batches(list(mapped.batch(16)), per_row(fn, range(40), 16, (X64, LABELS)))


def test_random_numbers_and_a_list_side_effect_keep_a_numpy_map_per_row():
    rng = np.random.default_rng(7)
    noisy = Dataset.from_tensor_slices(X64).map(lambda x: np.where(x > 0, x, 0.0) + rng.normal(size=x.shape))
    assert noisy._plan is None                            # the traces drew numbers: a side effect, put back
    fresh = np.random.default_rng(7)
    assert_same_batches(list(noisy.batch(16)),
                        per_row(lambda x: np.where(x > 0, x, 0.0) + fresh.normal(size=x.shape), range(40), 16, (X64,)))
    unseeded = Dataset.from_tensor_slices(X64).map(lambda x: x + np.random.default_rng().normal(size=x.shape))
    assert unseeded._plan is None                         # two traces, two different constants
    (batch,) = list(unseeded.batch(40))
    assert batch.shape == (40, 6) and len(np.unique(batch - X64)) > 200   # fresh noise in every row
    state = np.random.get_state()
    global_noise = Dataset.from_tensor_slices(X64).map(lambda x: np.clip(x, 0, 1) + np.random.normal(size=6))
    assert global_noise._plan is None and np.random.get_state()[1].tobytes() == state[1].tobytes()
    seen = []
    appends = Dataset.from_tensor_slices(X64).map(lambda x: seen.append(1) or np.clip(x, -1, 1))
    assert appends._plan is None and seen == []           # what the traces appended is undone
    list(appends.batch(8))
    assert len(seen) == 40                                # once per row


def test_the_proxy_runs_each_numpy_call_as_its_jax_numpy_twin():
    def fn(x):
        return (np.linalg.norm(x), np.add.reduce(x), x.T, x.reshape(2, 3).sum(axis=1), 2 ** x, len(x), x.shape)

    with x64():
        out = jax.tree.map(np.asarray, jax.jit(numpy_traceable(fn))(np.arange(6.0)))
    assert float(out[0]) == pytest.approx(np.sqrt(55.0))          # 0 + 1 + 4 + 9 + 16 + 25
    assert float(out[1]) == 15.0 and out[3].tolist() == [3.0, 12.0] and out[4].tolist() == [1, 2, 4, 8, 16, 32]
    assert out[2].dtype == np.float64 and out[4].dtype == np.float64 and out[5:] == (6, (6,))
    proxy = NumpyProxy(np.zeros(3))
    for mistake, message in ((lambda: float(proxy), "float()"), (lambda: bool(proxy > 0), "bool()"),
                             (lambda: np.asarray(proxy), "np.asarray"), (lambda: proxy.sort(), "in place"),
                             (lambda: np.add(proxy, 1, out=np.zeros(3)), "out="),
                             (lambda: np.busday_count(proxy, proxy), "jax.numpy has no numpy.busday_count")):
        with x64(), pytest.raises(NotTraceable, match=message.replace("(", r"\(").replace(")", r"\)")):
            mistake()


def test_a_numpy_map_on_a_prefetch_thread_and_in_fit_gives_the_per_row_results():
    """The vmap form switches JAX to 64 bits per call, also on the prefetch thread; fit trains on the same
    rows as on the per-row results given as arrays."""
    import batchfit as bf
    fn = lambda x, y: (np.where(x > 0.5, x, 0.0), (y * 2.0).astype(np.float32)[None])   # noqa: E731; float64 x
    rows = Dataset.from_tensor_slices((X64, LABELS))
    assert rows.map(fn)._plan.form == "vmap"
    assert_same_batches(list(rows.map(fn).batch(8).prefetch(2)), per_row(fn, range(40), 8, (X64, LABELS)))
    fx, fy = (np.concatenate(parts) for parts in zip(*per_row(fn, range(40), 8, (X64, LABELS))))
    weights = []
    for fit in (lambda m: m.fit(fx, fy, batch_size=8, epochs=2, shuffle=False, verbose=0),
                lambda m: m.fit(rows.map(fn).batch(8), epochs=2, verbose=0)):
        model = bf.Sequential([bf.layers.Dense(3, activation="relu", input_shape=(6,)), bf.layers.Dense(1)], seed=0)
        model.compile(optimizer="adam", loss="mse")
        losses = fit(model).history["loss"]
        weights.append(model.get_weights() + [np.array(losses)])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
