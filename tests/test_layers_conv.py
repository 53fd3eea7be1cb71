"""Convolution and pooling layers against Keras 3 itself (KERAS_BACKEND=jax).

Each case builds the same layer in both libraries, gives Keras's layer random weights, copies them
into batchfit's with set_weights, and compares the outputs, the gradients with respect to the input
and to every weight (jax.grad through the batchfit module against jax.grad through Keras's
stateless_call), the output shape, and a get_config round trip.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import batchfit as bf
from batchfit import layers as L

keras = pytest.importorskip("keras")

RTOL, ATOL = 1e-5, 1e-5

CASES = [  # (class name, arguments, per-sample input shape)
    ("Conv1D", dict(filters=4, kernel_size=3), (9, 3)),
    ("Conv1D", dict(filters=4, kernel_size=3, strides=2, padding="same", activation="relu"), (9, 3)),
    ("Conv1D", dict(filters=6, kernel_size=2, padding="causal", dilation_rate=2, groups=3), (9, 3)),
    ("Conv1D", dict(filters=4, kernel_size=4, padding="same", dilation_rate=2, use_bias=False), (8, 2)),
    ("Conv2D", dict(filters=4, kernel_size=(3, 2), strides=(2, 1), padding="same"), (6, 5, 3)),
    ("Conv2D", dict(filters=4, kernel_size=3, dilation_rate=(2, 1), groups=2, activation="tanh"), (7, 6, 4)),
    ("Conv1DTranspose", dict(filters=3, kernel_size=3, strides=2), (5, 2)),
    ("Conv1DTranspose", dict(filters=3, kernel_size=4, strides=3, padding="same"), (5, 2)),
    ("Conv1DTranspose", dict(filters=3, kernel_size=3, strides=2, padding="same", output_padding=1), (5, 2)),
    ("Conv1DTranspose", dict(filters=3, kernel_size=3, dilation_rate=2, output_padding=0), (5, 2)),
    ("Conv1DTranspose", dict(filters=2, kernel_size=2, strides=3, use_bias=False), (4, 2)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=(3, 2), strides=(2, 1), padding="same"), (4, 5, 2)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=3, strides=2, output_padding=1, activation="relu"), (4, 4, 2)),
    ("Conv2DTranspose", dict(filters=2, kernel_size=2, dilation_rate=2, padding="same"), (4, 4, 2)),
    ("DepthwiseConv1D", dict(kernel_size=3, depth_multiplier=2), (8, 3)),
    ("DepthwiseConv1D", dict(kernel_size=3, strides=2, padding="same", activation="relu"), (8, 3)),
    ("DepthwiseConv2D", dict(kernel_size=(3, 2), depth_multiplier=2, padding="same", dilation_rate=2), (6, 6, 3)),
    ("DepthwiseConv2D", dict(kernel_size=3, strides=2, use_bias=False), (7, 7, 2)),
    ("SeparableConv1D", dict(filters=4, kernel_size=3, depth_multiplier=2, padding="same"), (8, 3)),
    ("SeparableConv1D", dict(filters=4, kernel_size=3, strides=2), (9, 3)),
    ("SeparableConv2D", dict(filters=4, kernel_size=3, strides=2, padding="same", depth_multiplier=2), (6, 6, 3)),
    ("SeparableConv2D", dict(filters=2, kernel_size=2, dilation_rate=2, activation="relu"), (6, 6, 3)),
    ("MaxPooling1D", dict(), (9, 3)),
    ("MaxPooling1D", dict(pool_size=3, strides=2, padding="same"), (8, 3)),
    ("MaxPooling2D", dict(pool_size=(3, 2), strides=(2, 1), padding="same"), (5, 5, 2)),
    ("AveragePooling1D", dict(pool_size=2), (9, 3)),
    ("AveragePooling1D", dict(pool_size=3, strides=2, padding="same"), (8, 3)),
    ("AveragePooling2D", dict(pool_size=(2, 3)), (6, 6, 2)),
    ("AveragePooling2D", dict(pool_size=3, strides=2, padding="same"), (5, 6, 2)),
    ("GlobalMaxPooling1D", dict(), (7, 3)),
    ("GlobalMaxPooling2D", dict(keepdims=True), (4, 5, 3)),
    ("GlobalAveragePooling1D", dict(keepdims=True), (7, 3)),
    ("GlobalAveragePooling2D", dict(), (4, 5, 3)),
]


def built_pair(name, kwargs, shape, rng):
    """(batchfit layer, its built module, Keras layer), Keras's weights random and copied into batchfit's."""
    theirs = getattr(keras.layers, name)(**kwargs)
    theirs.build((2, *shape))
    theirs.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in theirs.get_weights()])
    mine = getattr(L, name)(**kwargs)
    module = L.build_stack([mine], shape).layers[0]
    mine.set_weights(theirs.get_weights())
    return mine, module, theirs


def forward_and_backward(modules, theirs, weights, x, cotangent):
    """Per batchfit module in `modules` and for Keras's layer: (output, d sum(output * cotangent) / d weights
    in Keras's order, ... / d x), the Keras layer run by stateless_call on `weights`; all in one jit."""
    graphdefs, states = zip(*(nnx.split(m) for m in modules))

    def keras_call(weights, x):
        return theirs.stateless_call(weights, [], x)[0]

    @jax.jit
    def run(states, weights, x):
        results = []
        for graphdef, state in zip(graphdefs, states):
            y, pull = jax.vjp(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, x)
            d_state, d_x = pull(cotangent)
            results.append((y, [v[...] for v in L.keras_weight_variables(nnx.merge(graphdef, d_state))], d_x))
        y, pull = jax.vjp(keras_call, weights, x)
        return results, (y, *pull(cotangent))

    return run(states, weights, x)


