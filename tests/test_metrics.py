"""Metrics: per-sample values worked out by hand, and "accuracy" resolved as Keras does."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytest import approx

from batchfit import losses, metrics
from batchfit.metrics import (
    BinaryAccuracy, CategoricalAccuracy, MeanAbsoluteError, MeanMetricWrapper, MeanSquaredError,
    Metric, SparseCategoricalAccuracy, get)


def jitted(fn, **kwargs):
    """`fn` compiled once: eager JAX compiles every op for every new shape, 5x slower."""
    return jax.jit(functools.partial(fn, **kwargs))


def values(metric, y_true, y_pred):
    return np.asarray(jitted(metric.call)(y_true, y_pred)).tolist()


# ------------------------------------------------------------------ values by hand

def test_binary_accuracy_by_hand():
    # p > 0.5 -> [1, 1, 0, 1] against [1, 1, 0, 0]: the last one is wrong (the Keras example)
    y_pred = np.array([[0.98], [1.0], [0.0], [0.6]])
    assert values(BinaryAccuracy(), np.array([1, 1, 0, 0]), y_pred) == [1, 1, 1, 0]
    assert values(BinaryAccuracy(), np.array([[1], [1], [0], [0]]), y_pred) == [1, 1, 1, 0]
    # strictly greater: p = 0.5 is class 0; threshold 0.7 makes 0.6 class 0
    assert values(BinaryAccuracy(), np.array([0.0, 1.0]), np.array([0.5, 0.5])) == [1, 0]
    assert values(BinaryAccuracy(threshold=0.7), np.array([0, 0]), np.array([0.6, 0.8])) == [1, 0]
    # multi-label [B, 3]: share of correct labels per sample, 2/3 and 3/3
    multi = values(BinaryAccuracy(), np.array([[1, 0, 1], [0, 0, 1]]),
                   np.array([[0.9, 0.2, 0.1], [0.1, 0.3, 0.8]]))
    assert multi == approx([2 / 3, 1.0])


def test_categorical_and_sparse_accuracy_by_hand():
    y_pred = np.array([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])   # argmax: 1, 1
    assert values(CategoricalAccuracy(), np.array([[0, 0, 1], [0, 1, 0]]), y_pred) == [0, 1]
    assert values(SparseCategoricalAccuracy(), np.array([2, 1]), y_pred) == [0, 1]
    assert values(SparseCategoricalAccuracy(), np.array([[2], [1]]), y_pred) == [0, 1]
    assert values(SparseCategoricalAccuracy(), np.array([2.0, 1.0]), y_pred) == [0, 1]
    # sequences [B, T, C] with labels [B, T]: per-sample mean over T, 1/2 and 2/2
    seq = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]])
    assert values(SparseCategoricalAccuracy(), np.array([[0, 0], [1, 0]]), seq) == [0.5, 1.0]


def test_regression_metrics_by_hand():
    y_true, y_pred = np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[2.0, 4.0], [0.0, -1.0]])
    assert values(MeanAbsoluteError(), y_true, y_pred) == approx([1.5, 0.5])  # (1+2)/2, (0+1)/2
    assert values(MeanSquaredError(), y_true, y_pred) == approx([2.5, 0.5])   # (1+4)/2, (0+1)/2
    assert values(MeanSquaredError(), np.array([1.0, 2.0]), np.array([[3.0], [2.0]])) == [4, 0]


def test_weighted_mean_of_one_batch_then_running_as_keras():
    # hits [1, 0, 1], weights [3, 1, 0]: (3 + 0 + 0) / 4 = 0.75; unweighted 2/3
    y_true, y_pred = np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])
    assert float(BinaryAccuracy()(y_true, y_pred, np.array([3.0, 1.0, 0.0]))) == approx(0.75)
    acc = BinaryAccuracy()
    assert float(acc(y_true, y_pred)) == approx(2 / 3)
    # __call__ accumulates, as Keras's: (2 + 3 * 1) / (3 + 3) after a second batch [1] of weight 3
    assert float(acc(np.array([1]), np.array([0.6]), np.array([3.0]))) == approx(5 / 6)
    acc.reset_state()
    assert float(acc.result()) == 0.0


def test_outputs_are_float32_per_sample():
    for metric, y_true, y_pred in [
            (BinaryAccuracy(), jnp.zeros((4, 1), bool), jnp.zeros((4, 1), jnp.bfloat16)),
            (CategoricalAccuracy(), jnp.zeros((4, 2, 3)), jnp.zeros((4, 2, 3))),
            (SparseCategoricalAccuracy(), jnp.zeros(4, int), jnp.zeros((4, 3))),
            (MeanAbsoluteError(), jnp.zeros(4), jnp.zeros((4, 1)))]:
        out = jax.eval_shape(metric.call, y_true, y_pred)
        assert (out.shape, out.dtype) == ((4,), jnp.float32)


@pytest.mark.parametrize("metric, y_true, match", [
    (CategoricalAccuracy(), np.array([0, 1, 2, 1]), "integer labels use sparse_categorical"),
    (SparseCategoricalAccuracy(), np.eye(3)[[0, 1, 2, 1]], "one-hot targets use categorical"),
])
def test_label_format_mistakes_are_explained(metric, y_true, match):
    with pytest.raises(ValueError, match=match):
        metric.call(y_true, np.ones((4, 3), np.float32) / 3)


# ------------------------------------------------------------------------ resolution

@pytest.mark.parametrize("loss, expected", [
    ("binary_crossentropy", BinaryAccuracy),
    (losses.BinaryCrossentropy(from_logits=True), BinaryAccuracy),
    ("categorical_crossentropy", CategoricalAccuracy),
    (losses.CategoricalCrossentropy(label_smoothing=0.1), CategoricalAccuracy),
    ("sparse_categorical_crossentropy", SparseCategoricalAccuracy),
    (losses.sparse_categorical_crossentropy, SparseCategoricalAccuracy),
])
def test_accuracy_follows_the_loss_and_keeps_the_users_name(loss, expected):
    for name in ["accuracy", "acc", "Accuracy"]:
        metric = get(name, loss)
        assert type(metric) is expected and metric.name == name


def test_accuracy_for_other_losses_follows_keras_shape_rule():
    # keras/src/trainers/compile_utils.py: y_pred last axis 1 -> binary; y_true of lower
    # rank, or last axis 1 against > 1 -> sparse categorical; otherwise categorical.
    acc = get("accuracy", "mse")
    assert acc.name == "accuracy"
    assert values(acc, np.array([1.0, 0.0]), np.array([[0.7], [0.7]])) == [1, 0]      # binary
    assert values(acc, np.array([1.0, 0.0]), np.array([0.7, 0.7])) == [1, 0]          # binary
    y_pred = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert values(acc, np.array([1, 1]), y_pred) == [1, 0]                            # sparse
    assert values(acc, np.array([[1], [1]]), y_pred) == [1, 0]                        # sparse
    assert values(acc, np.array([[0.0, 1.0], [0.0, 1.0]]), y_pred) == [1, 0]          # one-hot
    assert get("acc", None).name == "acc"
    assert get("acc", lambda t, p: (t - p) ** 2).name == "acc"


def test_get_names_objects_and_callables():
    assert get("mae").name == "mae" and isinstance(get("mae"), MeanAbsoluteError)
    assert get("mean_squared_error").name == "mean_squared_error"
    assert isinstance(get("MSE"), MeanSquaredError) and get("MSE").name == "MSE"
    assert type(get("binary_accuracy", "categorical_crossentropy")) is BinaryAccuracy
    metric = BinaryAccuracy(name="hits", threshold=0.3)
    assert get(metric, "mse") is metric
    assert isinstance(get(CategoricalAccuracy), CategoricalAccuracy)

    def within_one(y_true, y_pred):
        return (jnp.abs(y_true - y_pred) < 1.0).astype(jnp.float32)
    custom = get(within_one)
    assert isinstance(custom, MeanMetricWrapper) and custom.name == "within_one"
    assert values(custom, np.array([[0.0, 0.0], [5.0, 5.0]]), np.array([[0.5, 2.0], [5.0, 5.0]])
                  ) == [0.5, 1.0]
    from_loss = get(losses.BinaryCrossentropy())
    assert from_loss.name == "binary_crossentropy"
    assert values(from_loss, np.array([1.0]), np.array([[0.8]])) == approx([0.22314], abs=1e-5)


def test_get_errors():
    with pytest.raises(ValueError, match="Unknown metric 'binary_acuracy'. Did you mean "
                                         "'binary_accuracy'?"):
        get("binary_acuracy", "binary_crossentropy")
    with pytest.raises(TypeError, match=r"got int\. Pass e\.g\. metrics=\['accuracy'\]"):
        get(1)
    with pytest.raises(ValueError, match="`threshold` must lie in"):
        BinaryAccuracy(threshold=1.5)
    with pytest.raises(NotImplementedError):
        Metric().call(np.zeros(2), np.zeros(2))


def test_registry_names():
    # Keras's strings: each class's snake_case name and class name (the registry ignores case), and
    # Keras's short forms mae, mse, mape, msle, bce; "accuracy"/"acc" follow the loss.
    classes = ["AUC", "BinaryAccuracy", "BinaryCrossentropy", "CategoricalAccuracy", "CategoricalCrossentropy",
               "CategoricalHinge", "CosineSimilarity", "F1Score", "FBetaScore", "FalseNegatives", "FalsePositives",
               "Hinge", "KLDivergence", "LogCoshError", "MeanAbsoluteError", "MeanAbsolutePercentageError",
               "MeanSquaredError", "MeanSquaredLogarithmicError", "Poisson", "Precision", "Recall",
               "RootMeanSquaredError", "SparseCategoricalAccuracy", "SparseCategoricalCrossentropy",
               "SparseTopKCategoricalAccuracy", "SquaredHinge", "TopKCategoricalAccuracy", "TrueNegatives",
               "TruePositives"]
    snake = ["auc", "binary_accuracy", "binary_crossentropy", "categorical_accuracy", "categorical_crossentropy",
             "categorical_hinge", "cosine_similarity", "f1_score", "f_beta_score", "false_negatives",
             "false_positives", "hinge", "kl_divergence", "log_cosh_error", "mean_absolute_error",
             "mean_absolute_percentage_error", "mean_squared_error", "mean_squared_logarithmic_error", "poisson",
             "precision", "recall", "root_mean_squared_error", "sparse_categorical_accuracy",
             "sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy", "squared_hinge",
             "top_k_categorical_accuracy", "true_negatives", "true_positives"]
    expected = {"acc", "accuracy", "mae", "mse", "mape", "msle", "bce", *snake, *(c.lower() for c in classes)}
    assert metrics.METRICS.names() == sorted(expected)
    for name in classes:
        assert type(get(name)) is getattr(metrics, name) and get(name).name == name
