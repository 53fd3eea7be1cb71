"""Variable: the handle `layer.add_weight` returns and `model.weights` lists (Keras's `keras.Variable`).

A handle names one NNX variable of a built module. Read it (`.value`, `.numpy()`, arithmetic,
any `jax.numpy` function) and it gives the value of the module running now: inside a compiled
step the step's own (traced) copy, outside it the model's weights. So a custom layer's `call`
written against `self.w` trains, and the same `self.w` read after `fit` shows the trained value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers import _scope

__all__ = ["Variable", "NonTrainable", "WeightLists"]


class NonTrainable(nnx.Variable):
    """A weight the optimizer leaves alone (`add_weight(trainable=False)`): model state, not a Param."""


class WeightLists:
    """Keras's `trainable_weights` / `non_trainable_weights`, from an owner's `weights`."""

    @property
    def trainable_weights(self) -> list:
        return [w for w in self.weights if w.trainable]

    @property
    def non_trainable_weights(self) -> list:
        return [w for w in self.weights if not w.trainable]


class Variable:
    """A named weight: `name`, `path`, `shape`, `dtype`, `trainable`; read as an array, set with `assign`."""

    __array_priority__ = 100           # NumPy defers `array + handle` to the handle

    def __init__(self, variable: nnx.Variable, name: str, path: str | None = None, layer=None):
        self._home, self.name, self.path, self.layer = variable, name, path or name, layer

    @property
    def _variable(self) -> nnx.Variable:
        bound = _scope.lookup(self)
        if bound is not None:
            return bound
        for owner in list(getattr(self.layer, "_owners", ())):      # a model trained since: its values first
            owner._sync_module()
        return self._home

    @property
    def value(self) -> jax.Array:
        return self._variable[...]

    @property
    def trainable(self) -> bool:
        return isinstance(self._home, nnx.Param)

    @property
    def shape(self) -> tuple:
        return tuple(self._home.get_value().shape)

    @property
    def dtype(self):
        return self._home.get_value().dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        return np.array(self.value)

    def assign(self, value):
        """Set the value (cast to this weight's dtype; the shape must stay). Inside a training step,
        a non-trainable weight keeps what the step assigned; a trainable one is the optimizer's."""
        value = jnp.asarray(value, self.dtype)
        if value.shape != self.shape:
            raise ValueError(f"assign() to weight '{self.path}' of shape {self.shape} got shape {value.shape}. "
                             f"Give a value of the weight's shape.")
        variable = self._variable
        variable[...] = value
        if variable is self._home:
            _scope.note_edit()
        return self

    def assign_add(self, delta):
        return self.assign(self.value + delta)

    def assign_sub(self, delta):
        return self.assign(self.value - delta)

    def __jax_array__(self):
        return self.value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype)

    def __getitem__(self, index):
        return self.value[index]

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"<Variable path={self.path}, shape={self.shape}, dtype={np.dtype(self.dtype).name}>"

    # arithmetic, as on the value
    def __neg__(self): return -self.value
    def __abs__(self): return abs(self.value)
    def __add__(self, o): return self.value + o
    def __radd__(self, o): return o + self.value
    def __sub__(self, o): return self.value - o
    def __rsub__(self, o): return o - self.value
    def __mul__(self, o): return self.value * o
    def __rmul__(self, o): return o * self.value
    def __truediv__(self, o): return self.value / o
    def __rtruediv__(self, o): return o / self.value
    def __pow__(self, o): return self.value ** o
    def __rpow__(self, o): return o ** self.value
    def __matmul__(self, o): return self.value @ o
    def __rmatmul__(self, o): return o @ self.value
    def __lt__(self, o): return self.value < o
    def __le__(self, o): return self.value <= o
    def __gt__(self, o): return self.value > o
    def __ge__(self, o): return self.value >= o


# A pytree of one leaf, its value: jax.numpy functions take a handle inside jit as they take an array.
jax.tree_util.register_pytree_node(Variable, lambda v: ((v.value,), None), lambda _, leaves: leaves[0])
