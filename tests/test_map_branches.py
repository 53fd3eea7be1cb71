"""A NumPy-written map with `if`s on its row's values runs batched, each row on the path its values choose.

tf.data's AutoGraph turns such an `if` into a conditional; batchfit traces every path through the
decisions (_numpy_trace._all_paths) and joins them with `jnp.where`. The reference is plain per-row
Python: `fn` called on each NumPy row in order, the results stacked, compared in bits, dtypes and
shapes. What cannot be joined (a loop on values, paths of other shapes or dtypes, too many paths)
stays per row and gives exactly what per-row Python gives.
"""

import jax
import numpy as np
import pytest

import batchfit as bf
from batchfit.data import _numpy_trace
from batchfit.data._numpy_trace import NotTraceable, numpy_traceable, x64
from batchfit.data.dataset import Dataset
from test_data_map import assert_same_batches, per_row

RNG = np.random.default_rng(1)
X64 = RNG.standard_normal((40, 6))
X64[3, 0] = np.nan                                          # NumPy's truth of NaN: True
DATA = {"float64": X64, "float32": X64.astype(np.float32)}
LABELS = RNG.integers(0, 3, 40)
FINITE = ~np.isnan(X64).any(axis=1)


def cap_outliers(x, y):
    if x.max() > 0.9:
        x = np.minimum(x, 0.9)
    return x, y


def three_ways(x, y):
    if x[0] > 1:
        return x * 2.0, y
    elif x[0] < -1:
        return -x, y + 10
    return np.abs(x), y


def nested(x, y):
    if x[0] > 0:
        if x[1] > 0:
            x = x + 1
        else:
            x = x - 1
    return np.where(x > 0.5, x, 0.0), y


def early_return(x, y):
    if y == 2:
        return np.zeros_like(x), y
    return x / (1 + np.abs(x)), y


BRANCHING = {   # name: fn (x [6], label []) -> element
    "if on a reduction": cap_outliers,
    "if / elif / else": three_ways,
    "nested ifs": nested,
    "early return on the label": early_return,
    "and, or, not": lambda x, y: (x + 1 if (x[0] > 0 and x[1] < 0) or not x[2] < 1 else x - 1, y),
    "min() of two values": lambda x, y: (x * min(x[0], x[1]), y),
    "truth of a value, NaN included": lambda x, y: (-x if x[0] else x, y),
    "ternary on a label, one-hot": lambda x, y: (x, (np.arange(3) == y).astype(np.float32) if y > 0 else
                                                 np.zeros(3, np.float32)),
}


@pytest.mark.parametrize("dtype", list(DATA))
@pytest.mark.parametrize("name", list(BRANCHING))
def test_a_map_with_ifs_on_values_runs_batched_and_equals_per_row_numpy(name, dtype):
    fn, tensors = BRANCHING[name], (DATA[dtype], LABELS)
    with np.errstate(invalid="ignore"):
        want = per_row(fn, range(40), 16, tensors)
    mapped = Dataset.from_tensor_slices(tensors).map(fn)
    assert mapped._plan is not None and mapped._plan.form in ("vmap", "eager")
    assert_same_batches(list(mapped.batch(16)), want)                      # 16 + 16 + 8
    assert_same_batches([mapped.fold(tensors)], per_row(fn, range(40), 40, tensors))


def test_every_path_of_the_rows_is_taken_in_the_test_data():
    """The data above exercises every path of the branching maps (else a batched path would go untested)."""
    firsts = X64[:, 0]
    assert (firsts > 1).any() and (firsts < -1).any() and (np.abs(firsts) <= 1).any() and np.isnan(firsts).any()
    assert ((X64[:, 0] > 0) & (X64[:, 1] > 0)).any() and ((X64[:, 0] > 0) & (X64[:, 1] <= 0)).any()
    assert (X64.max(axis=1) > 0.9).any() and (X64.max(axis=1) <= 0.9).any() and set(LABELS) == {0, 1, 2}


def test_one_trace_per_path_joined_by_where():
    """cap_outliers: two paths, one `select_n` choosing between them; the label passes through untouched."""
    jaxpr = jax.make_jaxpr(numpy_traceable(cap_outliers))(jax.ShapeDtypeStruct((6,), np.float32),
                                                           jax.ShapeDtypeStruct((), np.int64))
    text = str(jaxpr)
    assert text.count("select_n") == 1 and text.count("reduce_max") == 2     # the condition, once per path
    assert jaxpr.jaxpr.outvars[1] is jaxpr.jaxpr.invars[1]


