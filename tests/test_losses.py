"""Losses: Keras 3 numerics against float64 NumPy references and hand-worked values."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytest import approx

from batchfit import losses
from batchfit.losses import (
    BinaryCrossentropy, CategoricalCrossentropy, Huber, Loss, LossFunctionWrapper,
    MeanAbsoluteError, MeanSquaredError, SparseCategoricalCrossentropy, get, validate_targets)

EPS = 1e-7
RNG = np.random.default_rng(0)


# ------------------------------------------------------------ float64 NumPy references

def per_sample(values):
    values = np.asarray(values, np.float64)
    return values.reshape(values.shape[0], -1).mean(axis=1)


def ref_mse(t, p):
    return per_sample((t - p) ** 2)


def ref_mae(t, p):
    return per_sample(np.abs(t - p))


def ref_huber(t, p, delta=1.0):
    e = np.abs(p - t)
    return per_sample(np.where(e <= delta, 0.5 * e ** 2, delta * e - 0.5 * delta ** 2))


def ref_bce(t, p, from_logits=False, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:  # -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x))
        return per_sample(t * np.logaddexp(0, -p) + (1 - t) * np.logaddexp(0, p))
    p = np.clip(p, EPS, 1 - EPS)
    return per_sample(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def ref_log_probs(p, from_logits):
    if from_logits:
        shifted = p - p.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.log(np.clip(p / p.sum(axis=-1, keepdims=True), EPS, 1 - EPS))


def ref_cce(t, p, from_logits=False, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    return per_sample(-(t * ref_log_probs(p, from_logits)).sum(axis=-1))


def ref_sparse(labels, p, from_logits=False):
    one_hot = np.eye(p.shape[-1])[labels.astype(int)]
    return per_sample(-(one_hot * ref_log_probs(p, from_logits)).sum(axis=-1))


def probabilities(shape):
    return RNG.uniform(0.01, 0.99, size=shape)


def softmax_rows(shape):
    x = RNG.normal(size=shape)
    return np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)


def jitted(fn, **kwargs):
    """`fn` compiled once: eager JAX compiles every op for every new shape, 5x slower."""
    return jax.jit(functools.partial(fn, **kwargs))


# --------------------------------------------------- every loss vs the NumPy reference
# Each test compiles all its variants in one jit per shape: compiling dominates the runtime.

def check_all(variants, y_true, y_pred, reference):
    """Compare `{name: loss}` on (y_true, y_pred) against `reference(name)` [B] float64."""
    outputs = jax.jit(lambda t, p: {name: loss.call(t, p) for name, loss in variants.items()})(
        y_true, y_pred.astype(np.float32))
    for name, out in outputs.items():
        expected = reference(name)
        assert out.shape == expected.shape, name
        np.testing.assert_allclose(np.asarray(out), expected, rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("shape", [(6,), (6, 1), (6, 2, 3)])
def test_regression_losses_match_reference(shape):
    t, p = RNG.normal(size=shape), RNG.normal(size=shape) * 2
    variants = {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "huber": Huber(),
                "huber_0.3": Huber(delta=0.3)}
    references = {"mse": ref_mse, "mae": ref_mae, "huber": ref_huber,
                  "huber_0.3": lambda t, p: ref_huber(t, p, 0.3)}
    check_all(variants, t.astype(np.float32), p, lambda name: references[name](t, p))


FLAGS = {f"logits={a}, smoothing={s}": (a, s) for a in (False, True) for s in (0.0, 0.2)}


@pytest.mark.parametrize("shape", [(6,), (6, 1), (6, 2, 3)])
def test_binary_crossentropy_matches_reference(shape):
    t = RNG.integers(0, 2, size=shape).astype(np.float64)
    p, logits = probabilities(shape), RNG.normal(size=shape) * 3
    for from_logits in (False, True):
        flags = {k: v for k, v in FLAGS.items() if v[0] == from_logits}
        variants = {k: BinaryCrossentropy(from_logits=a, label_smoothing=s)
                    for k, (a, s) in flags.items()}
        y_pred = logits if from_logits else p
        check_all(variants, t, y_pred, lambda k: ref_bce(t, y_pred, *flags[k]))


@pytest.mark.parametrize("shape", [(5, 4), (5, 2, 3)])
def test_categorical_crossentropy_matches_reference(shape):
    t = np.eye(shape[-1])[RNG.integers(0, shape[-1], size=shape[:-1])]
    # Unnormalised probabilities: Keras divides by the sum over the last axis first.
    p, logits = probabilities(shape), RNG.normal(size=shape) * 3
    for from_logits in (False, True):
        flags = {k: v for k, v in FLAGS.items() if v[0] == from_logits}
        variants = {k: CategoricalCrossentropy(from_logits=a, label_smoothing=s)
                    for k, (a, s) in flags.items()}
        y_pred = logits if from_logits else p
        check_all(variants, t, y_pred, lambda k: ref_cce(t, y_pred, *flags[k]))


@pytest.mark.parametrize("label_shape, pred_shape", [
    ((5,), (5, 4)), ((5, 1), (5, 4)), ((5, 3), (5, 3, 4))])
def test_sparse_categorical_crossentropy_matches_reference(label_shape, pred_shape):
    labels = RNG.integers(0, pred_shape[-1], size=label_shape)
    probs, logits = softmax_rows(pred_shape), RNG.normal(size=pred_shape) * 3
    flat = labels.reshape(pred_shape[:-1])
    for from_logits, p in [(False, probs), (True, logits)]:
        variants = {"int": SparseCategoricalCrossentropy(from_logits=from_logits)}
        check_all(variants, labels, p, lambda _: ref_sparse(flat, p, from_logits))
    float_labels = {"float labels": SparseCategoricalCrossentropy()}
    check_all(float_labels, labels.astype(np.float32), probs, lambda _: ref_sparse(flat, probs))


@pytest.mark.parametrize("loss, ref, kind", [
    (MeanSquaredError(), ref_mse, "real"), (BinaryCrossentropy(), ref_bce, "binary"),
    (CategoricalCrossentropy(from_logits=True),
     lambda t, p: ref_cce(t, p, from_logits=True), "onehot"),
])
def test_sample_weights_sum_over_batch_size(loss, ref, kind):
    p = probabilities((8, 3)) if kind != "onehot" else RNG.normal(size=(8, 3))
    t = {"real": RNG.normal(size=(8, 3)), "binary": RNG.integers(0, 2, (8, 3)) * 1.0,
         "onehot": np.eye(3)[RNG.integers(0, 3, 8)]}[kind]
    w = RNG.uniform(0, 2, size=8)
    w[3] = 0.0  # a padding row: weight 0, still counted in B
    expected, p = np.sum(w * ref(t, p)) / 8, p.astype(np.float32)
    assert float(jitted(loss)(t, p, w)) == approx(expected, rel=2e-5)
    assert float(jitted(loss)(t, p, w[:, None])) == approx(expected, rel=2e-5)
    assert float(jitted(loss)(t, p)) == approx(ref(t, p).mean(), rel=2e-5)


# ------------------------------------------------------------------ hand-worked values

def test_binary_crossentropy_by_hand():
    bce = jitted(losses.binary_crossentropy)
    # y = [1, 0] at p = 0.8: -log 0.8 = 0.22314, -log 0.2 = 1.60944
    assert np.asarray(bce(jnp.array([1.0, 0.0]), jnp.array([0.8, 0.8]))) == approx(
        [0.22314, 1.60944], abs=1e-5)
    # [B, 2] averages the last axis: (-log 0.8 - log 0.5) / 2 = (0.22314 + 0.69315) / 2
    two = bce(jnp.array([[1.0, 0.0]]), jnp.array([[0.8, 0.5]]))
    assert two.shape == (1,) and float(two[0]) == approx(0.45815, abs=1e-5)
    # logits: x = 0 is p = 0.5 -> log 2; x = 100, y = 0 -> 100 (no overflow)
    logits = jitted(losses.binary_crossentropy, from_logits=True)(
        jnp.array([1.0, 0.0]), jnp.array([0.0, 100.0]))
    assert np.asarray(logits) == approx([0.69315, 100.0], abs=1e-5)
    # smoothing 0.2: t = 1 -> 0.9; -(0.9 log 0.8 + 0.1 log 0.2) = 0.20083 + 0.16094
    smooth = jitted(losses.binary_crossentropy, label_smoothing=0.2)(
        jnp.array([1.0]), jnp.array([0.8]))
    assert float(smooth[0]) == approx(0.36177, abs=1e-5)


def test_probability_clipping_matches_keras():
    bce = jitted(BinaryCrossentropy().call)
    # y = 1 at p = 0 is clipped to 1e-7: -log(1e-7) = 16.118.
    # y = 0 at p = 1: 1 - float32(1 - 1e-7) = 2**-23 = 1.1921e-7, -log = 15.942 (as Keras).
    # Exact predictions still cost -log(1 - 1e-7) ~ 1e-7.
    out = bce(jnp.array([1.0, 0.0, 1.0, 0.0]), jnp.array([0.0, 1.0, 1.0, 0.0]))
    assert np.asarray(out)[:2] == approx([16.118, 15.942], abs=1e-3)
    assert np.all(np.asarray(out)[2:] < 2e-7)
    cce = jitted(CategoricalCrossentropy().call)
    assert float(cce(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]))[0]) == approx(
        16.118, abs=1e-3)
    grads = jax.jit(jax.grad(lambda p: BinaryCrossentropy()(jnp.array([1.0, 0.0]), p)))(
        jnp.array([0.0, 1.0]))
    assert np.all(np.isfinite(np.asarray(grads)))


def test_categorical_and_sparse_by_hand():
    p = jnp.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    # -log 0.95 = 0.05129; -log 0.1 = 2.30259 (the Keras docstring example)
    cce = jitted(losses.categorical_crossentropy)(jnp.array([[0.0, 1, 0], [0, 0, 1]]), p)
    assert np.asarray(cce) == approx([0.05129, 2.30259], abs=1e-5)
    sparse = jitted(losses.sparse_categorical_crossentropy)(jnp.array([1, 2]), p)
    assert np.asarray(sparse) == approx([0.05129, 2.30259], abs=1e-5)
    # unnormalised [2, 2] is divided by its sum 4: -log 0.5 = 0.69315
    unnormalised = jitted(losses.categorical_crossentropy)(jnp.array([[1.0, 0]]),
                                                           jnp.array([[2.0, 2]]))
    assert float(unnormalised[0]) == approx(0.69315, abs=1e-5)
    # logits [0, log 3]: softmax [0.25, 0.75]; label 0 -> -log 0.25 = 1.38629
    logits = jnp.array([[0.0, math.log(3.0)]])
    from_logits = jitted(losses.sparse_categorical_crossentropy, from_logits=True)
    assert float(from_logits(jnp.array([0]), logits)[0]) == approx(1.38629, abs=1e-5)


def test_regression_by_hand():
    t, p = jnp.array([[1.0, 2.0]]), jnp.array([[2.0, 4.0]])
    assert float(jitted(losses.mean_squared_error)(t, p)[0]) == approx(2.5)   # (1 + 4) / 2
    assert float(jitted(losses.mean_absolute_error)(t, p)[0]) == approx(1.5)  # (1 + 2) / 2
    # errors 0.5 and 2: 0.5 * 0.25 = 0.125; 1 * 2 - 0.5 = 1.5; mean 0.8125
    huber = jitted(losses.huber)(jnp.array([[0.0, 0.0]]), jnp.array([[0.5, 2.0]]))
    assert float(huber[0]) == approx(0.8125)
    # [B] against [B, 1] is aligned, not broadcast to [B, B]: (1 + 0.25 + 0) / 3
    loss = jitted(MeanSquaredError())(jnp.array([1.0, 2.0, 3.0]), jnp.array([[2.0], [2.5], [3.0]]))
    assert float(loss) == approx(1.25 / 3)


def test_per_sample_output_is_always_batch_shaped():
    def shape_of(loss, y_true, y_pred):  # traced only, never compiled
        return jax.eval_shape(loss.call, y_true, y_pred).shape
    for shape in [(4,), (4, 1), (4, 3), (4, 2, 3)]:
        t = jnp.zeros(shape)
        assert shape_of(MeanSquaredError(), t, t) == (4,)
        assert shape_of(BinaryCrossentropy(), t, t) == (4,)
        assert shape_of(CategoricalCrossentropy(from_logits=True), t, t) == (4,)
    assert shape_of(BinaryCrossentropy(), jnp.zeros((4, 1)), jnp.zeros(4)) == (4,)
    assert shape_of(SparseCategoricalCrossentropy(), jnp.zeros((4, 2), int), jnp.zeros((4, 2, 5))
                    ) == (4,)


def test_dtypes_integer_targets_and_half_precision():
    bce = jitted(BinaryCrossentropy().call)
    out = bce(np.array([1, 0]), jnp.array([[0.8], [0.2]], jnp.bfloat16))
    assert out.dtype == jnp.float32
    assert np.asarray(out) == approx([0.22314, 0.22314], abs=2e-3)  # bf16 rounds 0.8
    mse = jax.eval_shape(MeanSquaredError().call, jnp.array([1, 2]), jnp.array([1, 2]))
    assert mse.dtype == jnp.float32


def test_jit_gives_the_same_numbers():
    t, p, w = np.eye(3)[[0, 2, 1, 1]], softmax_rows((4, 3)), np.array([1.0, 2.0, 0.0, 1.0])
    loss = CategoricalCrossentropy()
    assert float(jax.jit(loss)(t, p, w)) == approx(float(loss(t, p, w)), rel=1e-6)


@pytest.mark.parametrize("loss, y_true, y_pred, match", [
    (MeanSquaredError(), np.zeros((4, 3)), np.zeros((4, 2)), "same shape"),
    (CategoricalCrossentropy(), np.array([0, 1, 2, 1]), np.ones((4, 3)) / 3,
     "sparse_categorical_crossentropy"),
    (SparseCategoricalCrossentropy(), np.eye(3)[[0, 1, 2, 1]], np.ones((4, 3)) / 3,
     "one-hot targets use categorical_crossentropy"),
])
def test_shape_mismatch_errors_name_the_shapes_and_the_fix(loss, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match) as info:
        loss.call(y_true, y_pred)
    assert "float32[4, 3]" in str(info.value)


def test_sample_weight_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"sample_weight.*\[B\] = \[4\].*float32\[3\]"):
        MeanSquaredError()(np.zeros(4), np.zeros(4), np.ones(3))


# ----------------------------------------------------------------------------- get

def test_get_resolves_names_aliases_and_objects():
    expected = {"mse": "mean_squared_error", "MEAN_SQUARED_ERROR": "mean_squared_error",
                "mae": "mean_absolute_error", "bce": "binary_crossentropy",
                "binary_crossentropy": "binary_crossentropy",
                "categorical_crossentropy": "categorical_crossentropy",
                "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
                "huber": "huber_loss", "huber_loss": "huber_loss"}
    for identifier, name in expected.items():
        assert get(identifier).name == name
    loss = BinaryCrossentropy(from_logits=True)
    assert get(loss) is loss
    assert isinstance(get(Huber), Huber)
    assert isinstance(get(losses.sparse_categorical_crossentropy), SparseCategoricalCrossentropy)
    assert isinstance(get("bce"), BinaryCrossentropy) and not get("bce").from_logits


def test_get_wraps_callables_as_per_sample_losses():
    def squared_sum(y_true, y_pred):  # [B, 2] -> [B, 2]: trailing axis averaged
        return (y_true - y_pred) ** 2
    loss = get(squared_sum)
    assert isinstance(loss, LossFunctionWrapper) and loss.name == "squared_sum"
    out = jitted(loss.call)(np.zeros((2, 2)), np.array([[1.0, 3.0], [2.0, 0.0]]))
    assert np.asarray(out) == approx([5.0, 2.0])  # (1 + 9) / 2, (4 + 0) / 2
    scalar = get(lambda t, p: jnp.mean(jnp.abs(t - p)))  # scalar -> broadcast to [B]
    assert scalar.name == "custom_loss"
    y_pred = np.array([1.0, 2.0, 3.0])
    assert np.asarray(jitted(scalar.call)(np.zeros(3), y_pred)) == approx([2.0] * 3)
    # weights [1, 1, 0]: sum(w * 2) / 3 = 4 / 3
    assert float(jitted(scalar)(np.zeros(3), y_pred, np.array([1.0, 1.0, 0.0]))) == approx(4 / 3)


def test_get_errors_say_what_was_given_and_how_to_fix_it():
    with pytest.raises(ValueError, match="Unknown loss 'binary_crossentropyy'. Did you mean "
                                         "'binary_crossentropy'?"):
        get("binary_crossentropyy")
    with pytest.raises(TypeError, match=r"got int\. Pass e\.g\. loss='binary_crossentropy'"):
        get(3)
    with pytest.raises(TypeError, match=r"got float32\[2\]"):
        get(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"returned float32\[3\] for a batch of 2"):
        get(lambda t, p: jnp.zeros(3)).call(np.zeros(2), np.zeros(2))


def test_loss_base_class_needs_call():
    with pytest.raises(NotImplementedError):
        Loss()(np.zeros(2), np.zeros(2))


# ------------------------------------------------------------------ validate_targets

def test_validate_targets_accepts_good_data_and_ignores_other_losses():
    validate_targets("sparse_categorical_crossentropy", np.array([0, 2, 1, 2]), 3)
    validate_targets("sparse_categorical_crossentropy", np.array([[0.0], [2.0]]), 3)
    validate_targets("bce", np.array([0.0, 1.0, 0.3]), 1)
    validate_targets(BinaryCrossentropy(from_logits=True), np.array([True, False]), 1)
    validate_targets("mse", np.array([-5.0, 100.0]), 1)
    validate_targets("categorical_crossentropy", np.array([7, 9]), 3)


@pytest.mark.parametrize("y, num_outputs, match", [
    (np.array([0, 3, 1]), 3, r"in \[0, 3\) for a model with 3 outputs; y: int64\[3\] has "
                             r"min 0 and max 3\. Give the last layer 4 units"),
    (np.array([1, 2, 3]), 3, "look 1-based: pass y - 1"),
    (np.array([-1, 0, 1]), 3, r"min -1 and max 1\. Remap the labels"),
    (np.array([0, 1, 1]), 1, "With one output unit use loss='binary_crossentropy'"),
    (np.array([0.0, 0.5, 1.0]), 3, "non-integer values"),
])
def test_validate_targets_rejects_bad_sparse_labels(y, num_outputs, match):
    with pytest.raises(ValueError, match=match):
        validate_targets(SparseCategoricalCrossentropy(), y, num_outputs)


def test_validate_targets_rejects_binary_targets_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]; y: float64\[3\] has min -1 and max 1\. "
                                         r"For labels in \{-1, 1\} pass \(y \+ 1\) / 2"):
        validate_targets("binary_crossentropy", np.array([-1.0, 1.0, 1.0]), 1)
    with pytest.raises(ValueError, match="max 2"):
        validate_targets("bce", np.array([0, 1, 2]), 1)




def test_ignore_class_is_left_out_of_the_loss_and_of_its_count():
    """Keras's example: labels [0, 1, 2, 1], class 1 ignored: (-log .2 - log .4) / 2 = 1.2629; per sample
    the kept values are scaled by 4 elements / 2 kept, so that their mean over the batch is that number."""
    p = np.array([[.2, .3, .5], [.1, .1, .8], [.3, .3, .4], [.5, .25, .25]], np.float32)
    loss = SparseCategoricalCrossentropy(ignore_class=1)
    assert float(loss(np.array([0, 1, 2, 1]), p)) == approx((-math.log(.2) - math.log(.4)) / 2, rel=1e-6)
    np.testing.assert_allclose(loss.per_sample(np.array([0, 1, 2, 1]), p),
                               [-2 * math.log(.2), 0, -2 * math.log(.4), 0], rtol=1e-6)
    validate_targets(SparseCategoricalCrossentropy(ignore_class=255), np.array([0, 255, 2]), 3)


def test_hinge_maps_a_batch_of_0_1_labels_to_minus_1_1():
    """[1, 0] -> [1, -1]: max(1 - 0.5, 0) = 0.5 and max(1 - 2, 0) = 0; a batch holding -1 keeps its labels."""
    assert float(losses.hinge(np.array([[1.0, 0.0]]), np.array([[0.5, -2.0]]))[0]) == approx(0.25)
    assert float(losses.hinge(np.array([[1.0, -1.0]]), np.array([[0.5, 2.0]]))[0]) == approx((0.5 + 3.0) / 2)


@pytest.mark.parametrize("loss, activation, target", [
    ("mape", None, "positive"), ("msle", "softplus", "positive"), ("poisson", "softplus", "counts"),
    ("logcosh", None, "positive"), ("cosine_similarity", None, "positive"), ("hinge", None, "binary"),
    ("squared_hinge", "tanh", "binary"), ("categorical_hinge", None, "onehot"), ("kld", "softmax", "onehot"),
    ("binary_focal_crossentropy", "sigmoid", "binary"), ("categorical_focal_crossentropy", "softmax", "onehot"),
])
def test_model_with_the_loss_compiles_and_fits(loss, activation, target):
    import batchfit as bf
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = {"positive": np.abs(x[:, :3]) + 0.5, "counts": rng.poisson(2.0, size=(16, 3)),
         "binary": (x[:, :3] > 0), "onehot": np.eye(3)[np.argmax(x[:, :3], axis=1)]}[target].astype(np.float32)
    model = bf.Sequential([bf.layers.Dense(3, activation=activation, input_shape=(4,))], seed=0)
    model.compile(optimizer=bf.optimizers.Adam(0.05), loss=loss)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
