"""Reshaping, activation, noise, Lambda and merging layers against Keras 3 itself (KERAS_BACKEND=jax).

Each layer is built in both libraries on the same inputs, Keras's weights (PReLU's alpha) copied into
batchfit's; outputs and the gradients of sum(output * cotangent) w.r.t. the inputs and the weights
(jax.grad through the batchfit module, jax.grad through Keras's `stateless_call`) agree to RTOL.
Noise layers: inference is the identity, as Keras's; training draws follow the laws Keras's do
(their values cannot match Keras's random generator).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import batchfit as bf
from batchfit import layers as L

keras = pytest.importorskip("keras")

RTOL, ATOL = 1e-5, 1e-6
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")   # Keras's get_weights


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def scaled_square(x, alpha=1.0):
    """A named function for Lambda: saved by name, so its config round-trips through JSON."""
    return alpha * jnp.square(x)


def doubled_in_training(x, training=None):
    return x * 2.0 if training else x


def ours_gradients(layer, inputs, cotangent):
    """jax.grad of sum(layer(inputs) * cotangent) w.r.t. (the weights in Keras order, the inputs)."""
    graph, params, rest = nnx.split(layer._module, nnx.Param, ...)

    def loss(params, inputs):
        return jnp.sum(nnx.merge(graph, params, rest)(inputs) * cotangent)

    d_params, d_inputs = jax.grad(loss, argnums=(0, 1))(params, inputs)
    return [v[...] for v in L.keras_weight_variables(nnx.merge(graph, d_params, rest))], d_inputs


def keras_gradients(layer, inputs, cotangent):
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(weights, inputs):
        return jnp.sum(layer.stateless_call(weights, non_trainable, inputs)[0] * cotangent)

    return jax.grad(loss, argnums=(0, 1))([v.value for v in layer.trainable_variables], inputs)


def assert_close(mine, theirs):
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


def assert_matches_keras(ours, theirs, inputs):
    """Same outputs, output shapes and gradients as the Keras layer, from Keras's weights."""
    expected = np.asarray(theirs(inputs))
    ours(inputs)                                              # builds it
    ours.set_weights(theirs.get_weights())
    out = ours(inputs)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_allclose(np.asarray(out), expected, rtol=RTOL, atol=ATOL)
    per_sample = ([tuple(x.shape[1:]) for x in inputs] if isinstance(inputs, list) else tuple(inputs.shape[1:]))
    assert tuple(ours.compute_output_shape(per_sample)) == expected.shape[1:]
    cotangent = normal(expected.shape, seed=7)
    assert_close(ours_gradients(ours, inputs, cotangent), keras_gradients(theirs, inputs, cotangent))
    return out


