"""Keras 3's mixed precision: dtype policies and the global one, and dynamic loss scaling.

A policy names a layer's two dtypes: its weights are created in `variable_dtype`, its arithmetic
runs in `compute_dtype`. "mixed_bfloat16" and "mixed_float16" keep float32 weights and compute in
half precision; a plain dtype name ("float32", "bfloat16", ...) sets both. Layers built without
`dtype=` take the global policy that is set when they are constructed, as in Keras:

    >>> import batchfit as bf
    >>> bf.mixed_precision.set_global_policy("mixed_bfloat16")
    >>> dense = bf.layers.Dense(4)
    >>> dense.dtype_policy, dense.variable_dtype, dense.compute_dtype
    (<DTypePolicy "mixed_bfloat16">, 'float32', 'bfloat16')
    >>> bf.mixed_precision.set_global_policy("float32")      # back to the default

The model's output is widened to float32 before the loss and the metrics (as Keras's losses do),
so losses, metrics and fit's (sum, count) accumulators stay float32. Under "mixed_float16",
`compile()` wraps the optimizer in `LossScaleOptimizer` (Keras's dynamic loss scaling).
"""

from __future__ import annotations

import numpy as np

from batchfit.optimizers._loss_scale import LossScaleOptimizer

__all__ = ["DTypePolicy", "Policy", "LossScaleOptimizer", "set_global_policy", "global_policy",
           "set_dtype_policy", "dtype_policy", "loss_scaled"]

_MIXED = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
_FLOAT_NAMES = ("float32", "bfloat16", "float16", "float64")
_INTEGER_NAMES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class DTypePolicy:
    """A dtype policy, as `keras.DTypePolicy` (also `keras.mixed_precision.Policy`).

    Args:
      name: "float32" (None), "bfloat16", "float16", "float64", "mixed_bfloat16" or
        "mixed_float16" (float32 weights, half precision arithmetic), an integer dtype name (an
        input of ids), or a NumPy/JAX dtype.
    """

    def __init__(self, name=None):
        self._name = _policy_name(name, "DTypePolicy", _FLOAT_NAMES + _INTEGER_NAMES)

    @property
    def name(self) -> str:
        return self._name

    @property
    def compute_dtype(self) -> str:
        """The dtype of the layer's arithmetic (its inputs are cast to it)."""
        return _MIXED.get(self._name, self._name)

    @property
    def variable_dtype(self) -> str:
        """The dtype of the layer's weights."""
        return "float32" if self._name in _MIXED else self._name

    def get_config(self) -> dict:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config: dict) -> "DTypePolicy":
        return cls(**config)

    def __eq__(self, other) -> bool:
        return isinstance(other, DTypePolicy) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("DTypePolicy", self._name))

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self._name}">'


Policy = DTypePolicy


def _policy_name(value, owner: str, accepted: tuple = _FLOAT_NAMES) -> str:
    """The policy name that `value` gives: a policy, its name, Keras's serialized policy, a dtype.

    `accepted` lists the plain dtype names the owner takes; the mixed policies are taken wherever
    half precision is (their compute dtype). ValueError otherwise, naming what was given."""
    if isinstance(value, DTypePolicy):
        name = value.name
    elif isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        name = (value.get("config") or {}).get("name")      # as Keras 3 writes a layer's dtype
    elif value is None:
        name = "float32"
    else:
        try:
            name = value if isinstance(value, str) else np.dtype(value).name
        except (TypeError, ValueError):
            name = None
    if name in accepted or (name in _MIXED and _MIXED[name] in accepted):
        return name
    known = (*accepted, *(m for m, half in _MIXED.items() if half in accepted))
    raise ValueError(f"{owner}: `dtype` must be one of {', '.join(map(repr, known))}, a "
                     f"bf.mixed_precision.DTypePolicy, a NumPy/JAX dtype of these, or None (the global "
                     f"policy); got dtype={value!r}. Pass e.g. {owner}(..., dtype='mixed_bfloat16').")


_global = DTypePolicy("float32")


def set_global_policy(policy) -> None:
    """Set the policy of the layers constructed from now on without `dtype=` (Keras's function).

    Args:
      policy: a floating policy name ("float32", "mixed_bfloat16", "mixed_float16", ...), a
        `DTypePolicy`, or None for "float32". Layers already constructed keep their policy.
    """
    global _global
    _global = DTypePolicy(_policy_name(policy, "set_global_policy"))


def global_policy() -> DTypePolicy:
    """The policy of layers constructed without `dtype=` ("float32" unless set)."""
    return _global


set_dtype_policy = set_global_policy     # Keras's other names for the two
dtype_policy = global_policy


def serialize(policy: DTypePolicy) -> dict:
    """`policy` as Keras 3 writes a layer's `dtype` in get_config()."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": policy.get_config(),
            "registered_name": None}


def loss_scaled(optimizer):
    """`optimizer` wrapped in `LossScaleOptimizer` under a "mixed_float16" global policy (what Keras's
    compile() does with `auto_scale_loss=True`); as it is otherwise, or when it is one already."""
    import optax
    already = isinstance(optimizer, LossScaleOptimizer) or (
        isinstance(optimizer, optax.GradientTransformation) and getattr(optimizer, "loss_scaled", False))
    if _global.name != "mixed_float16" or already:
        return optimizer
    return LossScaleOptimizer(optimizer)
