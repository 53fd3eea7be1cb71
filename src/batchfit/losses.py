"""Per-sample losses `(y_true, y_pred) -> [B]` with Keras 3 numerics, and their registry.

Elementwise losses average all trailing axes (the same number Keras's mean over the last
axis then "sum_over_batch_size" gives); `Loss.__call__` reduces as `sum(w * l) / B` by default.
`Loss` and `LossFunctionWrapper` (Keras's base classes, for custom losses) live in _loss_base.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from batchfit._crossentropy import (BinaryFocalCrossentropy, CategoricalFocalCrossentropy,
                                    binary_focal_crossentropy, categorical_focal_crossentropy, check_axis,
                                    log_probabilities, sigmoid_terms)
from batchfit._loss_base import EPSILON, Loss, LossFunctionWrapper, _as_float, _per_sample, _prepare, checked
from batchfit._losses_more import (CategoricalHinge, CosineSimilarity, Hinge, KLDivergence, LogCosh,
                                   MeanAbsolutePercentageError, MeanSquaredLogarithmicError, Poisson,
                                   SquaredHinge, categorical_hinge, cosine_similarity, hinge, kl_divergence,
                                   log_cosh, mean_absolute_percentage_error, mean_squared_logarithmic_error,
                                   poisson, squared_hinge)
from batchfit._target_rules import check_sparse_labels, finite_range
from batchfit.errors import describe
from batchfit.registry import Registry

__all__ = [
    "EPSILON", "LOSSES", "Loss", "LossFunctionWrapper", "MeanSquaredError", "MeanAbsoluteError",
    "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "Huber",
    "mean_squared_error", "mean_absolute_error", "binary_crossentropy",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "huber", "get",
    "validate_targets",
    "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError", "CosineSimilarity", "Hinge", "SquaredHinge",
    "CategoricalHinge", "KLDivergence", "Poisson", "LogCosh", "BinaryFocalCrossentropy",
    "CategoricalFocalCrossentropy", "binary_focal_crossentropy", "categorical_focal_crossentropy",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "cosine_similarity", "hinge",
    "squared_hinge", "categorical_hinge", "kl_divergence", "poisson", "log_cosh",
    "mse", "mae", "mape", "msle", "kld", "kullback_leibler_divergence", "logcosh"]

LOSSES = Registry("loss")
_DEFAULT_REDUCTION = "sum_over_batch_size"


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


def binary_crossentropy(y_true, y_pred, from_logits: bool = False, label_smoothing: float = 0.0,
                        axis: int = -1):
    """Per-sample binary crossentropy, Keras numerics (probabilities clipped to [1e-7, 1-1e-7]).

    Args:
        y_true: [B, ...] targets in [0, 1] (or [B] against y_pred [B, 1]).
        y_pred: [B, ...] probabilities, or logits when `from_logits=True`.
        from_logits: use the stable log-sigmoid form instead of clipping. It is also used, as Keras
            on TensorFlow does, when y_pred is the traced output of batchfit's sigmoid (a model's
            `activation="sigmoid"`): at saturation the loss stays exact (30.0 for a logit of 30 on
            the wrong side, where clipping gives 16.1) and keeps its gradient.
        label_smoothing: squeeze targets towards 0.5: `t * (1 - s) + 0.5 * s`.
        axis: Keras's axis of the mean, a feature axis; the per-sample mean covers every trailing axis.
    Returns: [B], averaged over the trailing axes.

    >>> round(float(binary_crossentropy(jnp.array([1.0]), jnp.array([0.8]))[0]), 5)  # -log(0.8)
    0.22314
    """
    y_true, y_pred = _prepare(y_true, y_pred, "binary_crossentropy")
    check_axis(axis, y_pred.ndim, "binary_crossentropy")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return _per_sample(sigmoid_terms(y_true, y_pred, from_logits)[0])


def categorical_crossentropy(y_true, y_pred, from_logits: bool = False,
                             label_smoothing: float = 0.0, axis: int = -1):
    """Per-sample crossentropy of one-hot (or soft) targets over the class axis.

    Args:
        y_true: [B, ..., C] one-hot or probability targets.
        y_pred: [B, ..., C] probabilities (renormalised, then clipped as Keras does),
            or logits when `from_logits=True` (log_softmax). log_softmax of the logits is also
            used when y_pred is the traced output of batchfit's softmax over `axis`, as Keras on
            TensorFlow does.
        label_smoothing: `t * (1 - s) + s / C` (C: the size of the last axis, as Keras).
        axis: the class axis (Keras default -1).
    Returns: [B].

    >>> y = jnp.array([[0.0, 1.0, 0.0]])
    >>> round(float(categorical_crossentropy(y, jnp.array([[0.05, 0.95, 0.0]]))[0]), 4)
    0.0513
    """
    y_true, y_pred = _prepare(
        y_true, y_pred, "categorical_crossentropy",
        " For integer class labels use sparse_categorical_crossentropy.")
    axis = check_axis(axis, y_pred.ndim, "categorical_crossentropy")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_true.shape[-1]
    log_p = log_probabilities(y_pred, from_logits, axis)[0]
    return _per_sample(-jnp.sum(y_true * log_p, axis=axis))


def sparse_categorical_crossentropy(y_true, y_pred, from_logits: bool = False, ignore_class=None,
                                    axis: int = -1):
    """Per-sample crossentropy of integer class labels.

    Args:
        y_true: [B, ...] integer labels in [0, C) (or [B, ..., 1]); floats are cast.
        y_pred: [B, ..., C] probabilities or logits (`from_logits=True`); the traced output of
            batchfit's softmax is computed from its logits, as for categorical_crossentropy.
        ignore_class: a label whose elements count neither in the loss nor in its normaliser, as
            Keras's mask does: per-sample values are scaled by (elements / kept elements) of the
            batch, so their mean is the mean over the kept elements.
        axis: the class axis; only the last axis, as Keras's backends.
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
    if check_axis(axis, y_pred.ndim, "sparse_categorical_crossentropy") != y_pred.ndim - 1:
        raise ValueError(f"sparse_categorical_crossentropy: only the last axis can hold the classes (Keras: "
                         f"'Only axis=-1 is currently supported'); got axis={axis}.")
    labels = labels.astype(jnp.int32)
    one_hot = jax.nn.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
    values = -jnp.sum(one_hot * log_probabilities(y_pred, from_logits)[0], axis=-1)
    if ignore_class is not None:
        keep = labels != ignore_class
        scale = keep.size / jnp.maximum(jnp.sum(keep), 1)        # Keras: total / valid, 0 when none is valid
        values = jnp.where(keep, values * scale.astype(values.dtype), 0.0)
    return _per_sample(values)


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

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, reduction=reduction, name=name, dtype=dtype)