# name, kwargs, per-sample input shape
ONE_INPUT = [
    ("Reshape", dict(target_shape=(3, -1)), (4, 6)),
    ("Reshape", dict(target_shape=(2, 2, 6)), (4, 6)),
    ("Permute", dict(dims=(2, 1)), (4, 6)),
    ("Permute", dict(dims=(3, 1, 2)), (2, 3, 4)),
    ("RepeatVector", dict(n=3), (5,)),
    ("ZeroPadding1D", dict(), (4, 3)),
    ("ZeroPadding1D", dict(padding=(1, 2)), (4, 3)),
    ("ZeroPadding2D", dict(padding=2), (3, 4, 2)),
    ("ZeroPadding2D", dict(padding=((1, 2), (0, 1))), (3, 4, 2)),
    ("UpSampling1D", dict(size=3), (4, 2)),
    ("UpSampling2D", dict(size=(2, 3)), (3, 4, 2)),
    ("UpSampling2D", dict(size=2, interpolation="bilinear"), (3, 4, 2)),
    ("UpSampling2D", dict(size=(3, 2), interpolation="bicubic"), (3, 4, 2)),
    ("Cropping1D", dict(), (6, 3)),
    ("Cropping1D", dict(cropping=(0, 2)), (6, 3)),
    ("Cropping2D", dict(cropping=1), (5, 6, 2)),
    ("Cropping2D", dict(cropping=((1, 0), (2, 1))), (5, 6, 2)),
    ("ReLU", dict(), (4, 5)),
    ("ReLU", dict(max_value=0.8, negative_slope=0.1, threshold=0.3), (4, 5)),
    ("ReLU", dict(max_value=6.0), (4, 5)),
    ("ReLU", dict(negative_slope=0.2), (4, 5)),
    ("ReLU", dict(threshold=0.5), (4, 5)),
    ("LeakyReLU", dict(), (4, 5)),
    ("LeakyReLU", dict(negative_slope=0.05), (4, 5)),
    ("ELU", dict(), (4, 5)),
    ("ELU", dict(alpha=0.5), (4, 5)),
    ("Softmax", dict(), (3, 5)),
    ("Softmax", dict(axis=1), (3, 5)),
    ("Softmax", dict(axis=[1, 2]), (3, 5)),
    ("Identity", dict(), (3, 5)),
    ("PReLU", dict(alpha_initializer="random_uniform"), (3, 5)),
    ("PReLU", dict(alpha_initializer="random_uniform", shared_axes=[1, 2]), (3, 4, 2)),
    ("Lambda", dict(function=scaled_square, arguments={"alpha": 0.5}), (3, 5)),
    ("GaussianNoise", dict(stddev=0.3), (3, 5)),           # inference: the identity
    ("GaussianDropout", dict(rate=0.3), (3, 5)),
    ("SpatialDropout1D", dict(rate=0.3), (3, 5)),
    ("SpatialDropout2D", dict(rate=0.3), (3, 4, 2)),
]


@pytest.mark.parametrize("name, kwargs, shape", ONE_INPUT, ids=lambda v: v if isinstance(v, str) else None)
def test_layer_matches_keras(name, kwargs, shape):
    x = normal((2, *shape))
    ours, theirs = getattr(L, name)(**kwargs), getattr(keras.layers, name)(**kwargs)
    assert_matches_keras(ours, theirs, x)
    config = json.loads(json.dumps(ours.get_config()))                  # JSON types: tuples as lists
    clone = L.layer_from_config(config)
    assert type(clone) is type(ours) and json.loads(json.dumps(clone.get_config())) == config
    clone(x)
    clone.set_weights(ours.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(ours(x)), rtol=0, atol=0)


MERGES = [
    ("concatenate", dict(), [(3,), (2,)]),
    ("concatenate", dict(axis=1), [(2, 4), (3, 4)]),
    ("add", dict(), [(3, 2)] * 3),
    ("subtract", dict(), [(4,)] * 2),
    ("multiply", dict(), [(4,)] * 3),
    ("average", dict(), [(2, 3)] * 2),
    ("maximum", dict(), [(5,)] * 3),
    ("minimum", dict(), [(5,)] * 2),
    ("dot", dict(axes=1), [(4,), (4,)]),                        # [B, 1]
    ("dot", dict(axes=-1, normalize=True), [(4,), (4,)]),       # cosine similarity
    ("dot", dict(axes=(1, 2)), [(3, 5), (2, 3)]),               # [B, 5, 2]
    ("dot", dict(axes=(2, 1)), [(3, 4), (4,)]),                 # [B, 3]
    ("dot", dict(axes=(1, 1)), [(4,), (4, 2, 3)]),              # [B, 2, 3]
]


@pytest.mark.parametrize("name, kwargs, shapes", MERGES, ids=lambda v: v if isinstance(v, str) else None)
def test_functional_merge_forms_match_keras_on_arrays_and_symbolic_tensors(name, kwargs, shapes):
    xs = [normal((2, *s), seed=i) for i, s in enumerate(shapes)]
    out = getattr(L, name)(xs, **kwargs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(getattr(keras.layers, name)(xs, **kwargs)),
                               rtol=RTOL, atol=ATOL)
    symbolic = getattr(L, name)([bf.Input(s) for s in shapes], **kwargs)
    assert symbolic.shape == getattr(keras.layers, name)([keras.Input(s) for s in shapes], **kwargs).shape
    layer_name = {"dot": "Dot"}.get(name, name.capitalize())
    ours, theirs = getattr(L, layer_name)(**kwargs), getattr(keras.layers, layer_name)(**kwargs)
    assert_matches_keras(ours, theirs, xs)
    assert type(L.layer_from_config(json.loads(json.dumps(ours.get_config())))) is type(ours)