def assert_close(mine, theirs):
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_values_gradients_and_config_match_keras(name, kwargs, shape):
    rng = np.random.default_rng(len(name) + len(kwargs))
    mine, module, theirs = built_pair(name, kwargs, shape, rng)
    out_shape = mine.compute_output_shape(shape)
    assert out_shape == tuple(theirs.compute_output_shape((2, *shape)))[1:]
    assert [w.shape for w in mine.get_weights()] == [tuple(w.shape) for w in theirs.weights]
    assert [h.name for h in mine.weights] == [w.name for w in theirs.weights]     # kernel, bias, ...
    clone = L.layer_from_config(json.loads(json.dumps(mine.get_config())))   # as save() writes it
    assert type(clone) is type(mine)
    assert clone.get_config()["config"] == json.loads(json.dumps(mine.get_config()["config"]))
    clone_module = L.build_stack([clone], shape).layers[0]
    clone.set_weights(mine.get_weights())
    x = jnp.asarray(rng.normal(size=(2, *shape)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, *out_shape)), jnp.float32)
    weights = [jnp.asarray(w) for w in theirs.get_weights()]
    (result, cloned), expected = forward_and_backward([module, clone_module], theirs, weights, x, cotangent)
    assert result[0].shape == (2, *out_shape)
    assert_close(result, expected)                # output, d weights, d x
    assert float(jnp.abs(result[2]).sum()) > 0    # a real gradient, not zeros on both sides
    assert_close(cloned, result)


def test_average_pooling_same_counts_only_real_entries():
    # steps [1, 2, 3, 4, 5], window 2, stride 2, "same": windows [1, 2], [3, 4], [5] -> 1.5, 3.5, 5.0
    # (5 / 1, not 5 / 2: the padded entry is not counted).
    pool = L.build_stack([L.AveragePooling1D(2, padding="same")], (5, 1)).layers[0]
    x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    assert np.asarray(pool(x))[0, :, 0].tolist() == [1.5, 3.5, 5.0]
    theirs = keras.layers.AveragePooling1D(2, padding="same")
    assert np.asarray(theirs(x))[0, :, 0].tolist() == [1.5, 3.5, 5.0]


def test_global_average_pooling1d_averages_the_masked_steps_as_keras():
    # steps 1, 2, 3, 4 (channel 0) and 10, 20, 30, 40 (channel 1), step 2 masked out:
    # (1 + 2 + 4) / 3 and (10 + 20 + 40) / 3
    x = jnp.array([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]])
    mask = jnp.array([[True, True, False, True]])
    pool = L.build_stack([L.GlobalAveragePooling1D()], (4, 2)).layers[0]
    assert pool.takes_mask and not pool.passes_mask          # Keras: it reads the mask and drops it
    np.testing.assert_allclose(pool(x, mask=mask), [[7 / 3, 70 / 3]], rtol=1e-6)
    np.testing.assert_allclose(pool(x, mask=mask), keras.layers.GlobalAveragePooling1D()(x, mask=mask), rtol=1e-6)
    assert pool(x).tolist() == [[2.5, 25.0]]
    assert not L.build_stack([L.GlobalMaxPooling1D()], (4, 2)).layers[0].takes_mask


