"""Tracing a NumPy-written map function with JAX: each NumPy call runs the `jax.numpy` function of its name.

JAX cannot trace `np.where(x > 0.5, x, 0.0)` on a tracer: NumPy asks for the values. Called on a
`NumpyProxy` instead, NumPy hands the call to the proxy (its `__array_ufunc__` and
`__array_function__` protocols), which runs `jnp.where` on the wrapped tracer and wraps the
result again; operators, `.shape`, `.astype`, indexing and the usual methods do the same. The
proxies compute with 64-bit types on (`jax.enable_x64`), as NumPy does: float64 stays float64,
an int32 row times a Python float is float64, Python scalars are weak (NEP 50).

An `if` on a traced value (`if x.max() > 0.99:`, `and`, `or`, `not`, `min(a, b)`) is traced the way
tf.data's AutoGraph turns it into a conditional: `f` runs once per path through its decisions (at
most `MAX_PATHS`, each with at most `MAX_DECISIONS`), and each row takes the results of the path its
own values choose (`jnp.where` on the paths' conditions), which is what `f` computes on that row.

Whatever else needs a value or has no `jnp` twin fails the trace with `NotTraceable`, so the map runs
per row: `float(x)`, `np.asarray(x)`, a loop on values (`while x > 0`, past the limits above), in-place
writes (`x[0] = 1`, `x += 1`, `out=`), a NumPy function that `jax.numpy` lacks. NumPy random numbers
drawn during the trace become constants; `_map` sees them change between two traces and keeps the map
per row.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NotTraceable", "NumpyProxy", "numpy_traceable", "x64", "MAX_PATHS", "MAX_DECISIONS"]

MAX_PATHS = 16            # paths through f's `if`s on traced values that one trace follows
MAX_DECISIONS = 8         # `if`s on traced values along one path (a `while` on values stops here)
_PATH = threading.local()  # the path being traced in this thread (maps are traced in workers too)


class NotTraceable(TypeError):
    """A NumPy-written function asked for something a trace cannot give (a value, an in-place write)."""


def x64():
    """The context NumPy-written functions are traced and run batched in: 64-bit types, as in NumPy."""
    return jax.enable_x64(True)


def numpy_traceable(call: Callable) -> Callable:
    """`call` (leaves -> a tree of arrays) made traceable: it gets NumpyProxy leaves, returns plain ones,
    every path through its `if`s on traced values followed and joined (see the module's docstring)."""
    def traced(*leaves):
        return _all_paths(lambda: _unwrap(call(*[NumpyProxy(leaf) for leaf in leaves])))
    return traced


class _Path:
    """One path through a function's decisions: the `script` of those decided so far (True / False), then
    False for each new one; `conditions` are the traced values decided on, `decisions` what was taken."""

    def __init__(self, script: list):
        self.script, self.conditions, self.decisions = script, [], []

    def decide(self, proxy: "NumpyProxy") -> bool:
        if proxy.size != 1:
            raise ValueError(f"The truth value of an array with more than one element is ambiguous "
                             f"(shape {proxy.shape}). Use a.any() or a.all()")
        if len(self.decisions) == MAX_DECISIONS:
            raise NotTraceable(f"more than {MAX_DECISIONS} decisions on traced values along one path")
        taken = self.script[len(self.decisions)] if len(self.decisions) < len(self.script) else False
        self.conditions.append(proxy.value.reshape(()).astype(bool))     # NumPy's truth: nonzero (NaN too)
        self.decisions.append(taken)
        return taken


def _all_paths(run: Callable):
    """run()'s result (a tree of tracers) on every path through its decisions, joined per row: depth first,
    each path the last one's decisions with its last False turned True and the rest dropped."""
    outer, results, script = getattr(_PATH, "path", None), [], []
    try:
        while True:
            _PATH.path = path = _Path(script)
            results.append((path, run()))
            script = list(path.decisions)
            while script and script[-1]:
                script.pop()
            if not script:
                break
            if len(results) == MAX_PATHS:
                raise NotTraceable(f"more than {MAX_PATHS} paths through decisions on traced values")
            script[-1] = True
    finally:
        _PATH.path = outer
    return _join(results)


def _join(results: list):
    """The result of the path each row takes: `jnp.where` on the paths' conditions, last path first."""
    joined = results[-1][1]
    structure = jax.tree.structure(joined)
    for path, result in reversed(results[:-1]):
        if jax.tree.structure(result) != structure:
            raise NotTraceable("the paths of an `if` on traced values return different structures")
        taken = functools.reduce(jnp.logical_and, [c if d else ~c for c, d in zip(path.conditions, path.decisions)])
        joined = jax.tree.map(lambda a, b: _choose(taken, a, b), result, joined)
    return joined


def _choose(taken, a, b):
    """`a` where `taken`, else `b`: arrays (traced, or NumPy constants) of one shape and dtype, or equal
    Python constants."""
    if a is b:
        return a
    a, b = (jnp.asarray(v) if isinstance(v, (np.ndarray, np.generic)) else v for v in (a, b))
    if not isinstance(a, jax.Array) or not isinstance(b, jax.Array):
        if type(a) is type(b) and a == b:
            return a
        raise NotTraceable("the paths of an `if` on traced values return different constants")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise NotTraceable("the paths of an `if` on traced values return different shapes or dtypes")
    return jnp.where(taken, a, b)


def _each_proxy(fn, value):
    """`value` (a proxy, or lists, tuples and dicts holding some) with `fn` applied to every proxy in it."""
    return jax.tree.map(lambda v: fn(v) if isinstance(v, NumpyProxy) else v, value,
                        is_leaf=lambda v: isinstance(v, NumpyProxy))


def _unwrap(value):
    """`value` with every proxy in it replaced by its tracer."""
    return _each_proxy(lambda p: p.value, value)


def _wrap(value):
    """JAX arrays (also in tuples and lists) as proxies; anything else (a shape, an int) as it is."""
    return jax.tree.map(lambda v: NumpyProxy(v) if isinstance(v, jax.Array) else v, value)


def _jnp_twin(module: str, name: str):
    """The `jax.numpy` function for NumPy's `module.name` (numpy.linalg.norm -> jnp.linalg.norm)."""
    target = jnp
    for part in module.split(".")[1:]:
        target = getattr(target, part, None)
    twin = getattr(target, name, None) if target is not None else None
    if twin is None:
        raise NotTraceable(f"jax.numpy has no {module}.{name}")
    return twin


def _run(function, args, kwargs, numpy_function=None):
    """`function` (a `jnp` one) on `args` with proxies unwrapped, its results wrapped. With `numpy_function`
    (NumPy's), the proxies are first cast up to the dtype NumPy's result has, and the results cast to it:
    NumPy computes `np.mean` of int32 or `np.concatenate` of int32 and float32 in float64, JAX in float32."""
    if kwargs.get("out") is not None:
        raise NotTraceable("an `out=` argument writes in place")
    kwargs = {k: v for k, v in kwargs.items() if k != "out"}
    want = _numpy_dtypes(numpy_function, args, kwargs) if numpy_function is not None else None
    if want is not None and len(want) == 1 and want[0].kind in "biufc":
        args, kwargs = _cast_up(args, want[0]), _cast_up(kwargs, want[0])
    result = function(*_unwrap(args), **_unwrap(kwargs))
    if want is not None:
        leaves, treedef = jax.tree.flatten(result)
        if len(leaves) == len(want):
            result = jax.tree.unflatten(treedef, [_as_dtype(v, d) for v, d in zip(leaves, want)])
    return _wrap(result)


def _numpy_dtypes(numpy_function, args, kwargs) -> list | None:
    """The dtypes of what `numpy_function` returns on zeros shaped as the proxies (None if it fails there)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = numpy_function(*_zeros(args), **_zeros(kwargs))
    except Exception:
        return None
    leaves = jax.tree.leaves(result)
    if not all(isinstance(v, (np.ndarray, np.generic)) for v in leaves):
        return None
    return [v.dtype for v in leaves]


def _zeros(value):
    return _each_proxy(lambda p: np.zeros(p.shape, p.dtype), value)


def _cast_up(value, dtype):
    """`value` with each proxy in it cast to `dtype` where NumPy would (a safe cast: int32 -> float64)."""
    def cast(p):
        same = p.dtype == dtype or not np.can_cast(p.dtype, dtype, "safe")
        return p if same else NumpyProxy(p.value.astype(dtype))
    return _each_proxy(cast, value)


def _as_dtype(value, dtype):
    return value.astype(dtype) if isinstance(value, jax.Array) and value.dtype != dtype else value


def _ufunc_call(ufunc, inputs, kwargs):
    """A NumPy ufunc on proxies: the inputs cast to the loop NumPy picks (NEP 50: a Python scalar is weak,
    a NumPy one is not), the `jnp` twin, its outputs cast to the loop's output dtypes."""
    if kwargs.get("out") is not None or kwargs.get("where", True) is not True:
        raise NotTraceable("`out=` or `where=` writes in place")
    function = _jnp_twin("numpy", ufunc.__name__)
    signature = tuple(_signature_dtype(v) for v in inputs) + (None,) * ufunc.nout
    try:
        loop = ufunc.resolve_dtypes(signature)
    except Exception:                           # no loop: let JAX's promotion decide, the probes check it
        return _run(function, inputs, kwargs)
    inputs = tuple(NumpyProxy(v.value.astype(d)) if isinstance(v, NumpyProxy) and v.dtype != d else v
                   for v, d in zip(inputs, loop))
    result = _run(function, inputs, {k: v for k, v in kwargs.items() if k != "where"})
    if ufunc.nout == 1:
        return _wrap(_as_dtype(_unwrap(result), loop[-1]))
    return tuple(_wrap(_as_dtype(_unwrap(r), d)) for r, d in zip(result, loop[ufunc.nin:]))


def _signature_dtype(value):
    if isinstance(value, (NumpyProxy, np.ndarray, np.generic)):
        return value.dtype
    if type(value) in (bool, int, float, complex):
        return type(value)                       # weak, as NumPy 2 takes Python scalars
    return np.asarray(value).dtype


def _refuse(what: str):
    def refuse(self, *args, **kwargs):
        raise NotTraceable(f"{what} of a traced array needs its values")
    return refuse


def _in_place(name: str):
    def refuse(self, *args, **kwargs):
        raise NotTraceable(f"`{name}` writes into the array in place")
    return refuse


def _operator(ufunc, reflected: bool = False):
    if reflected:
        return lambda self, other: _ufunc_call(ufunc, (other, self), {})
    return lambda self, other: _ufunc_call(ufunc, (self, other), {})


def _method(name: str):
    """`proxy.name(...)`: the tracer's method, with the dtypes of the ndarray method of that name."""
    def method(self, *args, **kwargs):
        return _run(lambda *a, **k: getattr(a[0], name)(*a[1:], **k), (self, *args), kwargs,
                    lambda *a, **k: getattr(a[0], name)(*a[1:], **k))
    method.__name__ = name
    return method


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
           "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
           "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
           "lshift": np.left_shift, "rshift": np.right_shift}
