"""Keras weight regularizers: `reg(weight) -> scalar` penalties added to the loss."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp

from batchfit._keras_names import missing as _missing
from batchfit.registry import Registry

__all__ = ["REGULARIZERS", "Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get"]

REGULARIZERS = Registry("regularizer")


def _check_factor(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(
            f"Regularization factor `{name}` must be a finite float >= 0; got {value!r}. "
            f"Pass e.g. {name}=0.01.")
    return float(value)


class Regularizer:
    """Base class: a callable `weight -> scalar` penalty (0.0 here)."""

    def __call__(self, x):
        return jnp.zeros((), jnp.result_type(x))


@dataclasses.dataclass(frozen=True)
class L1(Regularizer):
    """`l1 * sum(|w|)` (Keras default l1=0.01).

    >>> float(L1(0.5)(jnp.array([1.0, -2.0])))
    1.5
    """

    l1: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "l1", _check_factor(self.l1, "l1"))

    def __call__(self, x):
        return self.l1 * jnp.sum(jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class L2(Regularizer):
    """`l2 * sum(w ** 2)` (Keras default l2=0.01).

    >>> float(L2(0.5)(jnp.array([1.0, -2.0])))
    2.5
    """

    l2: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "l2", _check_factor(self.l2, "l2"))

    def __call__(self, x):
        return self.l2 * jnp.sum(jnp.square(x))


@dataclasses.dataclass(frozen=True)
class L1L2(Regularizer):
    """`l1 * sum(|w|) + l2 * sum(w ** 2)`; the class defaults to 0.0 each, as Keras 3.

    The name "l1_l2" and the function `l1_l2()` use 0.01 each, as Keras documents.

    >>> float(L1L2(l1=0.5, l2=0.5)(jnp.array([1.0, -2.0])))
    4.0
    """

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "l1", _check_factor(self.l1, "l1"))
        object.__setattr__(self, "l2", _check_factor(self.l2, "l2"))

    def __call__(self, x):
        return self.l1 * jnp.sum(jnp.abs(x)) + self.l2 * jnp.sum(jnp.square(x))


l1 = L1
l2 = L2


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """An `L1L2` regularizer with Keras's function defaults (0.01 each)."""
    return L1L2(l1=l1, l2=l2)


REGULARIZERS.register("l1")(L1)
REGULARIZERS.register("l2")(L2)
REGULARIZERS.register("l1_l2")(l1_l2)


def get(identifier) -> Callable | None:
    """The regularizer for `identifier`: None, a name (Keras defaults) or a callable.

    >>> get("l2")
    L2(l2=0.01)
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return REGULARIZERS.get(identifier)()
    if callable(identifier):
        return identifier
    raise TypeError(
        f"A regularizer must be None, a name ('l1', 'l2', 'l1_l2') or a callable "
        f"`weight -> scalar`; got {type(identifier).__name__} {identifier!r}. "
        f"Pass e.g. kernel_regularizer=batchfit.regularizers.L2(1e-4).")


__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