class MeanAbsoluteError(LossFunctionWrapper):
    """Mean absolute error, as `keras.losses.MeanAbsoluteError`."""

    def __init__(self, reduction=_DEFAULT_REDUCTION, name: str = "mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, reduction=reduction, name=name, dtype=dtype)


class BinaryCrossentropy(LossFunctionWrapper):
    """Binary crossentropy, as `keras.losses.BinaryCrossentropy`; from the logits of a sigmoid output
    inside a model, as Keras on TensorFlow (see `binary_crossentropy`)."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1,
                 reduction=_DEFAULT_REDUCTION, name: str = "binary_crossentropy", dtype=None):
        super().__init__(binary_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis

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
    """Categorical crossentropy on one-hot targets, as `keras.losses.CategoricalCrossentropy`; from the
    logits of a softmax output inside a model, as Keras on TensorFlow."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1,
                 reduction=_DEFAULT_REDUCTION, name: str = "categorical_crossentropy", dtype=None):
        super().__init__(categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Crossentropy on integer labels, as `keras.losses.SparseCategoricalCrossentropy`."""

    def __init__(self, from_logits: bool = False, ignore_class=None, reduction=_DEFAULT_REDUCTION,
                 axis: int = -1, name: str = "sparse_categorical_crossentropy", dtype=None):
        if ignore_class is not None and (isinstance(ignore_class, bool) or not isinstance(ignore_class, int)):
            raise TypeError(f"SparseCategoricalCrossentropy: `ignore_class` must be None or an int label (e.g. "
                            f"-1 or 255); got {type(ignore_class).__name__} {ignore_class!r}.")
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, ignore_class=ignore_class, axis=axis)
        self.from_logits, self.ignore_class, self.axis = from_logits, ignore_class, axis

    def _values(self, y_true, y_pred):
        # Labels stay integers: no float cast or rank alignment with y_pred.
        return sparse_categorical_crossentropy(y_true, y_pred, **self.kwargs)

    refuses_nonfinite_targets = True

    def validate_targets(self, y, num_outputs: int | None) -> None:
        """Whole-number class labels in [0, num_outputs), `ignore_class` aside."""
        if self.ignore_class is not None:
            y = np.asarray(y)[np.asarray(y) != self.ignore_class]
        low, high = finite_range(y, "sparse_categorical_crossentropy")
        if low is not None:
            check_sparse_labels(y, low, high, num_outputs, f"y: {describe(y)} has min {low:g} and max {high:g}")


class Huber(LossFunctionWrapper):
    """Huber loss, as `keras.losses.Huber` (Keras names it "huber_loss")."""

    def __init__(self, delta: float = 1.0, reduction=_DEFAULT_REDUCTION, name: str = "huber_loss", dtype=None):
        super().__init__(huber, reduction=reduction, name=name, dtype=dtype, delta=delta)
        self.delta = delta


LOSSES.register("mse", "mean_squared_error")(MeanSquaredError)
LOSSES.register("mae", "mean_absolute_error")(MeanAbsoluteError)
LOSSES.register("binary_crossentropy", "bce")(BinaryCrossentropy)
LOSSES.register("categorical_crossentropy")(CategoricalCrossentropy)
LOSSES.register("sparse_categorical_crossentropy")(SparseCategoricalCrossentropy)
LOSSES.register("huber", "huber_loss")(Huber)
LOSSES.register("mape", "mean_absolute_percentage_error")(MeanAbsolutePercentageError)
LOSSES.register("msle", "mean_squared_logarithmic_error")(MeanSquaredLogarithmicError)
LOSSES.register("cosine_similarity")(CosineSimilarity)
LOSSES.register("hinge")(Hinge)
LOSSES.register("squared_hinge")(SquaredHinge)
LOSSES.register("categorical_hinge")(CategoricalHinge)
LOSSES.register("kld", "kl_divergence", "kullback_leibler_divergence")(KLDivergence)
LOSSES.register("poisson")(Poisson)
LOSSES.register("log_cosh", "logcosh")(LogCosh)
LOSSES.register("binary_focal_crossentropy")(BinaryFocalCrossentropy)
LOSSES.register("categorical_focal_crossentropy")(CategoricalFocalCrossentropy)

# Keras's short names of the functions (tf.keras had them as module attributes).
mse, mae, mape, msle = (mean_squared_error, mean_absolute_error, mean_absolute_percentage_error,
                        mean_squared_logarithmic_error)
kld = kullback_leibler_divergence = kl_divergence
logcosh = log_cosh

_FUNCTION_CLASSES = ((mean_squared_error, MeanSquaredError), (huber, Huber),
                     (mean_absolute_error, MeanAbsoluteError),
                     (binary_crossentropy, BinaryCrossentropy),
                     (categorical_crossentropy, CategoricalCrossentropy),
                     (sparse_categorical_crossentropy, SparseCategoricalCrossentropy),
                     (mean_absolute_percentage_error, MeanAbsolutePercentageError),
                     (mean_squared_logarithmic_error, MeanSquaredLogarithmicError),
                     (cosine_similarity, CosineSimilarity), (hinge, Hinge), (squared_hinge, SquaredHinge),
                     (categorical_hinge, CategoricalHinge), (kl_divergence, KLDivergence),
                     (poisson, Poisson), (log_cosh, LogCosh),
                     (binary_focal_crossentropy, BinaryFocalCrossentropy),
                     (categorical_focal_crossentropy, CategoricalFocalCrossentropy))


def get(identifier) -> Loss:
    """Resolve a loss: a name, a `Loss` (returned as is), or a callable(y_true, y_pred).

    >>> get("bce").name, get("MSE").name, get("CategoricalHinge").name
    ('binary_crossentropy', 'mean_squared_error', 'categorical_hinge')
    """
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        identifier = identifier()
    if isinstance(identifier, Loss):
        return checked(identifier)
    if isinstance(identifier, str):
        classes = {cls.__name__: cls for _, cls in _FUNCTION_CLASSES}    # Keras's get takes class names too
        return classes[identifier]() if identifier in classes else LOSSES.get(identifier)()
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
