"""MultiHeadAttention, Attention and AdditiveAttention against Keras 3 itself (KERAS_BACKEND=jax).

Each test builds the layer in both libraries, copies Keras's weights into batchfit's and compares outputs,
attention scores and gradients (w.r.t. inputs and weights, Keras's through `stateless_call`) to RTOL.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import batchfit as bf
from batchfit.layers.base import run_module

keras = pytest.importorskip("keras")
L = bf.layers

RTOL, ATOL = 1e-5, 1e-6


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(mine, theirs, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=rtol, atol=atol)


def twin_mha(*args, query=None, value=None, key=None, **kwargs):
    """The same MultiHeadAttention in Keras and batchfit, both built, batchfit holding Keras's weights."""
    theirs, mine = keras.layers.MultiHeadAttention(*args, **kwargs), L.MultiHeadAttention(*args, **kwargs)
    theirs(query, value, key=key, return_attention_scores=True)
    mine(query, value, key=key)
    mine.set_weights(theirs.get_weights())
    return theirs, mine


# ----- MultiHeadAttention: values -------------------------------------------------------------------

@pytest.mark.parametrize("config,with_key", [(dict(num_heads=2, key_dim=3), False),
                                             (dict(num_heads=3, key_dim=2, value_dim=4, output_shape=5), True),
                                             (dict(num_heads=1, key_dim=4, use_bias=False, output_shape=(2, 3)), True)])
def test_mha_outputs_and_scores_match_keras(config, with_key):
    q, v = normal(2, 3, 4, seed=1), normal(2, 5, 6, seed=2)
    k = normal(2, 5, 7, seed=3) if with_key else None
    theirs, mine = twin_mha(**config, query=q, value=v, key=k)
    assert [w.shape for w in mine.get_weights()] == [tuple(w.shape) for w in theirs.get_weights()]
    out_t, scores_t = theirs(q, v, key=k, return_attention_scores=True)
    out_m, scores_m = mine(q, v, key=k, return_attention_scores=True)
    assert scores_m.shape == (2, config["num_heads"], 3, 5)
    close(out_m, out_t)
    close(scores_m, scores_t)
    close(np.asarray(scores_m).sum(-1), 1.0)                    # a softmax over the value positions
    if config.get("value_dim") is None:        # Keras's fused path (no scores) fails when value_dim != key_dim
        close(mine(q, v, key=k), theirs(q, v, key=k))


def test_mha_weight_shapes_in_keras_order():
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4, output_shape=5)
    mha(normal(1, 3, 6), normal(1, 4, 7))
    assert [(w.name, w.shape) for w in mha.weights] == [
        ("query_kernel", (6, 2, 3)), ("query_bias", (2, 3)), ("key_kernel", (7, 2, 3)), ("key_bias", (2, 3)),
        ("value_kernel", (7, 2, 4)), ("value_bias", (2, 4)), ("output_kernel", (2, 4, 5)), ("output_bias", (5,))]
    limit = np.sqrt(6 / (6 * 2 + 6 * 3))          # glorot over Keras's fans of [6, 2, 3]: in 2*6, out 3*6
    kernel = mha.get_weights()[0]
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit
    assert not mha.get_weights()[1].any()         # zero biases


def test_mha_attention_mask_and_causal_mask_match_keras():
    x = normal(2, 4, 6)
    mask = np.array([[[1, 0, 1, 1]] * 4, [[1, 1, 0, 0]] * 4], bool)        # [B, T, S], no row fully masked
    theirs, mine = twin_mha(2, 3, query=x, value=x)
    for kwargs in (dict(attention_mask=mask), dict(use_causal_mask=True),
                   dict(attention_mask=mask, use_causal_mask=True), dict(attention_mask=mask[:1])):
        close(mine(x, x, **kwargs), theirs(x, x, **kwargs))
        out_t, scores_t = theirs(x, x, return_attention_scores=True, **kwargs)
        out_m, scores_m = mine(x, x, return_attention_scores=True, **kwargs)
        close(out_m, out_t)
        close(scores_m, scores_t)
    _, scores = mine(x, x, return_attention_scores=True, use_causal_mask=True)
    assert float(np.abs(np.triu(np.asarray(scores), 1)).max()) == 0.0    # nothing attends to the future
    close(np.asarray(scores)[:, :, 0, 0], 1.0)                            # the first step sees only itself


def test_mha_fully_masked_row_gives_zero_scores_as_keras_softmax():
    x = normal(1, 3, 4)
    mask = np.array([[[0, 0, 0], [1, 1, 0], [1, 1, 1]]], bool)
    theirs, mine = twin_mha(2, 2, query=x, value=x)
    out_t, scores_t = theirs(x, x, attention_mask=mask, return_attention_scores=True)
    out_m, scores_m = mine(x, x, attention_mask=mask, return_attention_scores=True)
    close(scores_m, scores_t)
    close(out_m, out_t)
    assert not np.asarray(scores_m)[0, :, 0].any()
    close(mine(x, x, attention_mask=mask), out_m)        # one rule with or without returned scores


