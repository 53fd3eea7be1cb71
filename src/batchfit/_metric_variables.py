"""The state variables of a stateful metric, as Keras writes them, and the scope that makes an update pure.

A metric's `update_state` reads and writes its variables (`self.tp.assign_add(...)`). Used on its own,
a `Variable` holds its value. While a `StatelessScope` is open, reads and writes of the variables it
maps go to the scope's dict instead, so the engine can trace `update_state` as a pure function of the
metric's state inside the compiled step (Keras's `StatelessScope`, for batchfit's metrics).

>>> v = Variable(np.zeros((), np.float32), "tp")
>>> with StatelessScope([(v, jnp.float32(2.0))]) as scope:
...     _ = v.assign_add(3.0)
>>> float(scope.get(v)), float(v)        # the scope saw the write; the variable kept its value
(5.0, 0.0)
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.errors import describe

__all__ = ["Variable", "StatelessScope", "initial_value"]

_SCOPES = threading.local()     # the stack of open scopes of this thread (Keras keeps one too)


def _current_scope():
    stack = getattr(_SCOPES, "stack", None)
    return stack[-1] if stack else None


class StatelessScope:
    """Reads and writes of the mapped variables go to `values` while the scope is open.

    Args: mapping: (variable, value) pairs, the values the variables read inside the scope.
    A variable written inside the scope joins it; one neither mapped nor written reads its own value.
    """

    def __init__(self, mapping=()):
        self._values, self._variables = {}, []
        for variable, value in mapping:
            self._put(variable, value)

    def _put(self, variable, value):
        if id(variable) not in self._values:
            self._variables.append(variable)     # keeps it alive, so its id stays its own
        self._values[id(variable)] = value

    def get(self, variable, default=None):
        """The value `variable` has in this scope (`default` when it was neither mapped nor written)."""
        return self._values.get(id(variable), default)

    def __enter__(self):
        if not hasattr(_SCOPES, "stack"):
            _SCOPES.stack = []
        _SCOPES.stack.append(self)
        return self

    def __exit__(self, *exc):
        _SCOPES.stack.pop()
        return False


def initial_value(initializer, shape, dtype):
    """A variable's first value from Keras's `initializer` ("zeros", "ones", a number or array, or a
    callable(shape, dtype) such as a Keras initializer object), as a JAX array of `shape` and `dtype`."""
    if initializer is None or (isinstance(initializer, str) and initializer.lower() in ("zeros", "zero")):
        value = jnp.zeros(shape, dtype)
    elif isinstance(initializer, str) and initializer.lower() in ("ones", "one"):
        value = jnp.ones(shape, dtype)
    elif isinstance(initializer, str):
        raise ValueError(f"A metric variable's initializer must be 'zeros', 'ones', a number, an array or a "
                         f"callable(shape, dtype); got {initializer!r}. Metric state usually starts at 'zeros'.")
    elif callable(initializer):
        value = initializer(shape, dtype)
    else:
        value = initializer
    value = jnp.asarray(value, dtype)
    if value.shape != tuple(shape):
        value = jnp.broadcast_to(value, shape)
    return value


class Variable:
    """A metric's state variable: `value`, `assign`, `assign_add`, `assign_sub`, and arithmetic on it.

    It works with jax.numpy and batchfit.ops like an array (`__jax_array__`, and it is a JAX pytree
    whose one leaf is its value, which jax.numpy needs inside compiled code). `assign` keeps the
    variable's shape and dtype: the value is cast to the dtype; another shape is refused.
    """

    __hash__ = object.__hash__       # identity: a scope keys its values by the variable

    def __init__(self, value, name: str | None = None):
        self._value = jnp.asarray(value)
        self.name = name or "variable"
        self.trainable = False

    @classmethod
    def _detached(cls, value, name):
        """The value of a variable taken apart by JAX (a pytree leaf) and put together again."""
        variable = object.__new__(cls)
        variable._value, variable.name, variable.trainable = value, name, False
        return variable

    # ----- reading and writing -------------------------------------------------------

    @property
    def value(self):
        scope = _current_scope()
        if scope is not None:
            value = scope.get(self)
            if value is not None:
                return value
        return self._value

    def assign(self, value):
        """Set the value (cast to this variable's dtype; the shape must stay); returns the new value."""
        value = jnp.asarray(value.value if isinstance(value, Variable) else value, self.dtype)
        if value.shape != self.shape:
            if value.size == 1 and self.shape == ():
                value = value.reshape(())
            else:
                raise ValueError(f"Variable `{self.name}` of shape {self.shape} cannot take a value of "
                                 f"{describe(value)}: assign() keeps the shape. Reduce the value first, "
                                 f"e.g. ops.sum(values).")
        scope = _current_scope()
        if scope is not None:
            scope._put(self, value)
        else:
            self._value = value
        return value

    def assign_add(self, value):
        return self.assign(jnp.add(self.value, jnp.asarray(value)))

    def assign_sub(self, value):
        return self.assign(jnp.subtract(self.value, jnp.asarray(value)))

    def numpy(self) -> np.ndarray:
        return np.asarray(self.value)

    @property
    def shape(self) -> tuple:
        return tuple(self._value.shape)

    @property
    def dtype(self):
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self):
        return f"<Variable {self.name} {describe(self._value)}>"

    # ----- as an array ----------------------------------------------------------------

    def __jax_array__(self):
        return jnp.asarray(self.value)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype)

    def __float__(self):
        return float(self.value)

    def __int__(self):
        return int(self.value)

    def __bool__(self):
        return bool(self.value)

    def __len__(self):
        return len(self.value)

    def __getitem__(self, index):
        return self.value[index]

    def astype(self, dtype):
        return jnp.asarray(self.value).astype(dtype)

    def reshape(self, *shape):
        return jnp.reshape(self.value, *shape)


def _operator(name: str, reflected: bool = False):
    def method(self, other=None):
        a, b = jnp.asarray(self.value), other.value if isinstance(other, Variable) else other
        fn = getattr(jnp, name)
        if other is None and name in ("negative", "positive", "absolute", "logical_not"):
            return fn(a)
        return fn(b, a) if reflected else fn(a, b)
    return method


for _dunder, _fn in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                     ("floordiv", "floor_divide"), ("mod", "mod"), ("pow", "power"), ("matmul", "matmul")]:
    setattr(Variable, f"__{_dunder}__", _operator(_fn))
    setattr(Variable, f"__r{_dunder}__", _operator(_fn, reflected=True))
for _dunder, _fn in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                     ("eq", "equal"), ("ne", "not_equal"), ("and", "logical_and"), ("or", "logical_or")]:
    setattr(Variable, f"__{_dunder}__", _operator(_fn))
for _dunder, _fn in [("neg", "negative"), ("pos", "positive"), ("abs", "absolute"), ("invert", "logical_not")]:
    setattr(Variable, f"__{_dunder}__", _operator(_fn))

jax.tree_util.register_pytree_node(
    Variable, lambda v: ((v.value,), v.name), lambda name, leaves: Variable._detached(leaves[0], name))
