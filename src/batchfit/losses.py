"""Per-sample losses `(y_true, y_pred) -> [B]` with Keras 3 numerics, and their registry.

Elementwise losses average all trailing axes (the same number Keras's mean over the last
axis then "sum_over_batch_size" gives); `Loss.__call__` reduces as `sum(w * l) / B` by default.
`Loss` and `LossFunctionWrapper` (Keras's base classes, for custom losses) live in _loss_base.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from batchfit._loss_base import Loss, LossFunctionWrapper, _align, _as_float, _per_sample, checked
from batchfit._target_rules import check_sparse_labels, finite_range
from batchfit.errors import describe
from batchfit.registry import Registry

__all__ = [
    "EPSILON", "LOSSES", "Loss", "LossFunctionWrapper", "MeanSquaredError", "MeanAbsoluteError",
    "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "Huber",
    "mean_squared_error", "mean_absolute_error", "binary_crossentropy",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "huber", "get",
    "validate_targets"]

EPSILON = 1e-7  # keras.backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]

LOSSES = Registry("loss")


def _prepare(y_true, y_pred, loss_name: str, hint: str = ""):
    """Cast `y_true` to `y_pred`'s float dtype and align the ranks; check the shapes."""
    y_pred = _as_float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    y_true, y_pred = _align(y_true, y_pred)
    if y_true.shape != y_pred.shape or y_pred.ndim == 0:
        raise ValueError(
            f"{loss_name} needs `y_true` and `y_pred` of the same shape [B, ...] (a "
            f"trailing axis of size 1 may be missing on one side); got y_true: "
            f"{describe(y_true)}, y_pred: {describe(y_pred)}. Reshape the targets to "
            f"match the model output.{hint}")
    return y_true, y_pred


def _log_probabilities(y_pred, from_logits: bool):
    """Keras's log-probabilities over the last axis: log_softmax, or normalise + clip."""
    if from_logits:
        return jax.nn.log_softmax(y_pred, axis=-1)
    y_pred = y_pred / jnp.sum(y_pred, axis=-1, keepdims=True)
    return jnp.log(jnp.clip(y_pred, EPSILON, 1.0 - EPSILON))


def mean_squared_error(y_true, y_pred):
    """Per-sample mean of `(y_true - y_pred)**2`; y_true, y_pred: [B, ...] -> [B].

    >>> [float(v) for v in mean_squared_error(jnp.array([[1.0, 2.0]]), jnp.array([[2.0, 4.0]]))]
    [2.5]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "mean_squared_error")
    return _per_sample(jnp.square(y_true - y_pred))


def mean_absolute_error(y_true, y_pred):
    """Per-sample mean of `|y_true - y_pred|`; y_true, y_pred: [B, ...] (or [B] vs [B, 1]) -> [B].

    >>> [float(v) for v in mean_absolute_error(jnp.array([1.0, 0.0]), jnp.array([[2.0], [0.5]]))]
    [1.0, 0.5]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "mean_absolute_error")
    return _per_sample(jnp.abs(y_true - y_pred))


def binary_crossentropy(y_true, y_pred, from_logits: bool = False, label_smoothing: float = 0.0):
    """Per-sample binary crossentropy, Keras numerics (probabilities clipped to [1e-7, 1-1e-7]).

    Args:
        y_true: [B, ...] targets in [0, 1] (or [B] against y_pred [B, 1]).
        y_pred: [B, ...] probabilities, or logits when `from_logits=True`.
        from_logits: use the stable log-sigmoid form instead of clipping.
        label_smoothing: squeeze targets towards 0.5: `t * (1 - s) + 0.5 * s`.
    Returns: [B], averaged over the trailing axes.

    >>> round(float(binary_crossentropy(jnp.array([1.0]), jnp.array([0.8]))[0]), 5)  # -log(0.8)
    0.22314
    """
    y_true, y_pred = _prepare(y_true, y_pred, "binary_crossentropy")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        values = (-y_true * jax.nn.log_sigmoid(y_pred)
                  - (1.0 - y_true) * jax.nn.log_sigmoid(-y_pred))
    else:
        p = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
        values = -(y_true * jnp.log(p) + (1.0 - y_true) * jnp.log(1.0 - p))
    return _per_sample(values)