def _keras_loss(layer, probe, **kwargs):
    def loss(trainable, query, value):
        out, _ = layer.stateless_call(trainable, [], query, value, **kwargs)
        return jnp.sum(out * probe)
    return loss


def _batchfit_loss(layer, probe, **kwargs):
    graph, _, rest = nnx.split(layer._module, nnx.Param, ...)

    def loss(params, query, value):
        module = nnx.merge(graph, params, rest)
        return jnp.sum(run_module(module, {"query": query, "value": value, "key": None,
                                           "attention_mask": kwargs.get("attention_mask")}, (),
                                  {"use_causal_mask": kwargs.get("use_causal_mask", False)}) * probe)
    return loss


@pytest.mark.parametrize("kwargs", [{}, {"use_causal_mask": True,
                                         "attention_mask": np.array([[[1, 1, 0, 1]] * 3] * 2, bool)}])
def test_mha_gradients_match_keras(kwargs):
    q, v = normal(2, 3, 4, seed=1), normal(2, 4, 4, seed=2)
    theirs, mine = twin_mha(2, 3, output_shape=5, query=q, value=v)
    probe = normal(2, 3, 5, seed=4)
    weights = [jnp.asarray(w) for w in theirs.get_weights()]
    grads_t = jax.jit(jax.grad(_keras_loss(theirs, probe, **kwargs), argnums=(0, 1, 2)))(weights, q, v)
    params = nnx.state(mine._module, nnx.Param)
    grads_m = jax.jit(jax.grad(_batchfit_loss(mine, probe, **kwargs), argnums=(0, 1, 2)))(params, q, v)
    names = mine._module.keras_weights
    assert len(names) == 8
    for g_m, g_t in zip([grads_m[0][n][...] for n in names], grads_t[0], strict=True):
        close(g_m, g_t, atol=1e-5)
    close(grads_m[1], grads_t[1], atol=1e-5)
    close(grads_m[2], grads_t[2], atol=1e-5)
    assert float(np.abs(grads_m[1]).max()) > 1e-3                    # real gradients, not zeros


def test_mha_dropout_only_in_training():
    x = normal(4, 5, 6)
    mha = L.MultiHeadAttention(2, 3, dropout=0.5, seed=1)
    plain = L.MultiHeadAttention(2, 3)
    inference, scores = mha(x, x, return_attention_scores=True)
    plain(x, x)
    plain.set_weights(mha.get_weights())
    close(inference, plain(x, x))
    close(mha(x, x, training=False), inference)
    trained = np.asarray(mha(x, x, training=True))
    assert np.abs(trained - np.asarray(inference)).max() > 1e-3
    _, train_scores = mha(x, x, training=True, return_attention_scores=True)
    close(np.asarray(train_scores).sum(-1), 1.0)               # scores are returned before the dropout


def test_mha_regularizers_add_penalties():
    mha = L.MultiHeadAttention(2, 3, kernel_regularizer=bf.regularizers.L2(0.1), bias_initializer="ones",
                               bias_regularizer=bf.regularizers.L1(0.5))
    mha(normal(1, 2, 4), normal(1, 2, 4))
    weights = mha.get_weights()
    expected = 0.1 * sum(np.sum(w ** 2) for w in weights[0::2]) + 0.5 * sum(np.abs(w).sum() for w in weights[1::2])
    assert float(L.regularization_penalty(mha._module)) == pytest.approx(expected, rel=1e-5)


# ----- MultiHeadAttention: models, configs, errors ---------------------------------------------------

def transformer_block(lib, return_scores=False):
    """A tiny encoder block: self-attention + residual + LayerNorm, a feed-forward, pooled to one output."""
    layers = lib.layers
    x = lib.Input((5, 8), name="tokens")
    attention = layers.MultiHeadAttention(2, 4, name="mha")
    if return_scores:
        a, scores = attention(x, x, return_attention_scores=True, use_causal_mask=True)
    else:
        a = attention(x, x, use_causal_mask=True)
    h = layers.LayerNormalization(name="ln1")(layers.Add(name="add1")([x, a]))
    f = layers.Dense(8, name="ff2")(layers.Dense(16, activation="relu", name="ff1")(h))
    h = layers.LayerNormalization(name="ln2")(layers.Add(name="add2")([h, f]))
    y = layers.Dense(1, name="out")(layers.Flatten(name="flat")(h))
    return lib.Model(x, [y, scores] if return_scores else y)


def test_transformer_block_matches_keras_and_fits():
    x = normal(16, 5, 8)
    y = x.sum((1, 2))[:, None] / 10
    theirs, mine = transformer_block(keras), transformer_block(bf)
    for layer in theirs.layers:
        if layer.get_weights():
            mine.get_layer(layer.name).set_weights(layer.get_weights())
    close(mine.predict(x, verbose=0), theirs(x), atol=1e-5)
    mine.compile(optimizer=bf.optimizers.Adam(0.01), loss="mse")
    losses = mine.fit(x, y, epochs=4, batch_size=8, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]


