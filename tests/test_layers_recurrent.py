"""Recurrent layers, wrappers and Keras masks, against Keras 3 itself (KERAS_BACKEND=jax).

Each layer is built in both libraries, Keras's weights copied into batchfit's, and the outputs (padded
sequences masked or not) and the gradients with respect to the weights and the inputs compared.
"""

import functools
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

RTOL, ATOL = 1e-5, 1e-6
L = bf.layers

# Steps True are data; padding at the end (rows 1, 2), and row 3 masked inside too.
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 1, 0]], bool)


def sequences(batch=4, steps=5, features=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, steps, features)).astype(np.float32)


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def both(name, *args, **kwargs):
    """The same layer in Keras and batchfit, built on sequences(), with Keras's weights in both."""
    theirs = getattr(keras.layers, name)(*args, **kwargs)
    mine = getattr(L, name)(*args, **kwargs)
    return built(theirs, mine)


def built(theirs, mine, shape=(None, 5, 3)):
    """Both layers built for `shape`, batchfit's with Keras's weights."""
    theirs.build(shape)
    mine.build(shape)
    mine.set_weights(theirs.get_weights())
    return theirs, mine


def keras_run(layer, x, cotangents):
    """Keras's outputs without and with MASK, and d sum(masked output_i * cotangent_i) / d (trainable
    weights, x), through `stateless_call`, in one compiled function."""
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def forward(weights, x, mask):
        return as_list(layer.stateless_call(weights, non_trainable, x, mask=mask)[0])
    return _run(forward, [v.value for v in layer.trainable_variables], x, cotangents)


def batchfit_run(layer, x, cotangents):
    """The same through the built module (nnx.split/merge), the weights' gradients in Keras's order."""
    module = layer._module
    graph, params, rest = nnx.split(module, nnx.Param, ...)

    def forward(params, x, mask):
        return as_list(run_module(nnx.merge(graph, params, rest), x, (), {"mask": mask}))
    plain, masked, (grads, grad_x) = _run(forward, params, x, cotangents)
    pure, paths = nnx.to_pure_dict(grads), {id(v): p for p, v in nnx.iter_graph(module) if isinstance(v, nnx.Variable)}
    ordered = []
    for variable in L.keras_weight_variables(module):
        node = pure
        for key in paths[id(variable)]:
            node = node[key]
        ordered.append(node)
    return plain, masked, (ordered, grad_x)


def _run(forward, weights, x, cotangents):
    def loss(weights, x):
        return sum(jnp.sum(o * c) for o, c in zip(forward(weights, x, MASK), cotangents))

    @jax.jit
    def run(weights, x):
        return forward(weights, x, None), forward(weights, x, MASK), jax.grad(loss, argnums=(0, 1))(weights, x)
    return run(weights, jnp.asarray(x))


def check_against_keras(theirs, mine, x):
    """Outputs unmasked and masked, and the masked gradients, within RTOL."""
    cotangents = [np.random.default_rng(i).normal(size=np.shape(o)).astype(np.float32)
                  for i, o in enumerate(as_list(jax.eval_shape(lambda x: mine(x, mask=MASK), x)))]
    for got, expected in zip(batchfit_run(mine, x, cotangents), keras_run(theirs, x, cotangents)):
        assert_close(jax.tree.leaves(got), jax.tree.leaves(expected))


def assert_close(mine, theirs, rtol=RTOL, atol=ATOL):
    mine, theirs = as_list(mine), as_list(theirs)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


RECURRENT_CASES = [
    ("SimpleRNN", {"return_sequences": True, "go_backwards": True, "activation": "relu"}),
    ("LSTM", {"return_sequences": True, "return_state": True}),
    ("LSTM", {"go_backwards": True, "unit_forget_bias": False, "use_bias": False}),
    ("LSTM", {"recurrent_dropout": 0.3, "return_state": True}),        # Keras's implementation 1, inference
    ("GRU", {"return_sequences": True, "go_backwards": True, "return_state": True}),
    ("GRU", {"reset_after": False, "return_sequences": True, "recurrent_dropout": 0.2}),
]


@pytest.mark.parametrize("name, kwargs", RECURRENT_CASES, ids=lambda c: str(c))
def test_recurrent_outputs_and_gradients_match_keras(name, kwargs):
    theirs, mine = both(name, 4, **kwargs)
    assert [w.shape for w in mine.get_weights()] == [tuple(w.shape) for w in theirs.get_weights()]
    check_against_keras(theirs, mine, sequences())