@pytest.mark.parametrize("convolve", [False, True])
def test_embedding_mask_reaches_global_average_pooling1d_unless_a_conv_drops_it_as_keras(convolve):
    ids = np.array([[3, 1, 0, 0], [2, 2, 4, 0]])          # id 0: padding, masked by Embedding(mask_zero=True)

    def net(lib, first):
        conv = [lib.layers.Conv1D(2, 1)] if convolve else []     # Keras's Conv1D drops the mask
        return [first, lib.layers.Embedding(5, 2, mask_zero=True), *conv, lib.layers.GlobalAveragePooling1D(),
                lib.layers.Dense(1)]

    theirs = keras.Sequential(net(keras, keras.Input((4,), dtype="int32")))
    mine = bf.Sequential(net(bf, L.InputLayer((4,), dtype="int32")), seed=0)
    mine.build((None, 4))
    mine.set_weights(theirs.get_weights())
    np.testing.assert_allclose(mine.predict(ids, verbose=0), theirs.predict(ids, verbose=0), rtol=RTOL, atol=1e-7)


def test_causal_conv1d_sees_only_the_past():
    # kernel [1, 1] dilated by 2 over [1, 2, 4, 8, 16]: y_t = x_{t-2} + x_t, with x_{-2} = x_{-1} = 0
    layer = L.Conv1D(1, 2, padding="causal", dilation_rate=2, use_bias=False, kernel_initializer="ones")
    conv = L.build_stack([layer], (5, 1)).layers[0]
    y = conv(jnp.array([1.0, 2.0, 4.0, 8.0, 16.0]).reshape(1, 5, 1))
    assert np.asarray(y)[0, :, 0].tolist() == [1.0, 2.0, 5.0, 10.0, 20.0]


@pytest.mark.parametrize("name,kwargs,shape,expected", [
    ("Conv2DTranspose", dict(filters=1, kernel_size=3, strides=2), (5, 4, 1), (11, 9, 1)),    # (n-1)*2 + 3
    ("Conv2DTranspose", dict(filters=1, kernel_size=3, strides=2, padding="same"), (5, 4, 1), (10, 8, 1)),
    ("Conv2DTranspose", dict(filters=1, kernel_size=3, strides=2, padding="same", output_padding=0),
     (5, 4, 1), (9, 7, 1)),                                                                   # (n-1)*2 + 3%2 + 0
    ("Conv1DTranspose", dict(filters=2, kernel_size=2, strides=3), (4, 1), (12, 2)),          # (n-1)*3 + max(2, 3)
    ("Conv1D", dict(filters=2, kernel_size=3, dilation_rate=3), (10, 1), (4, 2)),             # 10 - 7 + 1
])
def test_output_shapes_by_hand(name, kwargs, shape, expected):
    assert getattr(L, name)(**kwargs).compute_output_shape(shape) == expected


def test_regularizers_match_keras_losses():
    kwargs = dict(filters=3, kernel_size=2, depthwise_regularizer="l2", pointwise_regularizer="l1",
                  bias_regularizer=keras.regularizers.L2(0.5))
    rng = np.random.default_rng(5)
    mine, module, theirs = built_pair("SeparableConv2D", kwargs, (4, 4, 2), rng)
    depthwise, pointwise, bias = theirs.get_weights()   # l2: 0.01 * sum w^2, l1: 0.01 * sum |w|
    by_hand = 0.01 * (depthwise ** 2).sum() + 0.01 * np.abs(pointwise).sum() + 0.5 * (bias ** 2).sum()
    assert float(L.regularization_penalty(module)) == pytest.approx(by_hand, rel=1e-5)
    conv = L.build_stack([L.Conv1D(2, 3, kernel_regularizer="l1", use_bias=False)], (5, 2)).layers[0]
    assert float(L.regularization_penalty(conv)) == pytest.approx(0.01 * np.abs(conv.kernel[...]).sum())