def test_functional_config_round_trip_and_scores_output():
    model = transformer_block(bf, return_scores=True)
    x = normal(3, 5, 8)
    out, scores = model.predict(x, verbose=0)
    assert out.shape == (3, 1) and scores.shape == (3, 2, 5, 5)
    clone = bf.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    for a, b in zip(clone.predict(x, verbose=0), (out, scores)):
        close(a, b)


def test_mha_config_round_trip():
    mha = L.MultiHeadAttention(3, 4, value_dim=2, dropout=0.25, use_bias=False, output_shape=(2, 3),
                               attention_axes=1, kernel_initializer="he_normal", seed=7, name="attn")
    clone = L.layer_from_config(mha.get_config())
    assert clone.get_config() == mha.get_config()
    assert (clone.num_heads, clone.key_dim, clone.value_dim, clone.dropout) == (3, 4, 2, 0.25)
    x = normal(2, 4, 5)
    assert clone(x, x).shape == (2, 4, 2, 3)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(num_heads=0, key_dim=2), "num_heads"), (dict(num_heads=2, key_dim=-1), "key_dim"),
    (dict(num_heads=2, key_dim=2, value_dim=1.5), "value_dim"), (dict(num_heads=2, key_dim=2, dropout=1.0), "dropout"),
    (dict(num_heads=2, key_dim=2, output_shape="x"), "output_shape"),
    (dict(num_heads=2, key_dim=2, attention_axes=(1, 2)), "attention_axes")])
def test_mha_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        L.MultiHeadAttention(**kwargs)


def test_mha_bad_calls_explain_the_fix():
    mha = L.MultiHeadAttention(2, 2)
    with pytest.raises(TypeError, match="value"):
        mha(normal(1, 3, 4))
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        mha(normal(1, 2, 3, 4), normal(1, 2, 3, 4))
    with pytest.raises(ValueError, match="same length"):
        L.MultiHeadAttention(2, 2)(normal(1, 3, 4), normal(1, 3, 4), key=normal(1, 2, 4))


# ----- Attention, AdditiveAttention ------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", [("Attention", {}), ("Attention", {"use_scale": True}),
                                         ("Attention", {"score_mode": "concat", "use_scale": True}),
                                         ("AdditiveAttention", {}), ("AdditiveAttention", {"use_scale": False})])
def test_attention_layers_match_keras(name, kwargs):
    q, v, k = normal(2, 3, 4, seed=1), normal(2, 5, 4, seed=2), normal(2, 5, 4, seed=3)
    theirs, mine = getattr(keras.layers, name)(**kwargs), getattr(L, name)(**kwargs)
    theirs([q, v])
    mine([q, v])
    weights = [w + 0.5 for w in theirs.get_weights()]                   # not the initial ones
    theirs.set_weights(weights)
    mine.set_weights(weights)
    q_mask, v_mask = np.array([[1, 1, 0], [1, 1, 1]], bool), np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    for inputs, call in (([q, v], {}), ([q, v, k], {}), ([q, v], {"mask": [q_mask, v_mask]}),
                         ([q, v], {"use_causal_mask": True}), ([q, v], {"mask": [None, v_mask],
                                                                     "use_causal_mask": True})):
        out_t, scores_t = theirs(inputs, return_attention_scores=True, **call)
        out_m, scores_m = mine(inputs, return_attention_scores=True, **call)
        close(out_m, out_t)
        close(scores_m, scores_t)
        close(mine(inputs, **call), out_t)


def test_attention_layers_in_a_functional_model_fit_and_round_trip():
    q_in, v_in = bf.Input((3, 4), name="q"), bf.Input((5, 4), name="v")
    h = L.AdditiveAttention(name="add_att")([q_in, v_in])
    h = L.Attention(use_scale=True, name="dot_att")([h, v_in], use_causal_mask=True)
    model = bf.Model([q_in, v_in], L.Dense(1)(L.Flatten()(h)))
    q, v = normal(16, 3, 4, seed=1), normal(16, 5, 4, seed=2)
    y = q.sum((1, 2))[:, None]
    model.compile(optimizer="adam", loss="mse")
    history = model.fit([q, v], y, epochs=4, batch_size=4, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]
    clone = bf.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    close(clone.predict([q, v], verbose=0), model.predict([q, v], verbose=0))
    config = L.layer_from_config(L.Attention(use_scale=True, score_mode="concat", dropout=0.1).get_config())
    assert (config.use_scale, config.score_mode, config.dropout) == (True, "concat", 0.1)


def test_attention_bad_arguments():
    with pytest.raises(ValueError, match="score_mode"):
        L.Attention(score_mode="general")
    with pytest.raises(ValueError, match="dropout"):
        L.AdditiveAttention(dropout=-0.1)
    with pytest.raises(ValueError, match=r"\[query, value\]"):
        L.Attention()(normal(1, 2, 3))
