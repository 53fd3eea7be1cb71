"""Layers, activations and regularizers: numbers by hand or against float64 NumPy."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pytest import approx

from batchfit import activations, regularizers
from batchfit import layers as L


def built(layer, input_shape, seed=0):
    """One layer built alone (inference mode), with the same seeding as build_stack."""
    return L.build_stack([layer], input_shape, seed=seed).layers[0]


def set_weights(module, arrays):
    for variable, value in zip(L.keras_weight_variables(module), arrays, strict=True):
        variable[...] = jnp.asarray(value, variable[...].dtype)


# ---- activations and regularizers -------------------------------------------------------

def test_activation_lookup_and_values():
    assert activations.get(None) is activations.linear
    assert activations.get("Swish") is activations.get("silu")
    fn = lambda x: x  # noqa: E731
    assert activations.get(fn) is fn
    with pytest.raises(ValueError, match="Did you mean 'relu'"):
        activations.get("rellu")
    with pytest.raises(TypeError, match="activation='relu'"):
        activations.get(3)
    x = jnp.array([-1.0, 0.0, 2.0])
    assert np.asarray(activations.get("leaky_relu")(x)) == approx([-0.2, 0.0, 2.0])
    exact_gelu_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))     # 0.8413, not the tanh form
    assert float(activations.gelu(jnp.float32(1.0))) == approx(exact_gelu_1)
    assert float(activations.elu(jnp.float32(-1.0))) == approx(math.exp(-1) - 1)
    assert float(activations.softplus(jnp.float32(1.0))) == approx(math.log(1 + math.e))
    probabilities = activations.softmax(jnp.array([[0.0, math.log(3.0)]]))
    np.testing.assert_allclose(probabilities, [[0.25, 0.75]], rtol=1e-6)


def test_regularizers_by_hand():
    w = jnp.array([1.0, -2.0, 3.0])                   # sum|w| = 6, sum w^2 = 14
    assert float(regularizers.L1()(w)) == approx(0.01 * 6)
    assert float(regularizers.L2(0.5)(w)) == approx(0.5 * 14)
    assert float(regularizers.get("l1_l2")(w)) == approx(0.01 * 6 + 0.01 * 14)
    assert float(regularizers.L1L2()(w)) == 0.0      # Keras 3 class defaults: 0.0 each
    assert regularizers.get("l2") == regularizers.L2(0.01)
    assert regularizers.get(None) is None
    with pytest.raises(ValueError, match="l2=0.01"):
        regularizers.L2(-1.0)
    with pytest.raises(ValueError, match="Unknown regularizer"):
        regularizers.get("l3")


# ---- initializers ------------------------------------------------------------------------

def test_glorot_uniform_limit_and_statistics():
    kernel = np.asarray(L.get_initializer("glorot_uniform")(np.random.default_rng(0), (200, 300)))
    limit = math.sqrt(6 / (200 + 300))               # 0.1095
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    assert kernel.mean() == approx(0.0, abs=0.002)
    assert kernel.var() == approx(limit**2 / 3, rel=0.02)   # variance of U(-a, a) is a^2/3


def test_variance_scaling_fans_for_conv_kernels():
    shape = (3, 3, 16, 32)                           # fan_in = 9*16 = 144, fan_out = 288
    he = np.asarray(L.get_initializer("he_normal")(np.random.default_rng(1), shape))
    assert he.std() == approx(math.sqrt(2 / 144), rel=0.03)
    assert np.abs(he).max() <= 2 * math.sqrt(2 / 144) / 0.87962566103423978
    glorot = np.asarray(L.get_initializer("glorot_uniform")(np.random.default_rng(2), shape))
    assert np.abs(glorot).max() <= math.sqrt(6 / (144 + 288))
    uniform = np.asarray(L.get_initializer("uniform")(np.random.default_rng(3), (1000,)))
    assert uniform.min() >= -0.05 and uniform.max() <= 0.05
    assert np.asarray(L.get_initializer("random_normal")(np.random.default_rng(4), (4000,))).std() \
        == approx(0.05, rel=0.05)


# ---- Dense -------------------------------------------------------------------------------

def test_dense_forward_with_known_weights():
    dense = built(L.Dense(2, activation="relu"), (3,))
    set_weights(dense, [[[1, 0], [0, 1], [1, -1]], [0.5, -0.5]])
    x = jnp.array([[1.0, 2.0, 3.0]])                  # [1+3+0.5, 2-3-0.5] -> relu -> [4.5, 0]
    np.testing.assert_allclose(dense(x), [[4.5, 0.0]], rtol=1e-6)
    x3 = jnp.ones((2, 4, 3))                          # rank 3: applies on the last axis
    assert dense(x3).shape == (2, 4, 2)


def test_dense_defaults_and_errors():
    dense = built(L.Dense(4, use_bias=False), (3,))
    assert dense.keras_weights == ("kernel",) and dense.kernel.shape == (3, 4)
    assert np.all(np.asarray(built(L.Dense(4), (3,)).bias[...]) == 0)
    with pytest.raises(ValueError, match=r"got units=0.*Dense\(units=32\)"):
        L.Dense(units=0)
    with pytest.raises(ValueError, match="3 input features got float32\\[2, 5\\]"):
        dense(jnp.ones((2, 5)))


# ---- BatchNormalization / LayerNormalization ---------------------------------------------

def test_batchnorm_train_forward_and_moving_update_by_hand():
    bn = built(L.BatchNormalization(momentum=0.9), (2,))
    set_weights(bn, [[2.0, 1.0], [0.5, 0.0], [0.0, 0.0], [1.0, 1.0]])
    x = jnp.array([[1.0, 0.0], [3.0, 4.0]])           # mean [2, 2]; biased var [1, 4]
    bn.train()
    y = np.asarray(bn(x))
    assert y[:, 0] == approx([2 * -1 / math.sqrt(1.001) + 0.5, 2 * 1 / math.sqrt(1.001) + 0.5],
                             rel=1e-5)
    assert y[:, 1] == approx([-2 / math.sqrt(4.001), 2 / math.sqrt(4.001)], rel=1e-5)
    assert np.asarray(bn.moving_mean[...]) == approx([0.9 * 0 + 0.1 * 2] * 2)
    assert np.asarray(bn.moving_variance[...]) == approx([0.9 + 0.1 * 1, 0.9 + 0.1 * 4])
    bn.eval()                                          # inference uses the moving statistics
    y_eval = np.asarray(bn(x))
    assert y_eval[0, 0] == approx(2 * (1 - 0.2) / math.sqrt(1.0 + 1e-3) + 0.5, rel=1e-5)
    assert np.asarray(bn.moving_mean[...]) == approx([0.2, 0.2])   # unchanged by eval


def test_batchnorm_on_conv_features_reduces_batch_and_space():
    bn = built(L.BatchNormalization(), (3, 3, 2))
    x = np.random.default_rng(0).normal(size=(4, 3, 3, 2))
    bn.train()
    y = np.asarray(bn(jnp.asarray(x, jnp.float32)))
    ref = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3)
    assert y == approx(ref, abs=1e-5)
    assert np.asarray(bn.moving_mean[...]) == approx(0.01 * x.mean((0, 1, 2)), abs=1e-6)


def test_layer_normalization_against_numpy():
    ln = built(L.LayerNormalization(), (4,))
    set_weights(ln, [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]])
    x = np.random.default_rng(1).normal(size=(3, 4))
    gamma, beta = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 0.0, 1.0])
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
    assert np.asarray(ln(jnp.asarray(x, jnp.float32))) == approx(ref, abs=1e-5)


# ---- Dropout -----------------------------------------------------------------------------

def test_dropout_identity_in_eval_scaled_in_train():
    drop = built(L.Dropout(0.25), (1000,))
    x = jnp.ones((4, 1000))
    assert np.all(np.asarray(drop(x)) == 1.0)          # eval mode (the default after build)
    drop.train()
    y1, y2 = np.asarray(drop(x)), np.asarray(drop(x))
    assert np.all(np.isclose(y1, 0.0) | np.isclose(y1, 1 / 0.75))   # inverted scaling 1/(1-rate)
    assert (y1 != 0).mean() == approx(0.75, abs=0.02)
    assert not np.array_equal(y1, y2)                  # the stream advances per call
    drop.eval()
    assert np.all(np.asarray(drop(x)) == 1.0)


def test_dropout_rng_state_advances_through_jit():
    stack = L.build_stack([L.Dropout(0.5)], (64,), seed=0)
    stack.train()
    graphdef, state = nnx.split(stack)

    @jax.jit
    def step(state, x):
        module = nnx.merge(graphdef, state)
        return module(x), nnx.state(module)

    y1, state = step(state, jnp.ones((2, 64)))
    y2, state = step(state, jnp.ones((2, 64)))
    assert not np.array_equal(np.asarray(y1), np.asarray(y2))
    with pytest.raises(ValueError, match="rate=1.5"):
        L.Dropout(1.5)


# ---- Conv2D / MaxPooling2D vs naive loops -----------------------------------------------

def naive_conv(x, kernel, bias, stride, padding):
    n, h, w, _ = x.shape
    kh, kw, _, f = kernel.shape
    if padding == "same":
        out_h, out_w = -(-h // stride), -(-w // stride)
        ph, pw = max((out_h - 1) * stride + kh - h, 0), max((out_w - 1) * stride + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, out_h, out_w, f))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, kernel) + bias
    return out


@pytest.mark.parametrize("stride,padding", [(1, "valid"), (2, "same"), (2, "valid")])
def test_conv2d_against_naive_loop(stride, padding):
    rng = np.random.default_rng(2)
    x, kernel = rng.normal(size=(2, 5, 6, 3)), rng.normal(size=(3, 2, 3, 4))
    bias = rng.normal(size=4)
    layer = L.Conv2D(4, (3, 2), strides=stride, padding=padding)
    conv = built(layer, (5, 6, 3))
    set_weights(conv, [kernel, bias])
    y = np.asarray(conv(jnp.asarray(x, jnp.float32)))
    assert y.shape[1:] == layer.compute_output_shape((5, 6, 3))
    assert y == approx(naive_conv(x, kernel, bias, stride, padding), abs=1e-4)


def test_max_pooling_against_naive_loop():
    x = np.random.default_rng(3).normal(size=(2, 5, 4, 3))
    pool = built(L.MaxPooling2D(), (5, 4, 3))          # pool 2x2, strides 2, valid -> 2x2
    ref = np.zeros((2, 2, 2, 3))
    for i in range(2):
        for j in range(2):                              # row 4 falls off the last window
            ref[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
    y = np.asarray(pool(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(y, ref, atol=1e-6)
    same = built(L.MaxPooling2D(pool_size=2, padding="same"), (5, 4, 3))
    y_same = np.asarray(same(jnp.asarray(x, jnp.float32)))
    assert y_same.shape == (2, 3, 2, 3)
    assert y_same[1, 2, 1] == approx(x[1, 4, 2:4].max(axis=0), abs=1e-6)   # edge window


# ---- Embedding ---------------------------------------------------------------------------

def test_embedding_lookup_and_uniform_init():
    emb = built(L.Embedding(5, 2), (3,))
    table = np.asarray(emb.embeddings[...])
    assert table.shape == (5, 2) and np.abs(table).max() <= 0.05
    set_weights(emb, [np.arange(10.0).reshape(5, 2)])
    y = np.asarray(emb(jnp.array([[4, 0, 2]])))
    assert y.tolist() == [[[8.0, 9.0], [0.0, 1.0], [4.0, 5.0]]]


@pytest.mark.parametrize("compiled", [False, True])
def test_embedding_ids_out_of_range_give_nan_rows_never_wrap(compiled):
    emb = built(L.Embedding(5, 2), (4,))
    set_weights(emb, [np.arange(10.0).reshape(5, 2)])  # row i is [2i, 2i + 1]
    lookup = jax.jit(lambda ids: emb(ids)) if compiled else emb
    y = np.asarray(lookup(jnp.array([[3, 5, -1, 0], [4, 1, 6, -5]])))
    assert np.isnan(y[[0, 0, 1, 1], [1, 2, 2, 3]]).all()   # 5, -1, 6, -5: rows of NaN
    assert y[0, [0, 3]].tolist() == [[6.0, 7.0], [0.0, 1.0]]   # not [8, 9], the row -1 wraps to
    assert y[1, [0, 1]].tolist() == [[8.0, 9.0], [2.0, 3.0]]


def test_embedding_ids_are_not_cast_to_the_layer_dtype():
    emb = built(L.Embedding(300, 1, dtype="bfloat16"), (1,))
    set_weights(emb, [np.arange(300.0)[:, None]])      # bfloat16 rounds 257 to 256 (8 bits)
    assert emb(jnp.array([[257]])).dtype == jnp.bfloat16
    assert float(emb(jnp.array([[258]]))[0, 0, 0]) == 258.0   # id 258 is row 258, exactly
    ids = L.build_stack([L.InputLayer((2,), dtype="int32")], seed=0)(jnp.array([[1.0, 3.0]]))
    assert ids.dtype == jnp.int32 and ids.tolist() == [[1, 3]]   # as Keras's Input(dtype=)


# ---- Stack: shapes, order, penalties, seeds, modes ---------------------------------------

def test_build_stack_propagates_shapes_through_conv_and_flatten():
    stack = L.build_stack([L.Conv2D(4, 3, input_shape=(8, 8, 1)), L.MaxPooling2D(),
                           L.Flatten(), L.Dense(10), L.Dense(10)], seed=0)
    assert stack.output_shape == (10,)
    assert stack.layers[3].kernel.shape == (3 * 3 * 4, 10)   # 8-3+1 = 6, pooled to 3
    names = stack.layer_names            # Keras's automatic names: one count per base name, for the process
    assert [n.rstrip("_0123456789") for n in names] == ["conv2d", "max_pooling2d", "flatten", "dense", "dense"]
    assert len(set(names)) == 5
    assert stack(jnp.ones((2, 8, 8, 1))).shape == (2, 10)


def test_build_stack_rejects_contradicting_input_shape():
    with pytest.raises(ValueError, match=r"input_shape=\(10,\).*\(5,\)"):
        L.build_stack([L.Dense(3, input_shape=(10,))], (5,), seed=0)
    with pytest.raises(ValueError, match="not fully known"):
        L.build_stack([L.Dense(3)], seed=0)
    with pytest.raises(ValueError, match="height, width, channels"):
        L.build_stack([L.Conv2D(3, 3)], (8, 8), seed=0)
    assert L.build_stack([L.InputLayer((4,)), L.Dense(2)], seed=0).input_shape == (4,)


def test_keras_weight_order_dense_then_batchnorm():
    stack = L.build_stack([L.Dense(3, input_shape=(2,)), L.BatchNormalization(),
                           L.Dense(1, use_bias=False)], seed=0)
    shapes = [tuple(v.shape) for v in L.keras_weight_variables(stack)]
    assert shapes == [(2, 3), (3,), (3,), (3,), (3,), (3,), (3, 1)]
    kinds = [type(v).__name__ for v in L.keras_weight_variables(stack)]
    assert kinds == ["Param", "Param", "Param", "Param", "BatchStat", "BatchStat", "Param"]
    bn = stack.layers[1]
    assert L.keras_weight_variables(stack)[2:6] == [bn.gamma, bn.beta, bn.moving_mean,
                                                   bn.moving_variance]


def test_keras_weight_variables_of_a_plain_nnx_module():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.b_second = nnx.Linear(3, 2, rngs=rngs)
            self.a_first = nnx.Linear(2, 3, rngs=rngs)
    shapes = [tuple(v.shape) for v in L.keras_weight_variables(Net(nnx.Rngs(0)))]
    assert shapes == [(3,), (2, 3), (2,), (3, 2)]        # attributes sorted by name


def test_regularization_penalty_by_hand():
    stack = L.build_stack([L.Dense(2, kernel_regularizer=regularizers.L2(0.1), input_shape=(2,),
                                   bias_regularizer="l1"), L.Dense(1)], seed=0)
    set_weights(stack.layers[0], [[[1.0, 2.0], [0.0, -1.0]], [3.0, -4.0]])
    # 0.1 * (1 + 4 + 0 + 1) + 0.01 * (3 + 4) = 0.6 + 0.07
    assert float(L.regularization_penalty(stack)) == approx(0.67)
    assert float(L.regularization_penalty(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))) == 0.0


def test_same_seed_same_weights():
    make = lambda seed: L.build_stack([L.Dense(4, input_shape=(3,)), L.Dropout(0.5),  # noqa: E731
                                       L.Dense(2)], seed=seed)
    a, b, c = make(7), make(7), make(8)
    for va, vb in zip(L.keras_weight_variables(a), L.keras_weight_variables(b)):
        assert np.array_equal(np.asarray(va[...]), np.asarray(vb[...]))
    assert not np.array_equal(np.asarray(a.layers[0].kernel[...]),
                              np.asarray(c.layers[0].kernel[...]))


def test_train_and_eval_graphdefs_differ():
    stack = L.build_stack([L.Dense(4, input_shape=(3,)), L.BatchNormalization(), L.Dropout(0.5)],
                          seed=0)
    eval_graphdef, _ = nnx.split(stack)
    stack.train()
    train_graphdef, _ = nnx.split(stack)
    assert stack.layers[2].deterministic is False and stack.layers[1].use_running_average is False
    assert eval_graphdef != train_graphdef
    stack.eval()
    assert nnx.split(stack)[0] == eval_graphdef


def test_layer_config_round_trip():
    layer = L.Conv2D(8, 3, padding="same", activation="relu", input_shape=(4, 4, 1))
    config = layer.get_config()
    assert config["class_name"] == "Conv2D" and config["config"]["padding"] == "same"
    clone = L.layer_from_config(config)
    assert clone.kernel_size == (3, 3) and clone.input_shape == (4, 4, 1)


# ---- dtype -------------------------------------------------------------------------------

ALL_LAYERS = [L.Conv2D(4, 3, padding="same"), L.MaxPooling2D(), L.BatchNormalization(),
              L.Flatten(), L.Dense(6, activation="relu"), L.Dropout(0.5),
              L.LayerNormalization(), L.Activation("softmax")]


def with_dtype(layers, dtype):
    return [L.layer_from_config({"class_name": type(layer).__name__, "config": {
        **layer.get_config()["config"], "dtype": dtype}}) for layer in layers]


@pytest.mark.parametrize("dtype,name", [(None, "float32"), ("bfloat16", "bfloat16"),
                                        (np.float16, "float16")])
def test_every_layer_holds_and_computes_in_its_dtype(dtype, name):
    layers = with_dtype(ALL_LAYERS, dtype)
    assert {(la.dtype, la.compute_dtype, la.variable_dtype) for la in layers} == {(name,) * 3}
    stack = L.build_stack(layers, (4, 4, 1), seed=0)
    weights = L.keras_weight_variables(stack)
    wide = L.keras_weight_variables(L.build_stack(ALL_LAYERS, (4, 4, 1), seed=0))
    for narrow, float32 in zip(weights, wide, strict=True):   # the float32 weights, rounded
        np.testing.assert_array_equal(narrow[...], float32[...].astype(name))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 1)), jnp.float32)
    for mode in ("eval", "train"):
        getattr(stack, mode)()
        out = x
        for module in stack.layers:                    # float32 in, each output in `name`
            out = module(out)
            assert out.dtype == name, (type(module).__name__, mode)
    assert {str(v[...].dtype) for v in weights} == {name}   # also the moved BN statistics


def test_normalization_statistics_are_float32_in_a_bfloat16_layer():
    # 256, 258, 260, 262 are exact in bfloat16 (step 2 in [256, 512)); their sum 1036 is not
    # (step 8 in [1024, 2048)), so a bfloat16 mean would be 258 or 260. In float32: mean 259,
    # variance (9 + 1 + 1 + 9) / 4 = 5.
    x = jnp.array([[256.0, 258.0, 260.0, 262.0]])
    expected = np.array([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(5 + 1e-3)
    ln = built(L.LayerNormalization(dtype="bfloat16"), (4,))
    assert ln(x).dtype == jnp.bfloat16
    assert np.asarray(ln(x), np.float32)[0] == approx(expected, rel=1e-2)
    bn = built(L.BatchNormalization(dtype="bfloat16"), (1,))
    bn.train()                                         # the same numbers, down the batch
    assert np.asarray(bn(x.T), np.float32)[:, 0] == approx(expected, rel=1e-2)


def test_dtype_config_round_trip_and_float64_without_x64():
    assert L.Dense(2).get_config()["config"]["dtype"] == "float32"
    for layer in [L.Dense(2, dtype=jnp.bfloat16), L.Embedding(3, 2, dtype=np.float16),
                  L.InputLayer((2,), dtype="int32"), *with_dtype(ALL_LAYERS, "float64")]:
        config = json.loads(json.dumps(layer.get_config()))    # plain JSON, as save() writes
        assert L.layer_from_config(config).compute_dtype == config["config"]["dtype"] \
            == layer.dtype
    dense = L.Dense(2, input_shape=(3,), dtype="float64")     # JAX holds float32 without x64
    assert L.build_stack([dense], seed=0).layers[0].kernel[...].dtype == jnp.float32
    with jax.enable_x64(True):
        dense = L.Dense(2, input_shape=(3,), dtype="float64")
        assert L.build_stack([dense], seed=0).layers[0](jnp.ones((1, 3))).dtype == jnp.float64


# ---- refused configurations --------------------------------------------------------------

REFUSED = [  # (layer, the argument named, values refused, the other arguments)
    (L.LayerNormalization, "epsilon", [-1, 0, float("nan"), float("inf"), "1e-3"], {}),
    (L.BatchNormalization, "epsilon", [0.0, -1e-3], {}),
    (L.BatchNormalization, "momentum", [1.5, -0.1, True], {}),
    (L.Embedding, "input_dim", [0, True], {"output_dim": 2}),
    (L.Embedding, "output_dim", [0, 2.0], {"input_dim": 10}),
    (L.Dropout, "rate", [1.0, -0.1, True, None], {}),
    (L.Dense, "units", [0, True, 2.5], {}),
    (L.Dense, "input_dim", [0, True], {"units": 2}),
    (L.Dense, "input_shape", [(True,), (2.0,), "10"], {"units": 2}),
    (L.Dense, "dtype", ["float8", "int32", "mixed_float8", 3], {"units": 2}),
    (L.InputLayer, "dtype", ["string"], {"shape": (2,)}),
    (L.Conv2D, "filters", [0, False], {"kernel_size": 3}),
    (L.Conv2D, "kernel_size", [(True, 3), (3,), 3.0], {"filters": 4}),
    (L.Conv2D, "strides", [0], {"filters": 4, "kernel_size": 3}),
    (L.Conv2D, "padding", ["full"], {"filters": 4, "kernel_size": 3}),
    (L.MaxPooling2D, "pool_size", [0], {}),
]


@pytest.mark.parametrize("layer,argument,value,others", [
    (layer, argument, v, others) for layer, argument, values, others in REFUSED for v in values])
def test_bad_configs_are_refused_at_construction(layer, argument, value, others):
    with pytest.raises(ValueError) as info:
        layer(**others, **{argument: value})
    message = str(info.value)                 # the class, the argument, the value and a fix
    assert message.startswith(f"{layer.__name__}: `{argument}` must be"), message
    assert f"got {argument}={value!r}" in message and "Pass" in message, message
    assert argument != "dtype" or "'float32', 'bfloat16', 'float16', 'float64'" in message


def test_in_range_configs_are_kept():
    assert L.Dropout(0).rate == 0.0 and L.Dropout(np.float32(0.25)).rate == 0.25
    assert L.BatchNormalization(momentum=0, epsilon=1).momentum == 0.0
    assert L.BatchNormalization(momentum=1).momentum == 1.0
    assert L.LayerNormalization(epsilon=np.float64(1e-5)).epsilon == 1e-5
    assert L.Dense(2, input_shape=np.array([4, 5])).input_shape == (4, 5)


@pytest.mark.parametrize("name, low, high, std", [
    ("glorot_uniform", -np.sqrt(6 / 600), np.sqrt(6 / 600), np.sqrt(2 / 600)),     # fans 200, 400
    ("he_uniform", -np.sqrt(6 / 200), np.sqrt(6 / 200), np.sqrt(2 / 200)),
    ("glorot_normal", -2 * np.sqrt(2 / 600) / 0.8796, 2 * np.sqrt(2 / 600) / 0.8796, np.sqrt(2 / 600)),
    ("he_normal", -2 * np.sqrt(2 / 200) / 0.8796, 2 * np.sqrt(2 / 200) / 0.8796, np.sqrt(2 / 200)),
    ("lecun_normal", -2 * np.sqrt(1 / 200) / 0.8796, 2 * np.sqrt(1 / 200) / 0.8796, np.sqrt(1 / 200)),
    ("uniform", -0.05, 0.05, 0.1 / np.sqrt(12)),
])
def test_initializers_draw_keras_distributions_on_the_host(name, low, high, std):
    """Host (NumPy) draws for a [200, 400] kernel: inside Keras's bounds (uniform limits, or 2 of the
    untruncated sigma for truncated normals), with Keras's standard deviation, the same for the same
    generator seed and float32."""
    from batchfit.layers.initializers import get_initializer
    init = get_initializer(name)
    w = init(np.random.default_rng(0), (200, 400), np.float32)
    assert w.dtype == np.float32 and w.shape == (200, 400)
    assert low <= w.min() and w.max() <= high
    assert w.std() == pytest.approx(std, rel=0.02)            # 80,000 draws: the sample std is within 1%
    np.testing.assert_array_equal(w, init(np.random.default_rng(0), (200, 400), np.float32))


def test_a_models_weights_follow_from_its_seed_alone():
    """Sequential(seed=s) builds the same weights every time, and another seed other weights;
    a user's JAX-style initializer (key, shape, dtype) gets a JAX key."""
    import jax

    import batchfit as bf

    def build(seed, init="glorot_uniform"):
        return bf.Sequential([bf.layers.Dense(8, input_shape=(4,), kernel_initializer=init), bf.layers.Dropout(0.5),
                              bf.layers.Dense(1)], seed=seed).get_weights()
    for a, b in zip(build(3), build(3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(build(3)[0], build(4)[0])
    kernel = build(3, jax.nn.initializers.normal(1.0))[0]
    assert kernel.shape == (4, 8) and 0.3 < kernel.std() < 3.0
