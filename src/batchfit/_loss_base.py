"""The Keras `Loss` base class, `LossFunctionWrapper`, Keras's reductions, and the helpers they share with
the loss functions of `batchfit.losses` (public through it): rank alignment, per-sample values."""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Callable

import jax
import jax.numpy as jnp

from batchfit import _logits
from batchfit.errors import describe

__all__ = ["Loss", "LossFunctionWrapper", "checked"]

EPSILON = 1e-7  # keras.backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]


def _as_float(x):
    """`x` as a JAX array of at least float32 (Keras computes losses in float32); a sigmoid/softmax
    output's logits (see _logits) follow the cast."""
    array = jnp.asarray(x)
    dtype = jnp.promote_types(array.dtype, jnp.float32)
    return _logits.carry(x, array.astype(dtype), lambda logits: jnp.asarray(logits).astype(dtype))


def _align(y_true, y_pred):
    """Keras `squeeze_or_expand_to_same_rank`: fix ranks that differ by a trailing 1."""
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        if y_pred.ndim == 1:
            return y_true, _logits.carry(y_pred, y_pred[:, None], lambda logits: logits[:, None])
        return jnp.squeeze(y_true, -1), y_pred
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        if y_true.ndim == 1:
            return y_true[:, None], y_pred
        return y_true, _logits.carry(y_pred, jnp.squeeze(y_pred, -1), lambda logits: jnp.squeeze(logits, -1))
    return y_true, y_pred


def _per_sample(values):
    """Average `values` [B, ...] over every axis but the first: [B]."""
    if values.ndim <= 1:
        return values
    return jnp.mean(values, axis=tuple(range(1, values.ndim)))


def _prepare(y_true, y_pred, loss_name: str, hint: str = ""):
    """Cast `y_true` to `y_pred`'s float dtype and align the ranks; check the shapes."""
    y_pred = _as_float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    y_true, y_pred = _align(y_true, y_pred)
    _check_same_shape(loss_name, y_true, y_pred, hint)
    return y_true, y_pred


def _check_same_shape(name: str, y_true, y_pred, hint: str = "") -> None:
    """Raise a ValueError naming both shapes when they differ (losses and metrics alike)."""
    if y_true.shape != y_pred.shape or y_pred.ndim == 0:
        raise ValueError(
            f"{name} needs `y_true` and `y_pred` of the same shape [B, ...] (a trailing "
            f"axis of size 1 may be missing on one side); got y_true: {describe(y_true)}, "
            f"y_pred: {describe(y_pred)}. Reshape the targets to match the model output."
            f"{hint}")


_REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


