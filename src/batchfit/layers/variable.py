"""Variable: the handle `layer.add_weight` returns and `model.weights` lists (Keras's `keras.Variable`).

A handle names one NNX variable of a built module. Read it (`.value`, `.numpy()`, arithmetic,
any `jax.numpy` function) and it gives the value of the module running now: inside a compiled
step the step's own (traced) copy, outside it the model's weights. So a custom layer's `call`
written against `self.w` trains, and the same `self.w` read after `fit` shows the trained value.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from batchfit._array_like import ArrayLike
from batchfit.layers import _scope

__all__ = ["Variable", "NonTrainable", "WeightLists", "refuse_freezing", "unique"]


class NonTrainable(nnx.Variable):
    """A weight the optimizer leaves alone (`add_weight(trainable=False)`): model state, not a Param."""


def refuse_freezing(value, what: str) -> None:
    """`trainable = False` (Keras's freezing) is not supported yet: say so rather than train anyway."""
    if not value:
        raise NotImplementedError(
            f"Setting {what}.trainable = False (freezing) is not supported by batchfit yet: its weights would "
            f"still train. To keep weights fixed, compile with an optax.multi_transform that gives them "
            f"optax.set_to_zero(), or build the frozen part outside the model.")


class WeightLists:
    """What Keras derives from an owner's `weights` (a layer's or a model's): the trainable and
    non-trainable lists, `count_params()`, and `trainable` (always True: freezing is refused)."""

    @property
    def trainable_weights(self) -> list:
        return [w for w in self.weights if w.trainable]

    @property
    def non_trainable_weights(self) -> list:
        return [w for w in self.weights if not w.trainable]

    def count_params(self) -> int:
        return int(sum(math.prod(w.shape) for w in self.weights))

    @property
    def trainable(self) -> bool:
        return True

    @trainable.setter
    def trainable(self, value) -> None:
        refuse_freezing(value, f"{type(self).__name__} '{self.name}'")


class Variable(ArrayLike):
    """A named weight: `name`, `path`, `shape`, `dtype`, `trainable`; read as an array, set with `assign`.
    Inside a training step, a non-trainable weight keeps what the step assigned; a trainable one is
    the optimizer's."""

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

    def _write(self, value) -> None:
        variable = self._variable
        variable[...] = value
        if variable is self._home:
            _scope.note_edit()

    @property
    def trainable(self) -> bool:
        return isinstance(self._home, nnx.Param)

    @property
    def shape(self) -> tuple:
        return tuple(self._home.get_value().shape)

    @property
    def dtype(self):
        return self._home.get_value().dtype

    def __repr__(self):
        return f"<Variable path={self.path}, shape={self.shape}, dtype={np.dtype(self.dtype).name}>"


def unique(handles) -> list:
    """`handles` in order, each weight once (a shared layer's weights are listed by every owner)."""
    found, seen = [], set()
    for handle in handles:
        if id(handle._home) not in seen:
            seen.add(id(handle._home))
            found.append(handle)
    return found
