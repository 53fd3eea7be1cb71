"""Every batchfit loss against Keras 3 itself (KERAS_BACKEND=jax): values, sample weights, reductions,
the per-sample functions, gradients w.r.t. y_pred, get_config and the registry names.

Away from saturation batchfit's numbers are Keras's to float32 rounding (rtol 1e-5); at saturation a
model's sigmoid/softmax output is computed from its logits instead (tests/test_losses_logits.py).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")

RTOL, ATOL = 1e-5, 1e-6
SHAPES = [(5, 3), (5, 2, 3)]       # [B, C] and [B, T, C]


def data(kind: str, shape, seed: int = 0):
    """(y_true, y_pred) float32 (int labels for "sparse") of the domain a loss expects."""
    rng = np.random.default_rng(seed)
    normal, classes = rng.normal(size=shape), shape[-1]
    labels = rng.integers(0, classes, size=shape[:-1])
    softmax = np.exp(normal) / np.exp(normal).sum(-1, keepdims=True)
    y_true, y_pred = {
        "real": (rng.normal(size=shape) + np.sign(normal) * 0.5, 2 * normal),
        "signs": (rng.choice([-1.0, 1.0], size=shape), 2 * normal),
        "binary": (rng.integers(0, 2, size=shape), 2 * normal),
        "onehot": (np.eye(classes)[labels], 2 * normal),
        "distribution": (np.eye(classes)[labels] * 0.7 + 0.1, softmax),
        "counts": (rng.poisson(2.0, size=shape), np.exp(normal)),
        "binary_probs": (rng.uniform(0, 1, size=shape), rng.uniform(0.02, 0.98, size=shape)),
        "binary_logits": (rng.integers(0, 2, size=shape), 3 * normal),
        "onehot_probs": (np.eye(classes)[labels], softmax),
        "onehot_logits": (np.eye(classes)[labels], 3 * normal),
        "sparse_probs": (labels, softmax),
        "sparse_logits": (labels, 3 * normal),
    }[kind]
    y_true = y_true.astype(np.int32 if kind.startswith("sparse") else np.float32)
    return y_true, y_pred.astype(np.float32)


CASES = [  # (class, kwargs, data kind, the per-sample function)
    ("MeanSquaredError", {}, "real", "mean_squared_error"),
    ("MeanAbsoluteError", {}, "real", "mean_absolute_error"),
    ("MeanAbsolutePercentageError", {}, "real", "mean_absolute_percentage_error"),
    ("MeanSquaredLogarithmicError", {}, "real", "mean_squared_logarithmic_error"),   # negatives: clamped
    ("CosineSimilarity", {}, "real", "cosine_similarity"),
    ("CosineSimilarity", {"axis": 1}, "real", "cosine_similarity"),
    ("LogCosh", {}, "real", "log_cosh"),
    ("Huber", {"delta": 0.5}, "real", "huber"),
    ("Hinge", {}, "signs", "hinge"),
    ("Hinge", {}, "binary", "hinge"),                     # 0/1 labels become -1/1
    ("SquaredHinge", {}, "signs", "squared_hinge"),
    ("SquaredHinge", {}, "binary", "squared_hinge"),
    ("CategoricalHinge", {}, "onehot", "categorical_hinge"),
    ("KLDivergence", {}, "distribution", "kl_divergence"),
    ("Poisson", {}, "counts", "poisson"),
    ("BinaryCrossentropy", {}, "binary_probs", "binary_crossentropy"),
    ("BinaryCrossentropy", {"from_logits": True, "label_smoothing": 0.2}, "binary_logits", "binary_crossentropy"),
    ("CategoricalCrossentropy", {}, "onehot_probs", "categorical_crossentropy"),
    ("CategoricalCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, "onehot_logits",
     "categorical_crossentropy"),
    ("SparseCategoricalCrossentropy", {}, "sparse_probs", "sparse_categorical_crossentropy"),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "sparse_logits", "sparse_categorical_crossentropy"),
    ("SparseCategoricalCrossentropy", {"ignore_class": 1}, "sparse_probs", None),
    ("BinaryFocalCrossentropy", {}, "binary_probs", "binary_focal_crossentropy"),
    ("BinaryFocalCrossentropy", {"apply_class_balancing": True, "alpha": 0.4, "gamma": 1.5,
                                 "label_smoothing": 0.1}, "binary_probs", "binary_focal_crossentropy"),
    ("BinaryFocalCrossentropy", {"from_logits": True, "gamma": 3.0}, "binary_logits", "binary_focal_crossentropy"),
    ("CategoricalFocalCrossentropy", {}, "onehot_probs", "categorical_focal_crossentropy"),
    ("CategoricalFocalCrossentropy", {"alpha": [0.2, 0.3, 0.5], "gamma": 1.0, "from_logits": True,
                                      "label_smoothing": 0.1}, "onehot_logits", "categorical_focal_crossentropy"),
]
IDS = [f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{kind}" for c, kw, kind, _ in CASES]


def both(cls: str, kwargs: dict, batches, function):
    """[{quantity: (keras value, batchfit value)} per (y_true, y_pred, weight)], all in one jit (compiling
    dominates the time)."""
    theirs, mine = getattr(keras.losses, cls)(**kwargs), getattr(bf.losses, cls)(**kwargs)

    def one(y_true, p, weight):
        out = {"value": (theirs(y_true, p), mine(y_true, p)),
               "weighted": (theirs(y_true, p, weight), mine(y_true, p, weight)),
               "grad": tuple(jax.grad(lambda q, f=f: f(y_true, q, weight))(p) for f in (theirs, mine))}
        if function:
            out["function"] = (getattr(keras.losses, function)(y_true, p, **kwargs),
                               getattr(bf.losses, function)(y_true, p, **kwargs))
        return out
    return jax.jit(lambda batches: [one(*batch) for batch in batches])(batches)


@pytest.mark.parametrize("cls, kwargs, kind, function", CASES, ids=IDS)
def test_loss_matches_keras(cls, kwargs, kind, function):
    batches = []
    for shape in SHAPES:
        # Keras broadcasts weights against the per-element losses [B, T]: [B, 1] weighs whole samples.
        weight = np.random.default_rng(1).uniform(0, 2, size=(shape[0],) + (1,) * (len(shape) - 2))
        batches.append((*data(kind, shape), weight.astype(np.float32)))
    for shape, results in zip(SHAPES, both(cls, kwargs, batches, function)):
        for quantity, (expected, actual) in results.items():
            expected = np.asarray(expected)
            if quantity == "function":      # Keras keeps the trailing axes of [B, T, C] losses: [B, T]
                expected = expected.reshape(shape[0], -1).mean(axis=1)
            np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{cls}{kwargs} {quantity} {shape}")


def test_reductions_match_keras():
    y_true, y_pred = data("binary_probs", (6, 4))
    weight = np.linspace(0.0, 1.0, 6).astype(np.float32)
    pairs = [(getattr(keras.losses, cls)(reduction=reduction), getattr(bf.losses, cls)(reduction=reduction))
             for cls in ("Poisson", "BinaryFocalCrossentropy", "CosineSimilarity")
             for reduction in ("sum", "none", "mean_with_sample_weight", "mean")]
    results = jax.jit(lambda t, p, w: [(theirs(t, p, w), mine(t, p, w)) for theirs, mine in pairs])(
        y_true, y_pred, weight)
    for (theirs, mine), (expected, actual) in zip(pairs, results):
        assert actual.shape == expected.shape
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{mine.name} {mine.reduction}")


def test_class_axis_matches_keras():
    """Classes on axis 1 of [B, C, T]: the softmax-normalisation and the sum run over that axis."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3, 2)).astype(np.float32)
    y_true = np.moveaxis(np.eye(3)[rng.integers(0, 3, size=(4, 2))], -1, 1).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cases = (("CategoricalCrossentropy", {}, probs), ("CategoricalCrossentropy", {"from_logits": True}, logits),
             ("CategoricalFocalCrossentropy", {"gamma": 1.0}, probs), ("BinaryCrossentropy", {}, probs))
    results = jax.jit(lambda: [(getattr(keras.losses, cls)(axis=1, **kwargs)(y_true, y_pred),
                                getattr(bf.losses, cls)(axis=1, **kwargs)(y_true, y_pred))
                               for cls, kwargs, y_pred in cases])()
    for (cls, _, _), (expected, actual) in zip(cases, results):
        np.testing.assert_allclose(float(actual), float(expected), rtol=RTOL, err_msg=cls)


