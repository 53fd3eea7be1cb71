"""Mixed precision (issue 24): Keras 3's policies, float32 losses and metrics, dynamic loss scaling.

bfloat16 keeps 8 significant bits (7 stored, 1 implicit): one rounding moves a value by at most
u = 2**-8 relative. Tolerances below are stated in units of u, with their derivation.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model, reference_sgd

import batchfit as bf
from batchfit.optimizers._loss_scale import LossScaleState

U = 2.0 ** -8                                   # bfloat16's unit roundoff
mp = bf.mixed_precision


@pytest.fixture(autouse=True)
def _float32_afterwards():
    """The global policy is process-wide: every test leaves it at the default."""
    yield
    mp.set_global_policy("float32")


def regression(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, np.stack([2 * x[:, 0], x[:, 1] - x[:, 2]], 1).astype(np.float32)


def mlp(lib, **kwargs):
    layers = lib.layers
    return lib.Sequential([lib.Input((6,)), layers.Dense(16, activation="relu"), layers.BatchNormalization(),
                           layers.Dense(2)], **kwargs)


def opt_state(model):
    return model.get_position().train.opt_state


# ---- policies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,variable,compute", [
    ("mixed_bfloat16", "float32", "bfloat16"), ("mixed_float16", "float32", "float16"),
    ("float32", "float32", "float32"), ("bfloat16", "bfloat16", "bfloat16")])
def test_a_policy_names_its_variable_and_compute_dtypes(name, variable, compute):
    policy = mp.Policy(name)
    assert mp.Policy is mp.DTypePolicy and repr(policy) == f'<DTypePolicy "{name}">'
    assert (policy.variable_dtype, policy.compute_dtype, policy.get_config()) == (variable, compute, {"name": name})
    layer = bf.layers.Dense(2, dtype=name)
    assert (layer.dtype, layer.variable_dtype, layer.compute_dtype) == (variable, variable, compute)
    assert layer.dtype_policy == policy == mp.DTypePolicy.from_config(policy.get_config())


def test_bad_policies_say_what_was_given_and_what_is_taken():
    with pytest.raises(ValueError, match=r"got dtype='mixed_float8'.*'mixed_bfloat16'"):
        mp.set_global_policy("mixed_float8")
    with pytest.raises(ValueError, match=r"Dense: `dtype` must be one of .*'mixed_float16'.*got dtype=3"):
        bf.layers.Dense(2, dtype=3)
    assert mp.global_policy().name == "float32"                 # unchanged by the refusal


def test_the_global_policy_is_the_default_of_layers_constructed_after_it():
    before = bf.layers.Dense(2)
    mp.set_global_policy("mixed_bfloat16")
    after, explicit = bf.layers.Dense(2), bf.layers.Dense(2, dtype="float32")
    assert mp.global_policy() == mp.dtype_policy() == mp.DTypePolicy("mixed_bfloat16")
    assert (after.dtype, after.compute_dtype) == ("float32", "bfloat16")    # Keras: dtype = variable dtype
    assert before.dtype_policy.name == explicit.dtype_policy.name == "float32"
    mp.set_global_policy(mp.Policy("float32"))                              # everything as before
    assert bf.layers.Dense(2).dtype_policy.name == "float32" and mp.global_policy().name == "float32"
    assert bf.layers.Dense(2).get_config()["config"]["dtype"] == "float32"


def test_inputs_stay_float32_under_a_mixed_global_policy_as_keras_inputs_do():
    mp.set_global_policy("mixed_bfloat16")
    model = bf.Sequential([bf.Input((1,)), bf.layers.Dense(1, dtype="float32", kernel_initializer="ones")], seed=0)
    x = np.array([[1 + 2.0**-10]], np.float32)       # between two bfloat16 values (spacing 2**-7 at 1)
    assert model.predict(x, verbose=0)[0, 0] == x[0, 0]


def test_config_writes_a_mixed_policy_as_keras_does_and_round_trips():
    keras = pytest.importorskip("keras")
    for name in ("mixed_bfloat16", "mixed_float16"):
        ours = bf.layers.Dense(2, dtype=name).get_config()
        assert ours["config"]["dtype"] == keras.layers.Dense(2, dtype=name).get_config()["dtype"]
        restored = bf.layers.layer_from_config(json.loads(json.dumps(ours)))      # plain JSON, as save() writes
        assert restored.dtype_policy.name == name and restored.compute_dtype == name[6:]
    written = keras.layers.Dense(2).get_config()["dtype"]           # Keras 3.15 writes float32 as a dict too
    assert bf.layers.Dense(2, dtype=written).dtype_policy.name == "float32"


# ---- mixed_bfloat16: float32 weights and losses, bfloat16 arithmetic ---------------------------

def test_mixed_bfloat16_keeps_float32_weights_and_a_float32_loss():
    mp.set_global_policy("mixed_bfloat16")
    model = linear_model([1.0])                 # y = w x + b, w = 1, b = 0
    model.compile(optimizer=bf.optimizers.SGD(1e-3), loss="mse")
    # y_pred = 1 (exact in bfloat16), residual -0.5, loss 0.25, dL/dw = 2 * -0.5 * 1 = -1
    loss = model.train_on_batch(np.ones((1, 1), np.float32), np.full((1, 1), 1.5, np.float32))
    assert loss == 0.25 and np.asarray(loss).dtype == np.float32
    w, b = model.get_weights()
    # 1 + 1e-3 in float32; bfloat16 weights (spacing 2**-7 at 1) would have stayed at 1.0
    assert w.dtype == np.float32 and w[0, 0] == np.float32(1.0) + np.float32(1e-3)
    assert b[0] == np.float32(1e-3)
    assert model.predict(np.ones((1, 1), np.float32), verbose=0).dtype == jnp.bfloat16    # as Keras's predict


@pytest.mark.parametrize("make,shape,dtype", [
    (lambda L: [L.Conv2D(2, 3), L.BatchNormalization(), L.MaxPooling2D()], (6, 6, 1), np.float32),
    (lambda L: [L.Embedding(10, 4), L.LSTM(3)], (5,), np.int32),
    (lambda L: [L.GRU(3, return_sequences=True), L.LayerNormalization(), L.PReLU()], (5, 2), np.float32)])
def test_layers_under_mixed_bfloat16_hold_float32_and_output_bfloat16(make, shape, dtype):
    mp.set_global_policy("mixed_bfloat16")
    model = bf.Sequential([bf.Input(shape, dtype=np.dtype(dtype).name), *make(bf.layers)], seed=0)
    assert model.predict(np.ones((2, *shape), dtype), verbose=0).dtype == jnp.bfloat16
    assert {w.dtype for w in model.get_weights()} == {np.dtype(np.float32)}     # BN's moving statistics too


def test_crossentropy_of_a_bfloat16_sigmoid_is_still_computed_from_its_logits():
    # logit 30 on the wrong side: BCE = softplus(30) = 30.0 (to 1e-13). sigmoid(30) is 1.0 in bfloat16,
    # which clipped to 1 - 1e-7 would give ~16; the widened output keeps its (widened) logits.
    mp.set_global_policy("mixed_bfloat16")
    model = bf.Sequential([bf.Input((1,)), bf.layers.Dense(1, activation="sigmoid")], seed=0)
    model.set_weights([np.array([[30.0]], np.float32), np.zeros(1, np.float32)])
    model.compile(optimizer=bf.optimizers.SGD(0.01), loss="binary_crossentropy", metrics=["binary_crossentropy"])
    loss, metric = model.train_on_batch(np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32))
    assert float(loss) == float(metric) == 30.0
    # dL/dw = sigmoid(30) * x = 1 (in float32 to 1e-13): w = 30 - 0.01, b = -0.01
    np.testing.assert_allclose([model.get_weights()[0][0, 0], model.get_weights()[1][0]], [29.99, -0.01], rtol=1e-6)


def test_a_bfloat16_run_tracks_the_float32_run():
    """Each forward pass rounds about 8 times to bfloat16 (inputs, 2 kernels, 2 biases, 3 outputs), each
    an independent relative error uniform in +-u/2 (rms u/sqrt(12)): y_pred's rms relative error is
    ~sqrt(8/12) u = 0.8 u, and the loss, a mean of squared residuals no smaller than y_pred's error
    allows, moves by ~2 x 0.8 u. Allowed: 2 u relative on every epoch's loss and on evaluate; the
    runs must differ (the arithmetic really is bfloat16)."""
    x, y = regression()
    losses, weights = {}, None
    for policy in ("float32", "mixed_bfloat16"):
        mp.set_global_policy(policy)
        model = mlp(bf, seed=0)
        model.compile(optimizer="sgd", loss="mse")
        weights = weights or model.get_weights()
        model.set_weights(weights)
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
        losses[policy] = np.array([*history, model.evaluate(x, y, verbose=0)])
    relative = np.abs(losses["mixed_bfloat16"] / losses["float32"] - 1)
    assert np.all(relative <= 2 * U) and np.any(relative > 0), relative


def test_train_on_batch_and_fit_agree_bitwise_under_mixed_bfloat16():
    mp.set_global_policy("mixed_bfloat16")
    x, y = regression(48)
    models = [mlp(bf, seed=0) for _ in range(2)]
    for model in models:
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    models[1].set_weights(models[0].get_weights())
    history = models[0].fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    looped = [float(models[1].train_on_batch(x[i:i + 16], y[i:i + 16])[0]) for _ in range(2) for i in (0, 16, 32)]
    assert [v for epoch in history.batch_history["loss"] for v in epoch] == looped
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_with_the_same_policy_gives_the_same_numbers():
    """Same policy, same initial weights, same batches: the bfloat16 forward pass, the MSE loss (Keras casts
    y_pred to float32 before it, as batchfit does) and the weights after SGD agree to float32 rounding.
    Metrics differ on purpose: Keras computes MAE on the bfloat16 output in bfloat16 (y_true cast to
    y_pred's dtype), batchfit in float32; the two differ by bfloat16 rounding of |y - y_pred|, < u relative."""
    keras = pytest.importorskip("keras")
    x, y = regression()
    for lib in (keras, bf):
        lib.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        theirs, mine = mlp(keras), mlp(bf)
        mine.set_weights(theirs.get_weights())
        outputs = [np.asarray(m.predict(x, verbose=0), np.float32) for m in (theirs, mine)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=U / 2)      # at most one bfloat16 rounding apart
        for model in (theirs, mine):
            model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        fits = [m.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history for m in (theirs, mine)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(fits[1]["loss"], fits[0]["loss"], rtol=1e-6)
    np.testing.assert_allclose(fits[1]["mae"], fits[0]["mae"], rtol=U)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- dynamic loss scaling -------------------------------------------------------------------------

def scaled_sgd(initial_scale=4.0, growth=2):
    return bf.optimizers.LossScaleOptimizer(bf.optimizers.SGD(0.1), initial_scale=initial_scale,
                                            dynamic_growth_steps=growth)


# batch 2 overflows: w x = 2 * 3e38 is inf in float32, so its loss and gradients are not finite
X = np.array([[1.0], [2.0], [3e38], [0.5], [1.5]], np.float32)
Y = np.array([[1.0], [1.0], [1.0], [2.0], [0.0]], np.float32)


def test_an_overflow_skips_exactly_that_step_and_the_scale_halves_then_recovers():
    model = linear_model([2.0], 0.5)
    model.compile(optimizer=scaled_sgd(), loss="mse")
    scales, losses = [], []
    for i in range(5):
        before = model.get_weights()
        losses.append(float(model.train_on_batch(X[i:i + 1], Y[i:i + 1])))
        state = opt_state(model)
        scales.append((float(state.dynamic_scale), int(state.step_counter)))
        if i == 2:                                               # skipped: not one bit changes
            for a, b in zip(model.get_weights(), before, strict=True):
                np.testing.assert_array_equal(a, b)
    # growth every 2 finite steps: 4 -> 4 (1 good) -> 8 (2 good) -> 4 (overflow) -> 4 (1) -> 8 (2)
    assert scales == [(4.0, 1), (8.0, 0), (4.0, 0), (4.0, 1), (8.0, 0)]
    assert model.optimizer.iterations == 4                      # as Keras's: the skipped step is not counted
    assert np.isinf(losses[2]) or np.isnan(losses[2])
    # the other steps are plain SGD (the scales are powers of 2: scaling and unscaling are exact)
    kept = [0, 1, 3, 4]
    history, w, b = reference_sgd(X[kept], Y[kept], [2.0], 0.5, lr=0.1, batch_size=1, epochs=1)
    np.testing.assert_allclose([losses[i] for i in kept], history[0], rtol=1e-6)
    np.testing.assert_allclose(model.get_weights()[0].ravel(), w, rtol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], [b], rtol=1e-6)


def test_fit_scales_the_loss_inside_the_fused_loop_as_train_on_batch_does():
    models = [linear_model([2.0], 0.5) for _ in range(2)]
    for model in models:
        model.compile(optimizer=scaled_sgd(), loss="mse", steps_per_execution=5)
    history = models[0].fit(X, Y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    looped = [float(models[1].train_on_batch(X[i:i + 1], Y[i:i + 1])) for i in range(5)]
    np.testing.assert_array_equal(history.batch_history["loss"][0], looped)
    fused, single = opt_state(models[0]), opt_state(models[1])
    assert isinstance(fused, LossScaleState)
    assert (float(fused.dynamic_scale), int(fused.step_counter)) == (8.0, 0) == (float(single.dynamic_scale),
                                                                                 int(single.step_counter))
    assert models[0].optimizer.iterations == models[1].optimizer.iterations == 4
    assert models[0].optimizer.learning_rate == pytest.approx(0.1)        # the inner optimizer's, read and set
    models[0].optimizer.learning_rate = 0.05
    assert models[0].optimizer.learning_rate == pytest.approx(0.05)
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_with_gradient_accumulation_a_group_with_an_overflow_is_skipped_whole():
    model = linear_model([2.0], 0.5)
    model.compile(optimizer=scaled_sgd(), loss="mse")
    history = model.fit(X, Y, batch_size=1, epochs=1, shuffle=False, accumulate_steps=2, verbose=0)
    # groups (0, 1), (2, 3), (4): the second holds the overflow, so only the first and the last update
    losses, w, b = reference_sgd(X[[0, 1, 4]], Y[[0, 1, 4]], [2.0], 0.5, lr=0.1, batch_size=1, epochs=1,
                                 accumulate=2)
    np.testing.assert_allclose(model.get_weights()[0].ravel(), w, rtol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], [b], rtol=1e-6)
    np.testing.assert_allclose(np.array(history.batch_history["loss"][0])[[0, 1]], losses[0][:2], rtol=1e-6)
    state = opt_state(model)
    assert model.optimizer.iterations == 2 and (float(state.dynamic_scale), int(state.step_counter)) == (2.0, 1)


def test_mixed_float16_skips_a_batch_that_overflows_float16():
    mp.set_global_policy("mixed_float16")
    model = linear_model([1.0])
    model.compile(optimizer=scaled_sgd(initial_scale=1.0, growth=2000), loss="mse")
    model.train_on_batch(np.ones((2, 1), np.float32), np.zeros((2, 1), np.float32))
    before, iterations = model.get_weights(), model.optimizer.iterations
    model.train_on_batch(np.full((2, 1), 7e4, np.float32), np.zeros((2, 1), np.float32))   # > 65504: inf in float16
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(opt_state(model).dynamic_scale) == 0.5 and model.optimizer.iterations == iterations == 1


def test_the_scale_is_training_state_a_position_carries():
    x, y = regression(32)
    model = mlp(bf, seed=0)
    model.compile(optimizer=bf.optimizers.LossScaleOptimizer("adam", initial_scale=2.0**20, dynamic_growth_steps=1),
                  loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    position = model.get_position()
    twin = mlp(bf, seed=0)
    twin.compile(optimizer=bf.optimizers.LossScaleOptimizer("adam", initial_scale=2.0**20, dynamic_growth_steps=1),
                 loss="mse")
    twin.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)      # builds it; its state is then replaced
    twin.set_position(position)
    assert float(opt_state(twin).dynamic_scale) == float(position.train.opt_state.dynamic_scale) == 2.0**24
    for m in (model, twin):
        m.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    assert float(opt_state(model).dynamic_scale) == float(opt_state(twin).dynamic_scale) == 2.0**28
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_keep_the_policies_and_the_scale(tmp_path):
    mp.set_global_policy("mixed_bfloat16")
    model = bf.Sequential([bf.Input((3,)), bf.layers.Dense(2)], seed=0)
    model.compile(optimizer=bf.optimizers.LossScaleOptimizer("adam", initial_scale=8.0, dynamic_growth_steps=1),
                  loss="mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=2, verbose=0)   # 8 -> 16 -> 32
    model.save(tmp_path / "model.keras")
    mp.set_global_policy("float32")                             # the file, not the global policy, decides
    loaded = bf.load_model(tmp_path / "model.keras")
    assert loaded.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert float(opt_state(loaded).dynamic_scale) == 32.0 and loaded.optimizer.iterations == 2


def test_loss_scale_optimizer_arguments_and_config():
    optimizer = bf.optimizers.LossScaleOptimizer(bf.optimizers.Adam(1e-2))
    assert (optimizer.initial_scale, optimizer.dynamic_growth_steps) == (2.0**15, 2000)     # Keras's defaults
    assert optimizer.learning_rate == 1e-2 and mp.LossScaleOptimizer is bf.optimizers.LossScaleOptimizer
    clone = bf.optimizers.LossScaleOptimizer.from_config(json.loads(json.dumps(optimizer.get_config())))
    assert clone.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match=r"`initial_scale` must be a finite float > 0; got 0"):
        bf.optimizers.LossScaleOptimizer("sgd", initial_scale=0)
    with pytest.raises(ValueError, match=r"`dynamic_growth_steps` must be an int >= 1; got 0.5"):
        bf.optimizers.LossScaleOptimizer("sgd", dynamic_growth_steps=0.5)
    with pytest.raises(TypeError, match="unexpected arguments \\['clipnorm'\\]"):
        bf.optimizers.LossScaleOptimizer("sgd", clipnorm=1.0)
    with pytest.raises(TypeError, match="`optimizer` must be a name"):
        bf.optimizers.LossScaleOptimizer(3)


def test_only_mixed_float16_wraps_the_optimizer_in_loss_scaling():
    assert mp.loss_scaled("sgd") == "sgd"
    mp.set_global_policy("mixed_bfloat16")
    assert mp.loss_scaled("sgd") == "sgd"                      # bfloat16 has float32's range: no scaling
    mp.set_global_policy("mixed_float16")
    wrapped = mp.loss_scaled("sgd")
    assert isinstance(wrapped, mp.LossScaleOptimizer) and wrapped.initial_scale == 2.0**15
    transformation = wrapped.to_optax()
    assert mp.loss_scaled(wrapped) is wrapped and mp.loss_scaled(transformation) is transformation   # not twice


def test_compile_under_mixed_float16_scales_the_loss():
    mp.set_global_policy("mixed_float16")
    model = linear_model([1.0])
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))    # gradient 0: finite
    state = opt_state(model)
    assert isinstance(state, LossScaleState) and (float(state.dynamic_scale), int(state.step_counter)) == (2.0**15, 1)
    model.compile(optimizer="sgd", loss="mse", auto_scale_loss=False)                     # Keras's opt-out
    model.train_on_batch(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))
    assert not isinstance(opt_state(model), LossScaleState)
    mp.set_global_policy("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.train_on_batch(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))
    assert not isinstance(opt_state(model), LossScaleState)
