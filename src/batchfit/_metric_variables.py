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

import jax.numpy as jnp
import numpy as np  # noqa: F401 - the module doctest uses it

from batchfit import initializers
from batchfit._array_like import ArrayLike
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
    """A variable's first value from Keras's `initializer` (a name or config such as "zeros", a
    bf.initializers object or any callable(shape, dtype), a number or an array), as a JAX array of
    `shape` and `dtype`."""
    if initializer is None or isinstance(initializer, (str, dict)):
        initializer = initializers.get(initializer or "zeros")
    value = initializer(shape, dtype) if callable(initializer) else initializer
    value = jnp.asarray(value, dtype)
    return value if value.shape == tuple(shape) else jnp.broadcast_to(value, shape)


class Variable(ArrayLike):
    """A metric's state variable: its own value, or the open StatelessScope's (see ArrayLike for the rest)."""

    def __init__(self, value, name: str | None = None):
        self._value = jnp.asarray(value)
        self.name = name or "variable"
        self.trainable = False

    @classmethod
    def _unflatten(cls, name, value):
        variable = object.__new__(cls)
        variable._value, variable.name, variable.trainable = value, name, False
        return variable

    @property
    def value(self):
        scope = _current_scope()
        if scope is not None:
            value = scope.get(self)
            if value is not None:
                return value
        return self._value

    @property
    def shape(self) -> tuple:
        return tuple(self._value.shape)

    @property
    def dtype(self):
        return self._value.dtype

    def _write(self, value) -> None:
        scope = _current_scope()
        if scope is not None:
            scope._put(self, value)
        else:
            self._value = value

    def __repr__(self):
        return f"<Variable {self.name} {describe(self._value)}>"