# ---- noise layers in training mode: the laws of Keras's draws ------------------------------------

def both_in_training(name, x, **kwargs):
    ours, theirs = getattr(L, name)(seed=1, **kwargs), getattr(keras.layers, name)(seed=1, **kwargs)
    return np.asarray(ours(x, training=True)), np.asarray(theirs(x, training=True)), ours


@pytest.mark.parametrize("name, shape", [("SpatialDropout1D", (64, 10, 8)), ("SpatialDropout2D", (32, 4, 5, 8))])
def test_spatial_dropout_drops_whole_channels_scaled_by_one_over_keep(name, shape):
    x = np.ones(shape, np.float32)
    for out in both_in_training(name, x, rate=0.25)[:2]:
        assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}          # kept: scaled by 1/(1-rate)
        per_channel = out.reshape(shape[0], -1, shape[-1])
        assert (per_channel == per_channel[:, :1]).all()                  # one draw over all steps/pixels
        assert (per_channel[:, 0] == 0).mean() == pytest.approx(0.25, abs=0.06)   # of 512 draws


def test_gaussian_noise_and_dropout_laws():
    x = np.ones((200, 50), np.float32)
    for out in both_in_training("GaussianNoise", x, stddev=0.5)[:2]:        # x + N(0, 0.5^2)
        assert (out - 1).mean() == pytest.approx(0.0, abs=0.02)
        assert (out - 1).std() == pytest.approx(0.5, rel=0.03)
    for out in both_in_training("GaussianDropout", x, rate=0.2)[:2]:        # x * N(1, 0.2 / 0.8)
        assert out.mean() == pytest.approx(1.0, abs=0.02)
        assert out.std() == pytest.approx(math.sqrt(0.2 / 0.8), rel=0.03)


def test_noise_stream_advances_and_seed_fixes_it():
    x = np.ones((4, 6), np.float32)
    first, _, layer = both_in_training("GaussianNoise", x, stddev=1.0)
    assert not np.allclose(first, np.asarray(layer(x, training=True)))     # a new draw per call
    again = L.GaussianNoise(1.0, seed=1)(x, training=True)
    np.testing.assert_array_equal(np.asarray(again), first)                # same seed, same draws
    np.testing.assert_array_equal(np.asarray(layer(x)), x)                 # inference: the identity


# ---- Lambda ---------------------------------------------------------------------------------------

def test_lambda_infers_its_shape_and_passes_training_as_keras():
    x = normal((2, 3, 4))
    layer = L.Lambda(lambda t: jnp.sum(t, axis=-1, keepdims=True))
    assert layer.compute_output_shape((3, 4)) == (3, 1)
    np.testing.assert_allclose(np.asarray(layer(x)), x.sum(-1, keepdims=True), rtol=1e-6)
    ours, theirs = L.Lambda(doubled_in_training), keras.layers.Lambda(doubled_in_training)
    for training, factor in ((True, 2.0), (False, 1.0)):
        np.testing.assert_array_equal(np.asarray(ours(x, training=training)), x * factor)
        np.testing.assert_array_equal(np.asarray(theirs(x, training=training)), x * factor)
    pair = L.Lambda(lambda ab: ab[0] - ab[1], output_shape=(3, 4))
    np.testing.assert_array_equal(np.asarray(pair([x, x])), np.zeros_like(x))


def test_lambda_config_names_its_function_and_refuses_a_python_lambda():
    layer = L.Lambda(scaled_square, arguments={"alpha": 3.0}, name="sq")
    config = json.loads(json.dumps(layer.get_config()))
    assert config["config"]["function"] == {"module": __name__, "class_name": "function", "config": "scaled_square"}
    clone = L.layer_from_config(config)
    assert clone.function is scaled_square and float(clone(jnp.array([[2.0]]))[0, 0]) == 12.0   # 3 * 2^2
    with pytest.raises(ValueError, match="Python lambda, and cannot be saved.*`def` at the top level"):
        L.Lambda(lambda t: t).get_config()
    model = bf.Sequential([bf.Input((2,)), L.Lambda(lambda t: t * 2)])
    with pytest.raises(ValueError, match="Python lambda"):
        model.to_json()
    keras_saved = {"class_name": "__lambda__", "config": {"code": "...", "defaults": None, "closure": None}}
    with pytest.raises(ValueError, match="bytecode"):
        L.Lambda(keras_saved)
    with pytest.raises(ValueError, match="import that module"):
        L.Lambda({"module": "not_imported_anywhere", "class_name": "function", "config": "f"})