def _halve_until_small(x, y):
    s = np.abs(x).sum()
    while s > 1:                                   # a loop on values: more decisions than MAX_DECISIONS
        s = s / 2
    return x * s, y


def _four_ifs(x, y):
    for i in range(4):                             # 2**4 = 16 paths: MAX_PATHS
        if x[i] > 0:
            x = x + i
    return x, y


NOT_JOINED = {   # name: fn; each stays per row, with what per-row Python gives
    "a while loop on values": _halve_until_small,
    "paths of different dtypes": lambda x, y: (x.astype(np.float32) if x[0] > 0 else x, y),
    "int rows, a float path": lambda x, y: cap_outliers((x * 3).astype(np.int32), y),    # np.minimum(int, 0.9)
    "five ifs, 32 paths": lambda x, y: _four_ifs(x + 1 if x[4] > 0 else x, y),
}


@pytest.mark.parametrize("name", list(NOT_JOINED))
def test_what_cannot_be_joined_stays_per_row(name):
    fn = NOT_JOINED[name]
    tensors = (X64[FINITE], LABELS[FINITE])
    mapped = Dataset.from_tensor_slices(tensors).map(fn)
    assert mapped._plan is None
    assert_same_batches(list(mapped.batch(16)), per_row(fn, range(len(tensors[0])), 16, tensors))


def test_sixteen_paths_are_joined_and_more_are_refused():
    assert _numpy_trace.MAX_PATHS == 16
    spec = jax.ShapeDtypeStruct((6,), np.float64)
    with x64():
        jax.make_jaxpr(numpy_traceable(_four_ifs))(spec, spec)
        with pytest.raises(NotTraceable, match="more than 16 paths"):
            jax.make_jaxpr(numpy_traceable(NOT_JOINED["five ifs, 32 paths"]))(spec, spec)
        with pytest.raises(NotTraceable, match="more than 8 decisions"):
            jax.make_jaxpr(numpy_traceable(_halve_until_small))(spec, spec)


def test_paths_of_other_shapes_stay_per_row_and_batch_as_per_row_rows_do():
    fn = lambda x, y: (x[:2] if x[0] > 0 else x, y)             # noqa: E731
    rows = Dataset.from_tensor_slices((X64[FINITE], LABELS[FINITE])).map(fn)
    assert rows._plan is None
    assert [element[0].shape for element in rows.take(4)] == [(2,) if r[0] > 0 else (6,) for r in X64[FINITE][:4]]


def test_an_ambiguous_truth_value_raises_numpys_error_per_row():
    fn = lambda x, y: (x if x > 0 else -x, y)                  # noqa: E731 - bool() of a whole row
    mapped = Dataset.from_tensor_slices((X64, LABELS)).map(fn)
    assert mapped._plan is None
    with pytest.raises(ValueError, match="truth value of an array"):
        list(mapped.batch(8))


def test_fit_on_a_branching_map_trains_on_the_per_row_results():
    """fit's fused path maps all rows once through the joined paths: the same History and weights as fit
    on the per-row results given as arrays."""
    fn = lambda x, y: cap_outliers(x, (y * 0.5).astype(np.float32)[None])     # noqa: E731
    tensors = (DATA["float32"][FINITE], LABELS[FINITE])
    fx, fy = (np.concatenate(parts) for parts in zip(*per_row(fn, range(len(tensors[0])), 8, tensors)))
    runs = []
    for fit in (lambda m: m.fit(fx, fy, batch_size=8, epochs=2, shuffle=False, verbose=0),
                lambda m: m.fit(Dataset.from_tensor_slices(tensors).map(fn).batch(8), epochs=2, verbose=0)):
        model = bf.Sequential([bf.layers.Dense(3, activation="relu", input_shape=(6,)), bf.layers.Dense(1)], seed=0)
        model.compile(optimizer="adam", loss="mse")
        history = fit(model).history["loss"]
        runs.append(model.get_weights() + [np.array(history)])
    assert not np.isnan(runs[0][-1]).any()
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