@pytest.mark.parametrize("layer,shape,fans", [
    (L.Conv2D(8, 3), (5, 5, 4), (9 * 4, 9 * 8)),                   # kernel [3, 3, 4, 8]
    (L.DepthwiseConv2D(3, depth_multiplier=2), (5, 5, 4), (9 * 4, 9 * 2)),   # kernel [3, 3, 4, 2]
    (L.Conv1DTranspose(8, 5), (6, 4), (5 * 8, 5 * 4)),             # kernel [5, 8, 4]: fans from its last two axes
])
def test_default_glorot_uniform_kernel_uses_keras_fans(layer, shape, fans):
    kernel = np.asarray(L.build_stack([layer], shape, seed=3).layers[0].kernel[...])
    limit = np.sqrt(6 / sum(fans))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit    # >= 144 draws
    assert np.all(layer.get_weights()[-1] == 0)                                      # zero bias


def test_keras_aliases_are_the_same_classes():
    aliases = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution1DTranspose": "Conv1DTranspose",
               "Convolution2DTranspose": "Conv2DTranspose", "SeparableConvolution1D": "SeparableConv1D",
               "SeparableConvolution2D": "SeparableConv2D", "MaxPool1D": "MaxPooling1D", "MaxPool2D": "MaxPooling2D",
               "AvgPool1D": "AveragePooling1D", "AvgPool2D": "AveragePooling2D",
               "GlobalMaxPool1D": "GlobalMaxPooling1D", "GlobalMaxPool2D": "GlobalMaxPooling2D",
               "GlobalAvgPool1D": "GlobalAveragePooling1D", "GlobalAvgPool2D": "GlobalAveragePooling2D"}
    for alias, name in aliases.items():
        assert getattr(keras.layers, alias) is getattr(keras.layers, name)
        assert getattr(L, alias) is getattr(L, name) and alias in L.__all__ and name in L.__all__
    assert L.__all__.count("MaxPooling2D") == 1
    pool = L.layer_from_config({"class_name": "MaxPool2D", "config": {"pool_size": 3}})
    assert type(pool) is L.MaxPooling2D and pool.strides == (3, 3)
    assert L.Conv2DTranspose(2, 3).name.startswith("conv2d_transpose")           # Keras's automatic names
    assert L.GlobalAvgPool1D().name.startswith("global_average_pooling1d")


@pytest.mark.parametrize("name", ["Conv1D", "SeparableConv2D", "Conv2DTranspose", "DepthwiseConv1D",
                                  "AveragePooling2D", "GlobalAveragePooling1D"])
def test_bfloat16_layers_hold_and_compute_in_bfloat16(name):
    kwargs, shape = next((k, s) for n, k, s in CASES if n == name)
    module = L.build_stack([getattr(L, name)(**kwargs, dtype="bfloat16")], shape).layers[0]
    assert {v[...].dtype for v in L.keras_weight_variables(module)} <= {jnp.dtype("bfloat16")}
    assert jax.jit(lambda x: module(x))(jnp.ones((2, *shape), jnp.float32)).dtype == jnp.bfloat16


REFUSED = [  # (layer, the argument the message names, arguments)
    (L.Conv1D, "filters", dict(filters=0, kernel_size=3)),
    (L.Conv1D, "padding", dict(filters=2, kernel_size=3, padding="full")),
    (L.Conv1D, "data_format", dict(filters=2, kernel_size=3, data_format="channels_first")),
    (L.Conv1D, "kernel_size", dict(filters=2, kernel_size=(3, 3))),
    (L.Conv2D, "padding", dict(filters=2, kernel_size=3, padding="causal")),
    (L.Conv2D, "groups", dict(filters=2, kernel_size=3, groups=0)),
    (L.Conv2D, "groups", dict(filters=5, kernel_size=3, groups=2)),
    (L.Conv2D, "dilation_rate", dict(filters=2, kernel_size=3, strides=2, dilation_rate=2)),
    (L.Conv2D, "kernel_size", dict(filters=2, kernel_size=(3,))),
    (L.Conv1DTranspose, "padding", dict(filters=2, kernel_size=3, padding="causal")),
    (L.Conv2DTranspose, "output_padding", dict(filters=2, kernel_size=3, strides=2, output_padding=2)),
    (L.Conv2DTranspose, "output_padding", dict(filters=2, kernel_size=3, output_padding=-1)),
    (L.DepthwiseConv2D, "depth_multiplier", dict(kernel_size=3, depth_multiplier=0)),
    (L.SeparableConv2D, "strides", dict(filters=2, kernel_size=3, strides=0)),
    (L.SeparableConv1D, "data_format", dict(filters=2, kernel_size=3, data_format="channels_first")),
    (L.MaxPooling1D, "pool_size", dict(pool_size=0)),
    (L.AveragePooling2D, "padding", dict(pool_size=2, padding="causal")),
    (L.GlobalMaxPooling2D, "data_format", dict(data_format="channels_first")),
]