def categorical_crossentropy(y_true, y_pred, from_logits: bool = False,
                             label_smoothing: float = 0.0):
    """Per-sample crossentropy of one-hot (or soft) targets over the last axis.

    Args:
        y_true: [B, ..., C] one-hot or probability targets.
        y_pred: [B, ..., C] probabilities (renormalised, then clipped as Keras does),
            or logits when `from_logits=True` (log_softmax).
        label_smoothing: `t * (1 - s) + s / C`.
    Returns: [B].

    >>> y = jnp.array([[0.0, 1.0, 0.0]])
    >>> round(float(categorical_crossentropy(y, jnp.array([[0.05, 0.95, 0.0]]))[0]), 4)
    0.0513
    """
    y_true, y_pred = _prepare(
        y_true, y_pred, "categorical_crossentropy",
        " For integer class labels use sparse_categorical_crossentropy.")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    log_p = _log_probabilities(y_pred, from_logits)
    return _per_sample(-jnp.sum(y_true * log_p, axis=-1))


def sparse_categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """Per-sample crossentropy of integer class labels.

    Args:
        y_true: [B, ...] integer labels in [0, C) (or [B, ..., 1]); floats are cast.
        y_pred: [B, ..., C] probabilities or logits (`from_logits=True`).
    Returns: [B]. Labels outside [0, C) contribute 0: check data with `validate_targets`.

    >>> p = jnp.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    >>> [round(float(v), 4) for v in sparse_categorical_crossentropy(jnp.array([1, 2]), p)]
    [0.0513, 2.3026]
    """
    y_pred = _as_float(y_pred)
    labels = jnp.asarray(y_true)
    if labels.ndim == y_pred.ndim and labels.ndim > 0 and labels.shape[-1] == 1:
        labels = jnp.squeeze(labels, -1)
    if y_pred.ndim < 2 or labels.shape != y_pred.shape[:-1]:
        raise ValueError(
            f"sparse_categorical_crossentropy needs integer labels [B] (or [B, 1]) and "
            f"y_pred [B, C]; got y_true: {describe(labels)}, y_pred: {describe(y_pred)}. "
            "For one-hot targets use categorical_crossentropy; for one output unit "
            "use binary_crossentropy.")
    one_hot = jax.nn.one_hot(labels.astype(jnp.int32), y_pred.shape[-1], dtype=y_pred.dtype)
    log_p = _log_probabilities(y_pred, from_logits)
    return _per_sample(-jnp.sum(one_hot * log_p, axis=-1))


def huber(y_true, y_pred, delta: float = 1.0):
    """Per-sample Huber loss: `0.5 e^2` if `|e| <= delta` else `delta |e| - 0.5 delta^2`.

    Args: y_true, y_pred: [B, ...] -> [B]; delta: where the loss turns linear.

    >>> [float(v) for v in huber(jnp.array([0.0, 0.0]), jnp.array([0.5, 3.0]))]  # 0.125, 3-0.5
    [0.125, 2.5]
    """
    y_true, y_pred = _prepare(y_true, y_pred, "huber")
    error = y_pred - y_true
    abs_error = jnp.abs(error)
    return _per_sample(jnp.where(abs_error <= delta, 0.5 * jnp.square(error),
                                 delta * abs_error - 0.5 * delta ** 2))


class MeanSquaredError(LossFunctionWrapper):
    """Mean squared error, as `keras.losses.MeanSquaredError`."""

    def __init__(self, name: str = "mean_squared_error"):
        super().__init__(mean_squared_error, name=name)


class MeanAbsoluteError(LossFunctionWrapper):
    """Mean absolute error, as `keras.losses.MeanAbsoluteError`."""

    def __init__(self, name: str = "mean_absolute_error"):
        super().__init__(mean_absolute_error, name=name)


