"""ArrayLike: what a Keras variable handle does as an array, shared by layer weights and metric state.

A subclass says where its value lives (`value`, `_write`); everything else follows: `assign` (cast to
the dtype, shape kept), `assign_add` / `assign_sub`, `numpy()`, arithmetic and comparisons, `__jax_array__`,
and registration as a JAX pytree whose one leaf is the value, which jax.numpy needs inside compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.errors import describe

__all__ = ["ArrayLike"]


class ArrayLike:
    """A named value read as an array. Subclasses define `value`, `_write(value)` and `_unflatten`."""

    __array_priority__ = 100          # NumPy defers `array + handle` to the handle
    __hash__ = object.__hash__        # identity: scopes key values by the handle; == compares values
    name = "variable"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, lambda v: ((v.value,), v.name),
                                           lambda name, leaves: cls._unflatten(name, leaves[0]))

    @property
    def value(self) -> jax.Array:
        raise NotImplementedError

    def _write(self, value) -> None:
        raise NotImplementedError

    @classmethod
    def _unflatten(cls, name, value):
        """What JAX rebuilds from the leaf (a pytree round trip): the value itself by default."""
        return value

    @property
    def shape(self) -> tuple:
        return tuple(jnp.shape(self.value))

    @property
    def dtype(self):
        return jnp.result_type(self.value)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def assign(self, value):
        """Set the value, cast to this variable's dtype; the shape must stay (a one-element value fills a
        scalar). Returns the value set, as Keras's assign does."""
        value = jnp.asarray(value.value if isinstance(value, ArrayLike) else value, self.dtype)
        if value.shape != self.shape:
            if value.size == 1 and self.shape == ():
                value = value.reshape(())
            else:
                raise ValueError(f"Variable `{self.name}` of shape {self.shape} cannot take a value of "
                                 f"{describe(value)}: assign() keeps the shape. Give a value of its shape, "
                                 f"e.g. ops.sum(values) for a scalar.")
        self._write(value)
        return value

    def assign_add(self, delta):
        return self.assign(jnp.add(self.value, jnp.asarray(delta)))

    def assign_sub(self, delta):
        return self.assign(jnp.subtract(self.value, jnp.asarray(delta)))

    def numpy(self) -> np.ndarray:
        return np.array(self.value)

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
        return self.shape[0]

    def __getitem__(self, index):
        return self.value[index]

    def astype(self, dtype):
        return jnp.asarray(self.value).astype(dtype)

    def reshape(self, *shape):
        return jnp.reshape(self.value, *shape)


def _operator(name: str, reflected: bool = False):
    fn = getattr(jnp, name)

    def method(self, other=None):
        a = jnp.asarray(self.value)
        if other is None and name in ("negative", "positive", "absolute", "logical_not"):
            return fn(a)
        b = other.value if isinstance(other, ArrayLike) else other
        return fn(b, a) if reflected else fn(a, b)
    return method


for _dunder, _fn in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                     ("floordiv", "floor_divide"), ("mod", "mod"), ("pow", "power"), ("matmul", "matmul")]:
    setattr(ArrayLike, f"__{_dunder}__", _operator(_fn))
    setattr(ArrayLike, f"__r{_dunder}__", _operator(_fn, reflected=True))
for _dunder, _fn in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                     ("eq", "equal"), ("ne", "not_equal"), ("and", "logical_and"), ("or", "logical_or")]:
    setattr(ArrayLike, f"__{_dunder}__", _operator(_fn))
for _dunder, _fn in [("neg", "negative"), ("pos", "positive"), ("abs", "absolute"), ("invert", "logical_not")]:
    setattr(ArrayLike, f"__{_dunder}__", _operator(_fn))