@pytest.mark.parametrize("cls,argument,kwargs", REFUSED)
def test_bad_arguments_name_the_argument(cls, argument, kwargs):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        cls(**kwargs)


@pytest.mark.parametrize("layer,shape,match", [
    (L.Conv2D(4, 3, groups=2), (6, 6, 3), "divisible by groups=2"),
    (L.Conv1D(4, 5), (3, 2), "does not fit"),
    (L.Conv1D(4, 3), (8, 8, 3), r"steps, channels"),
    (L.MaxPooling2D(3), (2, 2, 1), "does not fit"),
    (L.GlobalMaxPooling2D(), (5, 3), r"height, width, channels"),
    (L.Conv2DTranspose(1, 2, padding="same", output_padding=0), (1, 1, 1), "does not fit"),   # (1-1)*1 + 0 + 0
])
def test_shapes_that_do_not_fit_are_refused_at_build(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        L.build_stack([layer], shape)


def test_keepdims_must_be_a_bool():
    with pytest.raises(TypeError, match="keepdims"):
        L.GlobalAveragePooling2D(keepdims="yes")


def test_conv1d_global_max_pooling_dense_fits_as_a_functional_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12, 2)).astype(np.float32)
    y = x[:, :, :1].max(axis=1) - x[:, :, 1:].mean(axis=1)          # [64, 1]
    inputs = bf.Input((12, 2))
    h = L.Conv1D(8, 3, padding="causal", activation="relu")(inputs)
    h = L.Conv1D(8, 2, dilation_rate=2)(L.MaxPool1D(2)(h))                # 12 -> 6 -> 6 - 2 = 4 steps
    model = bf.Model(inputs, L.Dense(1)(L.GlobalMaxPooling1D()(h)))
    assert tuple(h.shape) == (None, 4, 8)
    model.compile(optimizer=bf.optimizers.Adam(0.01), loss="mse")
    losses = model.fit(x, y, batch_size=16, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert model.predict(x[:3], verbose=0).shape == (3, 1)


def keras_convnet(lib, first):
    layers = lib.layers
    return [first, layers.Conv2D(4, 3, padding="same", activation="relu"),
            layers.SeparableConv2D(6, 3, depth_multiplier=2, activation="relu"), layers.AveragePooling2D(2),
            layers.GlobalAveragePooling2D(), layers.Dense(2)]


def test_convnet_trains_as_keras_does():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.stack([x.mean(axis=(1, 2, 3)), x[:, :4].std(axis=(1, 2, 3))], axis=1).astype(np.float32)
    theirs = keras.Sequential(keras_convnet(keras, keras.Input((8, 8, 1))))
    mine = bf.Sequential(keras_convnet(bf, bf.layers.InputLayer((8, 8, 1))), seed=0)
    mine.build((None, 8, 8, 1))
    mine.set_weights(theirs.get_weights())
    settings = dict(loss="mse")
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), **settings)
    mine.compile(optimizer=bf.optimizers.SGD(0.1), **settings)
    kwargs = dict(batch_size=8, epochs=3, shuffle=False, verbose=0)
    h_theirs, h_mine = theirs.fit(x, y, **kwargs).history["loss"], mine.fit(x, y, **kwargs).history["loss"]
    np.testing.assert_allclose(h_mine, h_theirs, rtol=1e-4)
    assert h_mine[-1] < h_mine[0]
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