class BinaryCrossentropy(LossFunctionWrapper):
    """Binary crossentropy, as `keras.losses.BinaryCrossentropy`."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 name: str = "binary_crossentropy"):
        super().__init__(binary_crossentropy, name=name, from_logits=from_logits,
                         label_smoothing=label_smoothing)
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    refuses_nonfinite_targets = True

    def validate_targets(self, y, num_outputs: int | None) -> None:
        """Targets in [0, 1]."""
        low, high = finite_range(y, "binary_crossentropy")
        if low is None or (low >= 0 and high <= 1):
            return
        raise ValueError(
            f"binary_crossentropy needs targets in [0, 1]; y: {describe(y)} has min {low:g} and max {high:g}. "
            "For labels in {-1, 1} pass (y + 1) / 2; for more than two classes use "
            "sparse_categorical_crossentropy with one output unit per class.")


class CategoricalCrossentropy(LossFunctionWrapper):
    """Categorical crossentropy on one-hot targets, as `keras.losses.CategoricalCrossentropy`."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 name: str = "categorical_crossentropy"):
        super().__init__(categorical_crossentropy, name=name, from_logits=from_logits,
                         label_smoothing=label_smoothing)
        self.from_logits, self.label_smoothing = from_logits, label_smoothing


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Crossentropy on integer labels, as `keras.losses.SparseCategoricalCrossentropy`."""

    def __init__(self, from_logits: bool = False, name: str = "sparse_categorical_crossentropy"):
        super().__init__(sparse_categorical_crossentropy, name=name, from_logits=from_logits)
        self.from_logits = from_logits

    def _values(self, y_true, y_pred):
        # Labels stay integers: no float cast or rank alignment with y_pred.
        return sparse_categorical_crossentropy(y_true, y_pred, **self.kwargs)

    refuses_nonfinite_targets = True

    def validate_targets(self, y, num_outputs: int | None) -> None:
        """Whole-number class labels in [0, num_outputs)."""
        low, high = finite_range(y, "sparse_categorical_crossentropy")
        if low is not None:
            check_sparse_labels(y, low, high, num_outputs, f"y: {describe(y)} has min {low:g} and max {high:g}")


class Huber(LossFunctionWrapper):
    """Huber loss, as `keras.losses.Huber` (Keras names it "huber_loss")."""

    def __init__(self, delta: float = 1.0, name: str = "huber_loss"):
        super().__init__(huber, name=name, delta=delta)
        self.delta = delta


LOSSES.register("mse", "mean_squared_error")(MeanSquaredError)
LOSSES.register("mae", "mean_absolute_error")(MeanAbsoluteError)
LOSSES.register("binary_crossentropy", "bce")(BinaryCrossentropy)
LOSSES.register("categorical_crossentropy")(CategoricalCrossentropy)
LOSSES.register("sparse_categorical_crossentropy")(SparseCategoricalCrossentropy)
LOSSES.register("huber", "huber_loss")(Huber)

_FUNCTION_CLASSES = ((mean_squared_error, MeanSquaredError), (huber, Huber),
                     (mean_absolute_error, MeanAbsoluteError),
                     (binary_crossentropy, BinaryCrossentropy),
                     (categorical_crossentropy, CategoricalCrossentropy),
                     (sparse_categorical_crossentropy, SparseCategoricalCrossentropy))


def get(identifier) -> Loss:
    """Resolve a loss: a name, a `Loss` (returned as is), or a callable(y_true, y_pred).

    >>> get("bce").name, get("MSE").name
    ('binary_crossentropy', 'mean_squared_error')
    """
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        identifier = identifier()
    if isinstance(identifier, Loss):
        return checked(identifier)
    if isinstance(identifier, str):
        return LOSSES.get(identifier)()
    if callable(identifier) and hasattr(identifier, "call") and hasattr(identifier, "reduction"):
        raise TypeError(
            f"{type(identifier).__name__} is a loss object of another library (Keras?); batchfit runs its own "
            f"losses. Subclass batchfit.losses.Loss instead: the same __init__ / call / get_config work unchanged.")
    for fn, cls in _FUNCTION_CLASSES:
        if identifier is fn:
            return cls()
    if callable(identifier):
        return LossFunctionWrapper(identifier)
    raise TypeError(
        f"`loss` must be a loss name (one of {', '.join(LOSSES.names())}), a "
        f"batchfit.losses.Loss, or a callable(y_true, y_pred) returning per-sample "
        f"losses; got {describe(identifier)}. Pass e.g. loss='binary_crossentropy'.")


def validate_targets(loss, y, num_outputs: int | None) -> None:
    """`get(loss).validate_targets(y, num_outputs)`: the loss's rule on host targets `y` (ValueError)."""
    get(loss).validate_targets(np.asarray(y), num_outputs)

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