class Loss:
    """Base class of losses, as `keras.losses.Loss(name=None, reduction="sum_over_batch_size", dtype=None)`.

    Subclass it as Keras does: `call(y_true, y_pred)` returns the losses of a batch, per sample [B]
    or per element [B, ...] (a scalar is taken as every sample's loss); `y_true` and `y_pred` arrive
    cast to the loss's dtype (float32). Define `get_config` to add your own arguments.

    Called on its own, `loss(y_true, y_pred, sample_weight=None)` reduces `call`'s values v as Keras:
    "sum_over_batch_size" and "mean": sum(w * v) / v.size; "sum": sum(w * v); "mean_with_sample_weight":
    sum(w * v) / sum(w); "none" or None: w * v. Weights [B] weigh whole samples, also when `call`
    returns [B, ...] (Keras broadcasts them against the last axis instead, an error unless that axis
    has size B or 1).

    In `compile()` batchfit uses `per_sample(y_true, y_pred)`: `call`'s values averaged over their
    trailing axes, [B], reduced by compile's `loss_reduction`; the loss's own `reduction` is not used
    there. For Keras's default "sum_over_batch_size" that is Keras's number (sum over the B * d
    elements / (B * d) == sum over samples of their mean / B) for every rank; a Loss with another
    reduction gives a UserWarning at compile().

    >>> class Scaled(Loss):
    ...     def __init__(self, scale=1.0, name="scaled", **kwargs):
    ...         super().__init__(name=name, **kwargs)
    ...         self.scale = scale
    ...     def call(self, y_true, y_pred):
    ...         return self.scale * jnp.square(y_true - y_pred)      # [B, 2], per element
    >>> y_true, y_pred = jnp.array([[0.0, 0.0], [1.0, 1.0]]), jnp.array([[1.0, 3.0], [1.0, 2.0]])
    >>> float(Scaled(2.0)(y_true, y_pred))       # 2 * (1 + 9 + 0 + 1) / 4
    5.5
    >>> float(Scaled(2.0, reduction="sum")(y_true, y_pred, sample_weight=jnp.array([1.0, 0.0])))
    20.0
    """

    name = "loss"
    reduction = "sum_over_batch_size"
    _dtype = "float32"

    def __init__(self, name: str | None = None, reduction: str | None = "sum_over_batch_size", dtype=None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {_REDUCTIONS}; got {reduction!r}. Keras's default, "
                             f"'sum_over_batch_size', divides the sum of the losses by their number.")
        self.name = name or _snake_case(type(self).__name__)
        self.reduction = reduction
        self._dtype = jnp.dtype(dtype or "float32").name

    @property
    def dtype(self) -> str:
        return self._dtype

    def call(self, y_true, y_pred):
        """The losses [B] or [B, ...] of y_true, y_pred of shape [B, ...]."""
        raise NotImplementedError(f"{type(self).__name__} must define call(self, y_true, y_pred).")

    def _values(self, y_true, y_pred):
        """`call` on inputs cast to the loss's dtype (Keras's Loss.__call__ casts both)."""
        cast = jnp.asarray(y_pred).astype(self.dtype)
        y_pred = _logits.carry(y_pred, cast, lambda logits: jnp.asarray(logits).astype(self.dtype))
        return self.call(jnp.asarray(y_true).astype(self.dtype), y_pred)

    def per_sample(self, y_true, y_pred):
        """The per-sample losses [B] the engine reduces: `call`'s values averaged over trailing axes."""
        return _to_per_sample(self._values(y_true, y_pred), jax.tree.leaves(y_pred)[0], self.name)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of a batch, reduced by `self.reduction` (see the class docstring), w=1 when absent."""
        return _reduce(self._values(y_true, y_pred), sample_weight, self.reduction)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # True when validate_targets refuses NaN and inf itself (a range rule): y's finite check is then work done twice.
    refuses_nonfinite_targets = False

    def validate_targets(self, y, num_outputs: int | None) -> None:
        """The loss's rule on the values of host targets `y` [N, ...] (raises ValueError): fit
        runs it once per call on arrays and once per chunk on streams. `num_outputs`: the size
        of the model output's last axis (None when unknown). Nothing to check by default."""

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _snake_case(name: str) -> str:
    """Keras's default names: "MyLoss" -> "my_loss"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _reduce(values, sample_weight, reduction):
    """Keras's reduce_weighted_values, with weights [B] broadcast over the samples' trailing axes."""
    values = jnp.asarray(values)
    weight = None
    if sample_weight is not None:
        weight = jnp.asarray(sample_weight, values.dtype)
        values, weight = _align(values, weight)      # Keras's squeeze_or_expand_to_same_rank
        if weight.ndim and values.ndim and (weight.ndim > values.ndim
                                            or weight.shape != values.shape[:weight.ndim]):
            raise ValueError(
                f"`sample_weight` must be a scalar or have shape [B] = [{values.shape[0]}]; "
                f"got {describe(weight)}. Pass one weight per sample.")
        values = values * weight.reshape(weight.shape + (1,) * max(values.ndim - weight.ndim, 0))
    if reduction in (None, "none") or values.ndim == 0 or values.shape == (0,):
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    divisor = jnp.sum(weight) if reduction == "mean_with_sample_weight" and weight is not None else values.size
    divisor = jnp.asarray(divisor, total.dtype)
    return jnp.where(divisor != 0, total / jnp.where(divisor != 0, divisor, 1), 0).astype(total.dtype)


class LossFunctionWrapper(Loss):
    """A `Loss` around `fn(y_true, y_pred, **kwargs)`, as `keras.losses.LossFunctionWrapper` (inputs
    cast and rank-aligned as Keras does); `call` averages an output [B, ...] over trailing axes and
    broadcasts a scalar to [B]."""

    def __init__(self, fn: Callable, reduction: str | None = "sum_over_batch_size", name: str | None = None,
                 dtype=None, **kwargs):
        super().__init__(name=name or _name_of(fn, "custom_loss"), reduction=reduction, dtype=dtype)
        self.fn, self.kwargs = fn, kwargs

    def _values(self, y_true, y_pred):
        y_pred = _as_float(y_pred)
        y_true, y_pred = _align(jnp.asarray(y_true).astype(y_pred.dtype), y_pred)
        return self.fn(y_true, y_pred, **self.kwargs)

    def call(self, y_true, y_pred):
        return _to_per_sample(self._values(y_true, y_pred), jnp.asarray(y_pred), self.name)

    def per_sample(self, y_true, y_pred):
        return self.call(y_true, y_pred)

    def get_config(self) -> dict:
        fn = {"fn": self.fn} if type(self) is LossFunctionWrapper else {}
        return {**super().get_config(), **fn, **self.kwargs}


def _to_per_sample(values, y_pred, name: str):
    """Turn a user function's output (scalar or [B, ...]) into [B]."""
    values, batch = jnp.asarray(values), y_pred.shape[0]
    if values.ndim == 0:
        return jnp.broadcast_to(values, (batch,))
    if values.shape[0] != batch:
        raise ValueError(
            f"{name} returned {describe(values)} for a batch of {batch}; it must return "
            f"a scalar or per-sample values [{batch}, ...]. Reduce over the non-batch "
            "axes only (e.g. jnp.mean(..., axis=-1)).")
    return _per_sample(values)


def _name_of(fn, default: str) -> str:
    """A readable name for a callable: its __name__, or its wrapped function's."""
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
    return name if name and name != "<lambda>" else default


def checked(loss: Loss) -> Loss:
    """A loss as compile() can train with, or a TypeError that names the class and what to define."""
    cls = type(loss).__name__
    if type(loss).call is Loss.call:
        raise TypeError(f"{cls} defines no call(): a Loss subclass returns the losses of a batch from "
                        f"call(self, y_true, y_pred), per sample [B] or per element [B, ...], e.g. "
                        f"return ops.mean(ops.square(y_true - y_pred), axis=-1).")
    try:
        inspect.signature(loss.call).bind(None, None)
    except TypeError:
        raise TypeError(f"{cls}.call{inspect.signature(loss.call)} cannot be called as call(y_true, y_pred); "
                        f"define it as call(self, y_true, y_pred).") from None
    except ValueError:          # no signature to read (a builtin)
        pass
    if loss.reduction not in ("sum_over_batch_size", "mean"):
        warnings.warn(f"{cls}(reduction={loss.reduction!r}): compile() reduces the per-sample losses by its own "
                      f"loss_reduction ('sum_over_batch_size' unless set), not by the loss's reduction, which "
                      f"applies when you call the loss yourself. Keras would train on the {loss.reduction!r} "
                      f"reduction here.", UserWarning, stacklevel=3)
    return loss