def test_masked_steps_keep_the_previous_output_and_state():
    _, lstm = both("LSTM", 2, return_sequences=True, return_state=True)
    x = sequences()
    out, h, c = lstm(x, mask=MASK)
    # Row 1 has 3 data steps: steps 3, 4 repeat step 2's output; the final state is step 2's.
    np.testing.assert_array_equal(out[1, 3], out[1, 2])
    np.testing.assert_array_equal(out[1, 4], out[1, 2])
    np.testing.assert_array_equal(h[1], out[1, 2])
    # Padding at the end changes nothing: the same as running the 3 data steps alone.
    short, h_short, c_short = lstm(x[1:2, :3])
    np.testing.assert_allclose(h[1], h_short[0], rtol=RTOL)
    np.testing.assert_allclose(c[1], c_short[0], rtol=RTOL)


def test_initial_state_matches_keras():
    theirs, mine = both("LSTM", 3, return_state=True)
    x = sequences()
    rng = np.random.default_rng(1)
    state = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
    assert_close(mine(x, initial_state=state), theirs(x, initial_state=state))
    with pytest.raises(ValueError, match="initial_state"):
        mine(x, initial_state=state[:1])


def test_dropout_masks_are_fixed_across_steps_and_only_in_training():
    # kernel = identity, no recurrence, linear: output_t = x_t * mask, the mask [B, C] the same at every t.
    rnn = L.SimpleRNN(3, activation=None, kernel_initializer="identity", recurrent_initializer="zeros",
                      dropout=0.5, seed=3, return_sequences=True)
    x = np.ones((64, 4, 3), np.float32)
    np.testing.assert_array_equal(rnn(x), x)                       # inference: no dropout
    out = np.asarray(rnn(x, training=True))
    assert set(np.unique(out)) <= {0.0, 2.0}                       # dropped, or scaled by 1 / (1 - 0.5)
    np.testing.assert_array_equal(out, np.repeat(out[:, :1], 4, axis=1))
    assert 0.35 < (out == 0).mean() < 0.65                          # 768 draws at rate 0.5
    assert not np.array_equal(np.asarray(rnn(x, training=True)), out)   # a new mask per call


def test_bidirectional_matches_keras_in_every_merge_mode():
    x = sequences()
    for merge_mode in ["concat", "sum", "mul", "ave", None]:
        kwargs = dict(return_sequences=True, return_state=merge_mode == "sum")
        rnn = "GRU" if merge_mode == "concat" else "SimpleRNN"
        theirs = keras.layers.Bidirectional(getattr(keras.layers, rnn)(3, **kwargs), merge_mode=merge_mode)
        mine = L.Bidirectional(getattr(L, rnn)(3, **kwargs), merge_mode=merge_mode)
        built(theirs, mine)          # set_weights checks the shapes: forward's weights, then backward's
        if merge_mode == "concat":
            check_against_keras(theirs, mine, x)      # masked: the backward layer outputs zeros at padding
        else:
            forward = [jax.jit(lambda x, layer=layer: layer(x, mask=MASK)) for layer in (mine, theirs)]
            assert_close(*(f(x) for f in forward))


def test_bidirectional_last_output_and_names():
    theirs = keras.layers.Bidirectional(keras.layers.LSTM(2, name="enc"))
    mine = L.Bidirectional(L.LSTM(2, name="enc"))
    built(theirs, mine)
    assert (mine.forward_layer.name, mine.backward_layer.name) == ("forward_enc", "backward_enc")
    assert mine.backward_layer.go_backwards and not mine.forward_layer.go_backwards
    x = sequences()
    assert_close(mine(x, mask=MASK), theirs(x, mask=MASK))
    assert mine.compute_output_shape((5, 3)) == (4,)


def test_time_distributed_dense_matches_keras():
    theirs = keras.layers.TimeDistributed(keras.layers.Dense(2, activation="tanh"))
    mine = L.TimeDistributed(L.Dense(2, activation="tanh"))
    built(theirs, mine)
    x = sequences()
    assert [w.name for w in mine.weights] == ["kernel", "bias"]
    assert_close(mine(x), theirs(x))
    assert mine.compute_output_shape((5, 3)) == (5, 2)