@pytest.mark.parametrize("cls, kwargs, kind, function", CASES, ids=IDS)
def test_get_config_round_trips_and_matches_keras(cls, kwargs, kind, function):
    mine = getattr(bf.losses, cls)(name="custom", **kwargs)
    config = mine.get_config()
    again = type(mine).from_config(config)
    assert again.get_config() == config and again.name == "custom"
    keras_config = getattr(keras.losses, cls)(name="custom", **kwargs).get_config()
    forgotten = {"CosineSimilarity": "axis", "Huber": "delta", "SparseCategoricalCrossentropy": "axis"}
    if cls in forgotten:         # Keras's get_config forgets this argument; batchfit keeps it
        name = forgotten[cls]
        assert config.pop(name) == kwargs.get(name, 1.0 if name == "delta" else -1)
    assert config == keras_config
    assert getattr(keras.losses, cls).from_config(mine.get_config()).get_config() == keras_config


KERAS_IDENTIFIERS = ["mse", "MSE", "mae", "mape", "MAPE", "msle", "kld", "KLD", "bce", "hinge", "squared_hinge",
                     "categorical_hinge", "kl_divergence", "poisson", "log_cosh", "cosine_similarity", "huber",
                     "mean_absolute_percentage_error", "mean_squared_logarithmic_error",
                     "binary_focal_crossentropy", "categorical_focal_crossentropy", "Poisson", "LogCosh",
                     "Hinge", "KLDivergence", "CosineSimilarity", "BinaryFocalCrossentropy"]