# ---- models that compile and fit ------------------------------------------------------------------

def shapes_model(lib):
    """[B, 8] through every reshaping and activation layer to [B, 1]; deterministic (no noise)."""
    layers = lib.layers
    return lib.Sequential([
        lib.Input((8,)), layers.Dense(32, activation="tanh"), layers.Reshape((4, 4, 2)),
        layers.ZeroPadding2D(((1, 0), (0, 1))), layers.UpSampling2D(2, interpolation="bilinear"),
        layers.Cropping2D(((1, 2), (2, 1))), layers.PReLU(alpha_initializer="random_uniform", shared_axes=[1, 2]),
        layers.UpSampling2D((1, 2)), layers.Permute((2, 1, 3)), layers.Reshape((-1, 4)),
        layers.ZeroPadding1D((0, 2)), layers.Cropping1D((1, 3)), layers.UpSampling1D(2), layers.ELU(0.7),
        layers.Softmax(axis=1), layers.ReLU(max_value=0.5, negative_slope=0.1, threshold=0.01),
        layers.Flatten(), layers.Dense(6), layers.LeakyReLU(), layers.RepeatVector(2), layers.Identity(),
        layers.Lambda(scaled_square, arguments={"alpha": 0.5}), layers.Flatten(), layers.Dense(1)])


def merges_model(lib):
    layers = lib.layers
    a, b = lib.Input((3,)), lib.Input((3,))
    ha, hb = layers.Dense(4, activation="tanh")(a), layers.Dense(4, activation="tanh")(b)
    parts = [layers.concatenate([ha, hb]), layers.add([ha, hb]), layers.subtract([ha, hb]),
             layers.multiply([ha, hb]), layers.average([ha, hb]), layers.maximum([ha, hb]),
             layers.minimum([ha, hb]), layers.dot([ha, hb], axes=1), layers.dot([ha, hb], axes=-1, normalize=True)]
    return lib.Model([a, b], layers.Dense(1)(layers.concatenate(parts)))


@pytest.mark.parametrize("builder, inputs", [(shapes_model, 1), (merges_model, 2)], ids=["sequential", "functional"])
def test_models_fit_to_keras_numbers(builder, inputs):
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(32, 8 if inputs == 1 else 3)).astype(np.float32) for _ in range(inputs)]
    y = (np.sum([v[:, :1] for v in x], axis=0) ** 2).astype(np.float32)
    x = x[0] if inputs == 1 else x
    keras.utils.set_random_seed(0)          # Keras draws the initial weights both models start from
    theirs, mine = builder(keras), builder(bf)
    mine.set_weights(theirs.get_weights())
    theirs.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    mine.compile(optimizer=bf.optimizers.SGD(0.05), loss="mse")
    kwargs = dict(epochs=3, batch_size=8, shuffle=False, verbose=0)
    h_mine, h_theirs = mine.fit(x, y, **kwargs).history["loss"], theirs.fit(x, y, **kwargs).history["loss"]
    np.testing.assert_allclose(h_mine, h_theirs, rtol=1e-4)
    assert h_mine[-1] < h_mine[0]
    for m, t in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(m, t, rtol=1e-4, atol=1e-6)


