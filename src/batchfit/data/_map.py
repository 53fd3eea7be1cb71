"""Per-row maps at batched speed: `dataset.map(f).batch(n)` runs `f` once per batch, not once per row.

When `map()` is called on rows of arrays (from_tensor_slices, also shuffled, taken, repeated
or mapped before), `f` is traced with JAX on one row's shapes and dtypes, as tf.data traces
its map functions. If it traces, is pure, and gives bit for bit the same result on a whole
batch as on each row stacked, the map becomes rows again (`MappedRows`): `batch` gathers a
block of rows and maps it in one call, and fit's fused device path can map all rows once
(`fold`). A NumPy-written `f` (`np.where`, `np.clip`, ufuncs, indexing: JAX cannot trace
NumPy calls) is traced again on NumPy proxies (`_numpy_trace`), which run each NumPy call as
its `jax.numpy` twin in 64 bits, NumPy's types, and follow every path of an `if` on the row's
values (each row then takes its own); the same checks then apply.

`f` runs on a whole batch in one of three forms, the first that matches the per-row results:

* NumPy: `f` itself, called on the `[B, ...]` arrays, when tracing `f` on a batch gives the
  same computation (jaxpr) as `jax.vmap(f)` does: element-wise arithmetic, casts, clips.
* vmap: `jax.jit(jax.vmap(f))`, for maps that reduce or index along the row's own axes (for a
  NumPy-written `f`: its proxied form under `jax.enable_x64`).
* eager: `jax.vmap(f)` op by op, as the per-row calls run `jnp` functions (XLA fuses a jitted
  reduction differently, so jit(vmap(f)) of a row norm differs in the last bit).

Anything else maps one row at a time, exactly as before: a trace that fails (a loop on values,
paths of other shapes, `float()` or `np.asarray` of the row, a Python scalar), a trace that differs the second
time (NumPy random numbers, a counter), a side effect the trace can see (a list, dict or set
in its closure or globals that grows, an attribute of `self` that changes), or a batched
result that differs on the probe rows (the data's first rows and made-up ones) in any bit,
dtype or shape; what tracing changed in those containers is put back. Other side effects (a
print) also happen while `map()` traces and probes `f`, as in tf.data, which traces it once.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from typing import Callable, NamedTuple

import jax
import numpy as np

from batchfit.data._base import _call, _stack
from batchfit.data._numpy_trace import numpy_traceable, x64
from batchfit.data._workers import tuple_if_list
from batchfit.data.arrays import read_rows, release_pages

__all__ = ["BatchedMap", "MappedRows", "batched_map", "fold", "FOLD_MAX_BYTES"]

FOLD_MAX_BYTES = 1 << 30          # fit's fused path maps all rows at once up to this many output bytes
_PROBE_SIZES = (7, 11, 13)        # rows in a probe batch: one that is no axis length of the rows
_RELEASE_BYTES = 64 << 20         # memmap bytes read between two releases of its pages
_INT64_PARAM = re.compile(r"np\.int64\((-?\d+)\)")
_RANDOM = (np.random.Generator, np.random.RandomState)


class BatchedMap(NamedTuple):
    """How a map runs on `[B, ...]` blocks of rows (`apply`), and what one mapped row is (`treedef`, `specs`)."""

    apply: Callable            # list of input leaves [B, ...] -> the mapped batch, NumPy leaves [B, ...]
    form: str                  # "numpy" (f on the batch), "vmap" (jit(vmap(f))) or "eager" (vmap(f))
    treedef: object            # the structure of one mapped element
    specs: tuple               # (shape, dtype) of each output leaf for one row


def batched_map(fn: Callable, rows) -> BatchedMap | None:
    """The batched form of `fn` over `rows` (a rows object: `_leaves` [N, ...], `_treedef`), or None: per row.

    `fn` is traced as it is; when JAX cannot trace it, or none of its forms is exact, it is traced again
    with NumPy proxies (_numpy_trace): NumPy calls run as `jnp` calls, in 64 bits as NumPy computes."""
    leaves, treedef = list(rows._leaves), rows._treedef
    if leaves[0].shape[0] == 0:
        return None
    call = _caller(fn, treedef, len(leaves))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # float64 rows traced as float32 when x64 is off; probes
        objects = _visible(fn)
        before = _snapshot(objects)
        for traced, context in ((call, contextlib.nullcontext), (numpy_traceable(call), x64)):
            plan = _batched_form(call, traced, context, leaves, (objects, before))
            if plan != "fails":
                _restore(objects, before)     # only what a trace or a probe changed: nothing, if pure
                return plan if isinstance(plan, BatchedMap) else None
            _restore(objects, before)
    return None


def _batched_form(call, traced, context, leaves, seen) -> BatchedMap | str:
    """The first exact form of `call` with `traced` (its traceable version, run in `context`) as the jax
    function; "impure" when the traces show a side effect, "fails" when it does not trace or no form fits."""
    size = next((s for s in _PROBE_SIZES if s not in {d for leaf in leaves for d in leaf.shape[1:]}), 17)
    row_specs = [jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype) for leaf in leaves]
    batch_specs = [jax.ShapeDtypeStruct((size, *leaf.shape[1:]), leaf.dtype) for leaf in leaves]
    with context():
        status = _purity(traced, row_specs, *seen)
        if status != "pure":
            return status
        same = _same_on_a_batch(traced, batch_specs)
    forms = [("numpy", _numpy_form(call))] if same else []
    forms += [("vmap", _vmap_form(traced, jax.jit, context)), ("eager", _vmap_form(traced, _eager, context))]
    probes = _probes(leaves, row_specs, size)
    for form, apply in forms:          # made-up rows may warn (a log of -1): not the user's data
        result = _matches(call, apply, probes)
        if result is not None:
            out_leaves, out_treedef = jax.tree.flatten(result)
            return BatchedMap(apply, form, out_treedef, tuple((a.shape[1:], a.dtype) for a in out_leaves))
    return "fails"


def _purity(traced, row_specs, objects, before) -> str:
    """"pure" when `traced` traces twice to the same computation and changes no visible container,
    "impure" when it traces but is not pure, "fails" when it does not trace."""
    try:
        first, second = (jax.make_jaxpr(traced)(*row_specs) for _ in range(2))
    except Exception:                        # anything that does not trace runs per row
        return "fails"
    return "pure" if _same_jaxpr(first, second) and not _changed(objects, before) else "impure"


def _eager(function):
    return function


def _caller(fn, treedef, num_leaves: int) -> Callable:
    """`call(*leaves)`: `fn` on the element made of `leaves` (a tuple spread over the arguments), its result
    a tuple if it is a list. Plain tuples and single arrays skip the tree functions: this runs per batch."""
    if treedef == jax.tree.structure((0,) * num_leaves):
        return lambda *leaves: tuple_if_list(fn(*leaves))
    if treedef == jax.tree.structure(0):
        return lambda leaf: tuple_if_list(fn(leaf))
    return lambda *leaves: tuple_if_list(_call(fn, jax.tree.unflatten(treedef, list(leaves))))


def _numpy_leaves(tree) -> list | tuple:
    """The leaves of a mapped batch as NumPy arrays (a tuple of arrays as it is)."""
    if type(tree) is tuple and all(type(leaf) is np.ndarray for leaf in tree):
        return tree
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _same_on_a_batch(call, batch_specs) -> bool:
    """Whether `call` traced on a whole batch is the computation that `jax.vmap(call)` is."""
    try:
        return _same_jaxpr(jax.make_jaxpr(call)(*batch_specs), jax.make_jaxpr(jax.vmap(call))(*batch_specs))
    except Exception:                            # e.g. a shape that only fits one row
        return False


def _numpy_form(call):
    def apply(leaves):
        tree = call(*leaves)
        return tree if type(tree) is tuple and all(type(leaf) is np.ndarray for leaf in tree) else \
            jax.tree.map(np.asarray, tree)
    return apply


def _vmap_form(call, compile, context):
    mapped = compile(jax.vmap(call))

    def apply(leaves):
        with context():                    # per call: JAX's x64 switch is per thread
            return jax.tree.map(np.asarray, mapped(*leaves))
    return apply


def _probes(leaves, row_specs, size) -> list:
    """Blocks of rows to compare the forms on: the first rows of the data, and random rows of its specs."""
    real = [np.asarray(leaf[:size]) for leaf in leaves]
    rng = np.random.default_rng(0)
    made = []
    for spec in row_specs:
        dtype, shape = np.dtype(spec.dtype), (size, *spec.shape)
        if dtype.kind == "f":
            made.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind in "iub":
            made.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            return [real]
    return [real, made]


def _matches(call, apply, probes):
    """`apply` of the first probe when it equals the stacked per-row results on every probe (the same
    structure, dtypes, shapes and bits), else None."""
    found = None
    for index, probe in enumerate(probes):
        try:
            expected = _stack([call(*row) for row in zip(*probe)])
        except Exception:
            if index == 0:
                return None
            continue                              # made-up rows this map cannot take: the data's rows decide
        want, want_tree = jax.tree.flatten(expected)
        try:
            result = apply(probe)
        except Exception:
            return None
        got, got_tree = jax.tree.flatten(result)
        if got_tree != want_tree or not all(_identical(a, np.asarray(b)) for a, b in zip(got, want)):
            return None
        found = result if found is None else found
    return found


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_jaxpr(a, b) -> bool:
    """Whether two traces are the same computation on the same constants."""
    if _INT64_PARAM.sub(r"\1", str(a.jaxpr)) != _INT64_PARAM.sub(r"\1", str(b.jaxpr)):
        return False
    return len(a.consts) == len(b.consts) and all(
        _identical(np.asarray(x), np.asarray(y)) for x, y in zip(a.consts, b.consts))


def _visible(fn) -> list:
    """The containers a side effect of `fn` could change that we can see: the lists, dicts, sets, deques and
    NumPy random generators in its closure and in the globals it names, the attributes of its `self` (or of
    `fn` itself, an object), and NumPy's global random state."""
    objects = [cell.cell_contents for cell in getattr(fn, "__closure__", None) or () if has_contents(cell)]
    code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    objects += [names[name] for name in (code.co_names if code else ()) if name in names]
    owner = getattr(fn, "__self__", None) if hasattr(fn, "__code__") or hasattr(fn, "__func__") else fn
    if owner is not None and hasattr(owner, "__dict__"):
        objects.append(vars(owner))
    objects.append(np.random.mtrand._rand)           # the state behind np.random.normal & co.
    return [o for o in objects if isinstance(o, (list, dict, set, *_RANDOM)) or type(o).__name__ == "deque"]