@pytest.mark.parametrize("identifier", KERAS_IDENTIFIERS)
def test_keras_loss_names_resolve_to_the_same_loss(identifier):
    """What Keras's compile(loss=identifier) runs, batchfit's runs too (the same numbers)."""
    y_true, y_pred = data("binary_probs", (4, 3))
    theirs, mine = keras.losses.get(identifier), bf.losses.get(identifier)
    assert isinstance(mine, bf.losses.Loss)
    expected = np.mean(np.asarray(theirs(y_true, y_pred)))
    np.testing.assert_allclose(float(mine(y_true, y_pred)), expected, rtol=RTOL)


def test_aliases_are_the_functions():
    assert bf.losses.mape is bf.losses.mean_absolute_percentage_error
    assert bf.losses.msle is bf.losses.mean_squared_logarithmic_error
    assert bf.losses.kld is bf.losses.kullback_leibler_divergence is bf.losses.kl_divergence
    assert bf.losses.logcosh is bf.losses.log_cosh
    assert bf.losses.get("logcosh").name == "log_cosh"
    assert isinstance(bf.losses.get(bf.losses.squared_hinge), bf.losses.SquaredHinge)


@pytest.mark.parametrize("make, error, match", [
    (lambda: bf.losses.BinaryFocalCrossentropy(gamma=-1.0), ValueError, "`gamma`"),
    (lambda: bf.losses.BinaryFocalCrossentropy(alpha="0.25"), TypeError, "`alpha`"),
    (lambda: bf.losses.BinaryFocalCrossentropy(alpha=[0.2, 0.8]), TypeError, "`alpha`"),
    (lambda: bf.losses.CategoricalFocalCrossentropy(label_smoothing=2.0), ValueError, "`label_smoothing`"),
    (lambda: bf.losses.CosineSimilarity(axis=1.5), TypeError, "`axis`"),
    (lambda: bf.losses.SparseCategoricalCrossentropy(ignore_class="void"), TypeError, "`ignore_class`"),
    (lambda: bf.losses.Hinge(reduction="average"), ValueError, "`reduction`"),
    (lambda: bf.losses.CategoricalCrossentropy(axis=0)(np.eye(3), np.eye(3)), ValueError, "`axis`=0"),
    (lambda: bf.losses.categorical_crossentropy(np.eye(3), np.eye(3), axis=True), ValueError, "`axis`"),
    (lambda: bf.losses.cosine_similarity(np.ones((2, 3)), np.ones((2, 3)), axis=2), ValueError, "`axis`=2"),
    (lambda: bf.losses.sparse_categorical_crossentropy(np.zeros((2, 3)), np.ones((2, 3, 4)), axis=1),
     ValueError, "last axis"),
    (lambda: bf.losses.kl_divergence(np.ones((2, 3)), np.ones((2, 4))), ValueError, "kl_divergence needs"),
])
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()