def test_a_model_with_noise_layers_fits_and_predicts_without_noise():
    x = normal((64, 6, 4))
    y = x.sum(axis=(1, 2))[:, None] / 4
    model = bf.Sequential([
        bf.Input((6, 4)), L.SpatialDropout1D(0.2), L.GaussianNoise(0.1), L.Reshape((6, 4, 1)),
        L.SpatialDropout2D(0.1), L.GaussianDropout(0.1), L.Flatten(), L.Dense(1)], seed=0)
    model.compile(optimizer=bf.optimizers.Adam(0.05), loss="mse")
    losses = model.fit(x, y, epochs=8, batch_size=16, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.3 * losses[0]          # seeds 0-3: 0.13 to 0.17
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


# ---- bad arguments and shapes -----------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: L.Reshape((2, -1, -1)), ValueError, "target_shape"),
    (lambda: L.Reshape((0, 3)), ValueError, "target_shape"),
    (lambda: L.Permute((1, 3)), ValueError, "dims"),
    (lambda: L.RepeatVector(0), ValueError, "`n`"),
    (lambda: L.ZeroPadding1D(-1), ValueError, "padding"),
    (lambda: L.ZeroPadding2D(((1,), (1, 1))), ValueError, "padding"),
    (lambda: L.Cropping1D((1, 2, 3)), ValueError, "cropping"),
    (lambda: L.Cropping2D(data_format="channels_first"), ValueError, "channels-last"),
    (lambda: L.UpSampling2D(interpolation="area"), ValueError, "interpolation"),
    (lambda: L.UpSampling1D(size=1.5), ValueError, "size"),
    (lambda: L.ReLU(max_value=-1.0), ValueError, "max_value"),
    (lambda: L.ReLU(negative_slope=-0.1), ValueError, "negative_slope"),
    (lambda: L.ReLU(threshold=-1.0), ValueError, "threshold"),
    (lambda: L.LeakyReLU(negative_slope=None), ValueError, "negative_slope"),
    (lambda: L.ELU(alpha="one"), ValueError, "alpha"),
    (lambda: L.Softmax(axis="last"), ValueError, "axis"),
    (lambda: L.PReLU(shared_axes=[0, 1]), ValueError, "shared_axes"),
    (lambda: L.PReLU(alpha_constraint="non_neg"), ValueError, "alpha_constraint"),
    (lambda: L.GaussianNoise(-0.1), ValueError, "stddev"),
    (lambda: L.GaussianDropout(1.0), ValueError, "rate"),
    (lambda: L.SpatialDropout1D(1.5), ValueError, "rate"),
    (lambda: L.SpatialDropout2D(0.1, data_format="channels_first"), ValueError, "data_format"),
    (lambda: L.Lambda(3), TypeError, "function"),
    (lambda: L.Lambda(scaled_square, arguments=[1.0]), TypeError, "arguments"),
    (lambda: L.Lambda(scaled_square, mask=lambda x, m: m), ValueError, "mask"),
    (lambda: L.Dot(axes=(1, 2, 3)), ValueError, "axes"),
    (lambda: L.Dot(axes="last"), ValueError, "axes"),
]


@pytest.mark.parametrize("make, error, match", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


BAD_SHAPES = [
    (L.Reshape((5,)), (4, 6), "24 entries"),
    (L.Permute((2, 1)), (2, 3, 4), r"samples of 2 axes"),
    (L.RepeatVector(2), (3, 4), r"inputs \[B, features\]"),
    (L.Cropping1D(3), (5, 2), "leaves nothing"),
    (L.ZeroPadding2D(), (4, 4), r"inputs \[B, height, width, channels\]"),
    (L.SpatialDropout1D(0.1), (4,), r"inputs \[B, steps, channels\]"),
    (L.PReLU(shared_axes=3), (4, 4), "shared_axes"),
    (L.Softmax(axis=3), (4, 4), "axis"),
    (L.Lambda(scaled_square, output_shape=(3,)), (4,), r"output_shape=\(3,\)"),
    (L.Lambda(lambda t: np.asarray(t)), (4,), "JAX-traceable"),
]


@pytest.mark.parametrize("layer, shape, match", BAD_SHAPES,
                         ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else None)
def test_bad_input_shapes_are_refused_when_built(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        L.build_stack([layer], shape)


def test_dot_refuses_axes_of_different_sizes():
    with pytest.raises(ValueError, match="axes of equal size"):
        L.dot([bf.Input((3,)), bf.Input((4,))], axes=1)