def test_time_distributed_batch_norm_uses_per_step_statistics_as_keras():
    theirs, mine = (lib.layers.TimeDistributed(lib.layers.BatchNormalization()) for lib in (keras, bf))
    x = sequences() * np.arange(1, 6, dtype=np.float32)[None, :, None]   # steps of different spread
    theirs(x)
    mine(x)
    assert_close(mine(x, training=True), theirs(x, training=True), atol=1e-5)
    assert_close(mine.get_weights(), theirs.get_weights())       # moving statistics updated once per step


def test_masking_layer_matches_keras():
    x = sequences()
    x[1, 3:] = 0.0
    x[2, 1:] = 0.0
    theirs, mine = (lib.Sequential([lib.Input((5, 3)), lib.layers.Masking(), lib.layers.SimpleRNN(2)])
                    for lib in (keras, bf))
    mine.set_weights(theirs.get_weights())
    assert_close(mine.predict(x, verbose=0), theirs.predict(x, verbose=0))
    masking = L.Masking(mask_value=0.0)
    np.testing.assert_array_equal(masking._module_for(x).compute_mask(x), np.any(x != 0, axis=-1))


def ids_data(n=24, steps=6, vocab=9, seed=0):
    """Token ids [n, steps] padded with 0 at the end (lengths 1..steps), and a target per sequence."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, steps)).astype(np.int32)
    lengths = rng.integers(1, steps + 1, size=n)
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    y = (ids.sum(1, keepdims=True) / (4.0 * steps)).astype(np.float32)
    return ids, y


def fit_both(build, x, y, epochs=2):
    keras.utils.set_random_seed(0)          # Keras draws the initial weights both models start from
    theirs, mine = build(keras), build(bf)
    mine.set_weights(theirs.get_weights())
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    mine.compile(optimizer=bf.optimizers.SGD(0.1), loss="mse")
    kwargs = dict(epochs=epochs, batch_size=8, shuffle=False, verbose=0)
    h_theirs, h_mine = theirs.fit(x, y, **kwargs), mine.fit(x, y, **kwargs)
    np.testing.assert_allclose(h_mine.history["loss"], h_theirs.history["loss"], rtol=RTOL)
    assert h_mine.history["loss"][-1] < h_mine.history["loss"][0]
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)
    return mine, theirs


def test_embedding_mask_zero_lstm_fits_as_keras():
    def build(lib):
        return lib.Sequential([lib.Input((6,), dtype="int32"), lib.layers.Embedding(9, 4, mask_zero=True),
                               lib.layers.Dropout(0.0), lib.layers.LSTM(5), lib.layers.Dense(1)])
    x, y = ids_data()
    mine, theirs = fit_both(build, x, y)
    assert_close(mine.predict(x, verbose=0), theirs.predict(x, verbose=0))


def test_functional_embedding_bidirectional_gru_fits_as_keras():
    def build(lib):
        ids = lib.Input((6,), dtype="int32")
        h = lib.layers.Embedding(9, 4, mask_zero=True)(ids)
        h = lib.layers.Bidirectional(lib.layers.GRU(3, return_sequences=True))(h)
        h = lib.layers.Dense(3, activation="tanh")(h)           # keeps the mask, as Keras's Dense
        return lib.Model(ids, lib.layers.Dense(1)(lib.layers.SimpleRNN(2)(h)))
    fit_both(build, *ids_data())


def test_models_with_recurrent_layers_compile_and_fit():
    x, y = sequences(16), np.random.default_rng(2).normal(size=(16, 5, 1)).astype(np.float32)
    model = bf.Sequential([bf.Input((5, 3)), L.LSTM(4, return_sequences=True, dropout=0.2, recurrent_dropout=0.2),
                           L.TimeDistributed(L.Dense(1))])
    model.compile(optimizer=bf.optimizers.SGD(0.1), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    losses = model.fit(x, y, epochs=2, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and model.evaluate(x, y, verbose=0) < before
    assert model.predict(x, verbose=0).shape == (16, 5, 1)


def test_without_masks_the_model_runs_the_plain_module_chain():
    """No layer makes a mask: Sequential's and the functional model's programs are the modules called in turn."""
    layers = [L.Dense(4), L.Dropout(0.1), L.LSTM(3), L.Dense(1)]
    stack = L.build_stack(layers, (5, 3))
    plain = jax.make_jaxpr(lambda x: functools.reduce(lambda h, m: m(h), stack.layers, x))(sequences())
    assert str(jax.make_jaxpr(stack)(sequences())) == str(plain)
    inputs = bf.Input((5, 3))
    model = bf.Model(inputs, functools.reduce(lambda h, layer: layer(h), layers, inputs))
    assert str(jax.make_jaxpr(model.module)(sequences())) == str(plain)


def test_masks_through_custom_layers_follow_keras():
    """A Keras-style layer drops the mask unless it supports masking, defines compute_mask, or takes mask=."""
    def build(lib):
        class Reverse(lib.layers.Layer):             # no supports_masking: Keras drops the mask here
            def call(self, x):
                return x[:, ::-1]

        class Keep(lib.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.supports_masking = True

            def call(self, x):
                return 2.0 * x

        class Count(lib.layers.Layer):                # takes the mask: the number of data steps
            def call(self, x, mask=None):            # batchfit builds it with a call without mask
                count = 0.0 if mask is None else lib.ops.sum(lib.ops.cast(mask, "float32"), axis=1, keepdims=True)
                return x[:, 0, :1] * 0.0 + count

        ids = lib.Input((6,), dtype="int32")
        h = lib.layers.Embedding(9, 2, mask_zero=True)(ids)
        masked = lib.layers.GRU(2)(Keep()(h))
        unmasked = lib.layers.GRU(2)(Reverse()(h))
        return lib.Model(ids, lib.layers.Concatenate()([masked, unmasked, Count()(h)]))
    theirs, mine = build(keras), build(bf)
    mine.set_weights(theirs.get_weights())
    ids = ids_data(n=6)[0]
    assert_close(mine.predict(ids, verbose=0), theirs.predict(ids, verbose=0))
    np.testing.assert_array_equal(mine.predict(ids, verbose=0)[:, -1], (ids != 0).sum(1))


@pytest.mark.parametrize("layer", [
    L.SimpleRNN(3, activation="relu", dropout=0.1, return_sequences=True, seed=2),
    L.LSTM(4, unit_forget_bias=False, recurrent_dropout=0.2, go_backwards=True, return_state=True),
    L.GRU(2, reset_after=False, use_bias=False, kernel_regularizer="l2", unroll=True),
    L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode="mul"),
    L.Bidirectional(L.GRU(2), backward_layer=L.GRU(2, go_backwards=True, name="back")),
    L.TimeDistributed(L.Dense(3, activation="relu")),
    L.Masking(mask_value=-1.0),
    L.Embedding(5, 2, mask_zero=True),
], ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
    config = layer.get_config()
    again = L.layer_from_config(config)
    assert again.get_config() == config
    x = sequences() if not isinstance(layer, L.Embedding) else np.array([[1, 0, 2]])
    layer(x)
    again(x)
    assert [w.shape for w in again.weights] == [w.shape for w in layer.weights]


@pytest.mark.parametrize("make, argument", [
    (lambda: L.LSTM(0), "units"),
    (lambda: L.GRU(2, dropout=1.5), "dropout"),
    (lambda: L.SimpleRNN(2, recurrent_dropout=-0.1), "recurrent_dropout"),
    (lambda: L.LSTM(2, stateful=True), "stateful"),
    (lambda: L.LSTM(2, kernel_constraint="non_neg"), "kernel_constraint"),
    (lambda: L.GRU(2, use_cudnn="yes"), "use_cudnn"),
    (lambda: L.LSTM(2, seed=1.5), "seed"),
    (lambda: L.Bidirectional(L.LSTM(2), merge_mode="max"), "merge_mode"),
    (lambda: L.Bidirectional(L.Dense(2)), "layer"),
    (lambda: L.Bidirectional(L.LSTM(2), backward_layer=L.LSTM(2)), "go_backwards"),
    (lambda: L.Bidirectional(L.LSTM(2), backward_layer=L.LSTM(2, go_backwards=True, return_sequences=True)),
     "return_sequences"),
    (lambda: L.TimeDistributed("dense"), "layer"),
    (lambda: L.Masking(mask_value="zero"), "mask_value"),
    (lambda: L.Embedding(4, 2, mask_zero="yes"), "mask_zero"),
])
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises((ValueError, TypeError), match=argument):
        make()


def test_wrong_input_shapes_are_explained():
    with pytest.raises(ValueError, match="timesteps"):
        bf.Sequential([bf.Input((3,)), L.LSTM(2)]).build()
    with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
        lstm = L.LSTM(2)
        lstm(sequences())
        lstm(sequences(features=4))