_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
            "eq": np.equal, "ne": np.not_equal}
_UNARY = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}
_WRITES = {"put", "place", "putmask", "copyto", "fill_diagonal", "put_along_axis"}   # NumPy functions that write
_METHODS = ("all", "any", "argmax", "argmin", "argsort", "astype", "clip", "conj", "conjugate", "copy", "cumprod",
            "cumsum", "diagonal", "dot", "flatten", "max", "mean", "min", "prod", "ravel", "repeat", "reshape",
            "round", "squeeze", "std", "sum", "swapaxes", "take", "trace", "transpose", "var")
_PROPERTIES = ("T", "mT", "real", "imag")
_IN_PLACE = ("sort", "fill", "resize", "put", "partition", "itemset", "setfield", "setflags", "__setitem__",
             *(f"__i{name}__" for name in _BINARY))


class NumpyProxy:
    """A traced array (`value`) standing in for a NumPy array: NumPy calls on it run their `jnp` twin."""

    __slots__ = ("value",)
    __array_priority__ = 1000            # ndarray + proxy: NumPy defers to the proxy's operators
    __hash__ = None

    def __init__(self, value):
        self.value = value

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__":
            return _ufunc_call(ufunc, inputs, kwargs)
        function = getattr(_jnp_twin("numpy", ufunc.__name__), method, None)
        if function is None:
            raise NotTraceable(f"jax.numpy.{ufunc.__name__} has no method {method}")
        return _run(function, inputs, kwargs, getattr(ufunc, method))

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in _WRITES:
            raise NotTraceable(f"np.{func.__name__} writes in place")
        return _run(_jnp_twin(func.__module__ or "numpy", func.__name__), args, kwargs, func)

    def __array__(self, dtype=None, copy=None):
        raise NotTraceable("np.asarray of a traced array needs its values")

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: np.dtype(self.value.dtype))
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __len__(self) -> int:
        if not self.value.ndim:
            raise TypeError("len() of unsized object")
        return self.value.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index):
        return _wrap(self.value[_unwrap(index)])

    def __bool__(self) -> bool:
        path = getattr(_PATH, "path", None)
        if path is None:
            raise NotTraceable("bool() of a traced array needs its values")
        return path.decide(self)

    __float__ = _refuse("float()")
    __int__ = _refuse("int()")
    __index__ = _refuse("an index")
    __complex__ = _refuse("complex()")
    tolist = _refuse("tolist()")
    item = _refuse("item()")
    tobytes = _refuse("tobytes()")

    def __repr__(self) -> str:
        return f"NumpyProxy({self.dtype}{list(self.shape)})"


for _name, _function in _BINARY.items():
    setattr(NumpyProxy, f"__{_name}__", _operator(_function))
    setattr(NumpyProxy, f"__r{_name}__", _operator(_function, reflected=True))
for _name, _function in _COMPARE.items():
    setattr(NumpyProxy, f"__{_name}__", _operator(_function))
for _name, _function in _UNARY.items():
    setattr(NumpyProxy, f"__{_name}__", lambda self, ufunc=_function: _ufunc_call(ufunc, (self,), {}))
for _name in _METHODS:
    setattr(NumpyProxy, _name, _method(_name))
for _name in _PROPERTIES:
    setattr(NumpyProxy, _name, property(lambda self, name=_name: _run(lambda v: getattr(v, name), (self,), {},
                                                                       lambda v: getattr(v, name))))
for _name in _IN_PLACE:
    setattr(NumpyProxy, _name, _in_place(_name))
del _name, _function