def has_contents(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:                # a cell not filled yet
        return False
    return True


def _snapshot(objects: list) -> list:
    return [_random_state(o) if isinstance(o, _RANDOM) else dict(o) if isinstance(o, dict) else
            set(o) if isinstance(o, set) else list(o) for o in objects]


def _random_state(generator) -> dict:
    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    return generator.get_state(legacy=False)


def _same_state(a, b) -> bool:
    """Whether two random states (dicts of ints, strings and arrays) are equal."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _changed(objects: list, snapshots: list) -> bool:
    """Whether any container holds other items (by identity) than in its snapshot."""
    for o, before in zip(objects, snapshots):
        if isinstance(o, _RANDOM):
            if not _same_state(_random_state(o), before):
                return True
            continue
        if len(o) != len(before):
            return True
        if isinstance(o, dict):
            if any(k not in o or o[k] is not v for k, v in before.items()):
                return True
        elif isinstance(o, set):
            if o != before:
                return True
        elif any(a is not b for a, b in zip(o, before)):
            return True
    return False


def _restore(objects: list, snapshots: list) -> None:
    """Put back what tracing changed, so that the per-row calls that follow see the state they would have."""
    for o, before in zip(objects, snapshots):
        if not _changed([o], [before]):         # untouched: left alone (another thread may be drawing from it)
            continue
        if isinstance(o, np.random.Generator):
            o.bit_generator.state = before
        elif isinstance(o, np.random.RandomState):
            o.set_state(before)
        elif isinstance(o, (dict, set)):
            o.clear()
            o.update(before)
        else:
            o.clear()
            o.extend(before)


def fold(plan: BatchedMap, tensors):
    """`tensors` (arrays [N, ...]) with the map applied to every row at once, for fit's fused device path;
    None when the mapped rows would take more than FOLD_MAX_BYTES (then they are mapped batch by batch)."""
    leaves = jax.tree.leaves(tensors)
    n = leaves[0].shape[0]
    size = sum(n * int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in plan.specs)
    if size > FOLD_MAX_BYTES:
        return None
    return plan.apply(leaves)


class MappedRows:
    """Rows of arrays seen through a batched map: `_leaves[i][rows]` maps those rows (a slice, an index
    array, or one int) and returns output leaf i, so `batch` gathers mapped batches at once.

    The leaves of one block are asked for one after another (batch's gather), so each thread keeps the
    last mapped block and maps a block once for all its leaves; every access checks that the block kept
    is the one asked for (the same index array, or equal slices / ints), else maps the rows asked for.
    """

    def __init__(self, rows, plan: BatchedMap, fn: Callable):
        self._input, self._plan, self._fn = rows, plan, fn
        self._treedef = plan.treedef
        self._n = rows._leaves[0].shape[0]
        self._leaves = [MappedColumn(self, i, (self._n, *shape), dtype) for i, (shape, dtype) in enumerate(plan.specs)]
        self._memmaps = [leaf for leaf in rows._leaves if isinstance(leaf, np.memmap)]
        self._last = threading.local()

    def column(self, i: int, rows):
        last = getattr(self._last, "block", None)
        if last is None or not _same_rows(last[0], rows):
            last = self._last.block = (rows, self._mapped(rows))
        return last[1][i]

    def _mapped(self, rows) -> list:
        leaves = self._input._leaves
        if isinstance(rows, (int, np.integer)):             # one row: the function itself, as per row
            element = jax.tree.unflatten(self._input._treedef, [leaf[rows] for leaf in leaves])
            return jax.tree.leaves(tuple_if_list(_call(self._fn, element)))
        if isinstance(rows, slice) or not self._memmaps:
            parts = [leaf[rows] for leaf in leaves]
        else:
            parts = [read_rows(leaf, rows) if isinstance(leaf, np.memmap) else leaf[rows] for leaf in leaves]
        if self._memmaps:
            self._release(parts)
        return _numpy_leaves(self._plan.apply(parts))

    def _release(self, parts) -> None:
        """Let the pages of memmap rows read through the mapping go, every _RELEASE_BYTES read."""
        read = getattr(self._last, "read", 0) + sum(p.nbytes for p in parts)
        if read >= _RELEASE_BYTES:
            for leaf in self._memmaps:
                release_pages(leaf)
            read = 0
        self._last.read = read


def _same_rows(a, b) -> bool:
    if a is b:
        return True
    plain = (slice, int, np.integer)
    return isinstance(a, plain) and isinstance(b, plain) and type(a) is type(b) and a == b


class MappedColumn:
    """One output leaf of MappedRows, indexed like the array [N, ...] it stands for."""

    def __init__(self, rows: MappedRows, index: int, shape: tuple, dtype):
        self._rows, self._index = rows, index
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        return self._rows.column(self._index, rows)
