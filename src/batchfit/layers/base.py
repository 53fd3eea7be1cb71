"""The Layer config base class, argument checks, and the regularized-module mixin."""

from __future__ import annotations

import inspect
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.registry import Registry

__all__ = ["Layer", "LAYERS", "layer_from_config"]

LAYERS = Registry("layer")


def _positive_int(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int; got {name}={value!r}. "
                         f"Pass e.g. {owner}({name}=32).")
    return int(value)


def _pair(value, name: str, owner: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{owner}: `{name}` must be an int or a pair of ints; got "
                         f"{name}={value!r}. Pass e.g. {name}=(3, 3).")
    return tuple(_positive_int(v, name, owner) for v in pair)


def _padding(value, owner: str) -> str:
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{owner}: `padding` must be 'valid' or 'same'; got {value!r}.")
    return value.lower()


def _shape(value, name: str) -> tuple:
    shape = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if any(d is not None and (isinstance(d, bool) or int(d) < 1) for d in shape):
        raise ValueError(f"`{name}` must be a tuple of positive ints (or None), without the "
                         f"batch axis; got {value!r}. Pass e.g. {name}=(28, 28, 1).")
    return tuple(None if d is None else int(d) for d in shape)


class Layer:
    """Base config: `build(input_shape, rngs)` -> NNX module for [B, *input_shape]."""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs).arguments
        bound.pop("self")
        extra = bound.pop("kwargs", {})
        self._arguments = {**bound, **extra}  # for get_config
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LAYERS.register(cls.__name__)(cls)

    def __init__(self, *, input_shape=None, input_dim=None, name=None):
        input_shape = (input_dim,) if input_dim is not None else input_shape
        self.input_shape = None if input_shape is None else _shape(input_shape, "input_shape")
        snake = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(self).__name__)  # as Keras
        self.name = name or re.sub(r"([a-z])([A-Z])", r"\1_\2", snake).lower()

    def compute_output_shape(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample `input_shape` (the identity here)."""
        return tuple(input_shape)

    def build(self, input_shape, rngs: nnx.Rngs) -> nnx.Module:
        """A fresh module for [B, *input_shape]; weights drawn from `rngs.params()`."""
        raise NotImplementedError(f"{type(self).__name__} must define build(input_shape, rngs).")

    def get_config(self) -> dict:
        """{"class_name", "config"}: the constructor arguments as given (values not converted)."""
        return {"class_name": type(self).__name__, "config": dict(self._arguments)}

    def _fail(self, input_shape, needs: str):
        raise ValueError(f"{type(self).__name__} '{self.name}' needs {needs}; got per-sample "
                         f"shape {tuple(input_shape)}. Reshape the data or add a layer first.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def layer_from_config(config: dict) -> Layer:
    """The layer that `layer.get_config()` described."""
    return LAYERS.get(config["class_name"])(**config["config"])


class _Regularized(nnx.Module):
    """Mixin: `penalty()` sums regularizer(weight) over (name, regularizer) pairs."""

    weight_regularizers: tuple = ()

    def penalty(self):
        """Scalar float32: the sum of this module's weight penalties (Keras `layer.losses`)."""
        total = jnp.zeros((), jnp.float32)
        for name, regularizer in self.weight_regularizers:
            total = total + regularizer(getattr(self, name)[...])
        return total
