"""batchfit.optimizers against a float64 NumPy transcription of Keras 3's update code.

The reference below follows keras/src/optimizers/{base_optimizer,sgd,adam,rmsprop,
adagrad}.py line by line: clip the gradients, decay the variables with
lr = schedule(iterations), run `update_step` per variable, then iterations += 1.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pytest import approx

from batchfit import optimizers
from batchfit.optimizers import (SGD, Adagrad, Adam, AdamState, AdamW, RMSprop, get,
                                  get_learning_rate, set_learning_rate)

NAMES = ("bias", "kernel")  # jax flattens a dict in sorted key order
_rng = np.random.default_rng(0)
PARAMS0 = [_rng.normal(size=(2,)), _rng.normal(size=(3, 2))]
# Scales chosen so that every clip setting below clips some steps and not others.
GRADS = [[_rng.normal(size=p.shape) * scale for p in PARAMS0]
         for scale in (1.0, 3.0, 0.2, 5.0, 0.5)]


# ----------------------------------------------------------------- the float64 Keras reference
def ref_clip(grads, clipnorm=None, clipvalue=None, global_clipnorm=None):
    if clipnorm:
        return [g * clipnorm / max(np.sqrt(np.sum(g**2)), clipnorm) for g in grads]
    if global_clipnorm:
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        return [g * global_clipnorm * min(1 / norm, 1 / global_clipnorm) for g in grads]
    if clipvalue:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return grads


def ref_sgd(momentum=0.0, nesterov=False):
    def update_step(g, var, slot, lr, iterations):
        if momentum == 0:
            return var - g * lr
        slot["m"] = slot.get("m", 0.0) * momentum - g * lr
        return var + (slot["m"] * momentum - g * lr if nesterov else slot["m"])
    return update_step


def ref_adam(beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    def update_step(g, var, slot, lr, iterations):
        t = iterations + 1
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        slot["m"] = slot.get("m", 0.0) + (g - slot.get("m", 0.0)) * (1 - beta_1)
        slot["v"] = slot.get("v", 0.0) + (g**2 - slot.get("v", 0.0)) * (1 - beta_2)
        v = slot["v"]
        if amsgrad:
            v = slot["v_hat"] = np.maximum(slot.get("v_hat", 0.0), slot["v"])
        return var - slot["m"] * alpha / (np.sqrt(v) + epsilon)
    return update_step


def ref_rmsprop(rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    def update_step(g, var, slot, lr, iterations):
        slot["v"] = rho * slot.get("v", 0.0) + (1 - rho) * g**2
        if centered:
            slot["a"] = rho * slot.get("a", 0.0) + (1 - rho) * g
            denominator = slot["v"] - slot["a"] ** 2 + epsilon
        else:
            denominator = slot["v"] + epsilon
        increment = lr * g / np.sqrt(denominator)
        if momentum > 0:
            slot["b"] = momentum * slot.get("b", 0.0) + increment
            return var - slot["b"]
        return var - increment
    return update_step


def ref_adagrad(initial_accumulator_value=0.1, epsilon=1e-7):
    def update_step(g, var, slot, lr, iterations):
        slot["acc"] = slot.get("acc", initial_accumulator_value) + g**2
        return var - lr * g / np.sqrt(slot["acc"] + epsilon)
    return update_step


def keras_reference(update_step, learning_rate, weight_decay=None, **clip):
    """Keras's `apply`: params after each step, float64."""
    params, slots, history = [p.copy() for p in PARAMS0], [{} for _ in PARAMS0], []
    for iterations, grads in enumerate(GRADS):
        lr = learning_rate(iterations) if callable(learning_rate) else learning_rate
        grads = ref_clip(grads, **clip)
        if weight_decay is not None:
            params = [var - var * weight_decay * lr for var in params]
        params = [update_step(g, v, s, lr, iterations) for g, v, s in zip(grads, params, slots)]
        history.append(params)
    return history


def as_tree(arrays):
    return {name: jnp.asarray(a, jnp.float32) for name, a in zip(NAMES, arrays)}


def run_batchfit(optimizer):
    """Params after each step, float32 (eager: five steps cost less than a compile)."""
    tx = optimizer.to_optax()

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = as_tree(PARAMS0)
    state, history = tx.init(params), []
    for grads in GRADS:
        params, state = step(params, state, as_tree(grads))
        history.append([np.asarray(params[n]) for n in NAMES])
    return history


def exponential(step):  # optax.exponential_decay(0.1, 1, 0.5) written out
    return 0.1 * 0.5**step


def linear(step):  # optax.linear_schedule(0.05, 0.005, 4) written out
    return 0.05 + (0.005 - 0.05) * min(step, 4) / 4


EXP = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
LIN = optax.linear_schedule(0.05, 0.005, transition_steps=4)

# id -> (batchfit optimizer, reference update_step, reference learning rate, extra kwargs)
CASES = {
    "sgd": (SGD(0.1), ref_sgd(), 0.1, {}),
    "sgd_momentum": (SGD(0.1, momentum=0.9), ref_sgd(0.9), 0.1, {}),
    "sgd_nesterov": (SGD(0.1, momentum=0.9, nesterov=True), ref_sgd(0.9, True), 0.1, {}),
    "sgd_weight_decay": (SGD(0.1, weight_decay=0.5), ref_sgd(), 0.1, {"weight_decay": 0.5}),
    "sgd_clipnorm": (SGD(0.1, clipnorm=1.0), ref_sgd(), 0.1, {"clipnorm": 1.0}),
    "sgd_schedule": (SGD(EXP, momentum=0.5), ref_sgd(0.5), exponential, {}),
    "adam": (Adam(), ref_adam(), 1e-3, {}),
    "adam_amsgrad": (Adam(0.01, amsgrad=True), ref_adam(amsgrad=True), 0.01, {}),
    "adam_epsilon": (Adam(0.01, beta_1=0.5, beta_2=0.9, epsilon=0.1),
                     ref_adam(0.5, 0.9, 0.1), 0.01, {}),
    "adam_weight_decay": (Adam(0.01, weight_decay=0.3), ref_adam(), 0.01, {"weight_decay": 0.3}),
    "adam_global_clipnorm": (Adam(0.01, global_clipnorm=1.5), ref_adam(), 0.01,
                             {"global_clipnorm": 1.5}),
    "adam_schedule": (Adam(LIN), ref_adam(), linear, {}),
    "adamw": (AdamW(0.01), ref_adam(), 0.01, {"weight_decay": 0.004}),
    "adamw_amsgrad": (AdamW(0.01, weight_decay=0.2, amsgrad=True), ref_adam(amsgrad=True), 0.01,
                      {"weight_decay": 0.2}),
    "adamw_schedule": (AdamW(LIN, weight_decay=0.5, clipvalue=0.8), ref_adam(), linear,
                       {"weight_decay": 0.5, "clipvalue": 0.8}),
    "rmsprop": (RMSprop(), ref_rmsprop(), 1e-3, {}),
    "rmsprop_epsilon": (RMSprop(0.01, rho=0.5, epsilon=0.1), ref_rmsprop(0.5, epsilon=0.1),
                        0.01, {}),
    "rmsprop_momentum": (RMSprop(0.01, momentum=0.5), ref_rmsprop(momentum=0.5), 0.01, {}),
    "rmsprop_centered": (RMSprop(0.01, centered=True, epsilon=0.01),
                         ref_rmsprop(centered=True, epsilon=0.01), 0.01, {}),
    "rmsprop_centered_momentum": (RMSprop(0.01, momentum=0.7, centered=True),
                                  ref_rmsprop(momentum=0.7, centered=True), 0.01, {}),
    "rmsprop_weight_decay_clipvalue": (RMSprop(0.01, weight_decay=0.2, clipvalue=0.5),
                                       ref_rmsprop(), 0.01,
                                       {"weight_decay": 0.2, "clipvalue": 0.5}),
    "rmsprop_schedule": (RMSprop(EXP), ref_rmsprop(), exponential, {}),
    "adagrad": (Adagrad(0.1), ref_adagrad(), 0.1, {}),
    "adagrad_options": (Adagrad(0.1, initial_accumulator_value=0.5, epsilon=0.1),
                        ref_adagrad(0.5, 0.1), 0.1, {}),
    "adagrad_weight_decay_global_clipnorm": (Adagrad(0.1, weight_decay=0.3, global_clipnorm=2.0),
                                             ref_adagrad(), 0.1,
                                             {"weight_decay": 0.3, "global_clipnorm": 2.0}),
    "adagrad_clipnorm_schedule": (Adagrad(EXP, clipnorm=0.7), ref_adagrad(), exponential,
                                  {"clipnorm": 0.7}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras_reference_over_five_steps(case):
    optimizer, update_step, learning_rate, kwargs = CASES[case]
    expected = keras_reference(update_step, learning_rate, **kwargs)
    got = run_batchfit(optimizer)
    for step, (want, have) in enumerate(zip(expected, got)):
        for name, w, h, p0 in zip(NAMES, want, have, PARAMS0):
            # Compare the total change since the start: it is what the optimizer produced.
            np.testing.assert_allclose(h - p0, w - p0, rtol=2e-4, atol=2e-6,
                                       err_msg=f"{case}, step {step}, {name}")


def test_clip_settings_are_exercised():
    """Each clip setting in CASES changes some steps and leaves others alone."""
    for setting in ({"clipnorm": 1.0}, {"clipnorm": 0.7}, {"clipvalue": 0.5},
                    {"clipvalue": 0.8}, {"global_clipnorm": 1.5}, {"global_clipnorm": 2.0}):
        clipped = [any(not np.allclose(a, b, rtol=1e-12, atol=0)
                       for a, b in zip(ref_clip(g, **setting), g)) for g in GRADS]
        assert any(clipped) and not all(clipped), setting


# ------------------------------------------------------------------ hand-worked values
def one_update(optimizer, grad, param=0.0):
    tx = get(optimizer)
    params = jnp.array([param])
    return tx.update(jnp.array([grad]), tx.init(params), params)[0][0]


def test_adam_step_one_tiny_gradient_differs_from_optax_adam():
    # g = 1e-8, t = 1: m = 0.1 * 1e-8 = 1e-9, v = 0.001 * 1e-16 = 1e-19, sqrt(v) = 3.1623e-10
    # Keras: alpha = 1e-3 * sqrt(1 - 0.999) / (1 - 0.9) = 3.16228e-4
    #        update = -3.16228e-4 * 1e-9 / (3.1623e-10 + 1e-7) = -3.15231e-6
    # optax.adam(1e-3) (eps=1e-8 after bias correction): m_hat = 1e-8, v_hat = 1e-16,
    #        update = -1e-3 * 1e-8 / (1e-8 + 1e-8) = -5e-4, 159x larger;
    # with eps=1e-7 too: -1e-3 * 1e-8 / (1e-8 + 1e-7) = -9.0909e-5, still 29x larger.
    assert one_update("adam", 1e-8) == approx(-3.15231e-6, rel=1e-4)
    assert one_update(optax.adam(1e-3), 1e-8) == approx(-5e-4, rel=1e-4)
    assert one_update(optax.adam(1e-3, eps=1e-7), 1e-8) == approx(-9.0909e-5, rel=1e-4)


def test_rmsprop_epsilon_inside_the_square_root():
    # g = 1e-4: v = 0.1 * 1e-8 = 1e-9; Keras: 1e-3 * 1e-4 / sqrt(1e-9 + 1e-7) = -3.14658e-4
    # (epsilon outside, as optax.rmsprop: 1e-7 / (3.16228e-5 + 1e-7) = 3.15231e-3, 10x more)
    assert one_update("rmsprop", 1e-4) == approx(-3.14658e-4, rel=1e-4)


def test_adagrad_one_step():
    # acc = 0.1 + 1^2 = 1.1; update = -1e-3 * 1 / sqrt(1.1 + 1e-7) = -9.53462e-4
    assert one_update("adagrad", 1.0) == approx(-9.53462e-4, rel=1e-5)


def test_sgd_nesterov_two_steps():
    # lr 0.1, momentum 0.9, g = 1: m1 = -0.1, update1 = 0.9 * -0.1 - 0.1 = -0.19
    #                              m2 = 0.9 * -0.1 - 0.1 = -0.19,
    #                              update2 = 0.9 * -0.19 - 0.1 = -0.271
    tx = SGD(0.1, momentum=0.9, nesterov=True).to_optax()
    state = tx.init(jnp.zeros(()))
    u1, state = tx.update(jnp.ones(()), state)
    u2, state = tx.update(jnp.ones(()), state)
    assert (float(u1), float(u2)) == (approx(-0.19), approx(-0.271))
    assert float(sub_states(state, optax.TraceState)[0].trace) == approx(-0.19)


def test_adamw_weight_decay_uses_that_steps_learning_rate():
    # g = 0 makes the Adam part 0; decay = var * wd * lr: 2 * 0.5 * 0.1 = 0.1, then 2 * 0.5 * 0.05
    tx = AdamW(learning_rate=lambda step: 0.1 / (1 + step), weight_decay=0.5).to_optax()
    params = jnp.array(2.0)
    u1, state = tx.update(jnp.array(0.0), tx.init(params), params)
    u2, state = tx.update(jnp.array(0.0), state, params)
    assert (float(u1), float(u2)) == (approx(-0.1), approx(-0.05))


def test_schedule_first_update_uses_step_zero():
    # lr(step) = 0.1 * (step + 1), g = 1: updates -0.1, -0.2, -0.3 (Keras iterations are 0-based)
    tx = SGD(learning_rate=lambda step: 0.1 * (step + 1)).to_optax()
    state, got = tx.init(jnp.zeros(())), []
    for _ in range(3):
        update, state = tx.update(jnp.ones(()), state)
        got.append(float(update))
    assert got == approx([-0.1, -0.2, -0.3])
    assert int(state.count) == 3


def test_clipnorm_is_per_leaf_and_global_clipnorm_is_joint():
    # grads {a: [3.], b: [4.]}: per leaf each clips to norm 1 -> [1], [1];
    # globally the norm is 5 -> scaled by 1/5 -> [0.6], [0.8]. lr = 1, so update = -grad.
    grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    for optimizer, a, b in ((SGD(1.0, clipnorm=1.0), -1.0, -1.0),
                            (SGD(1.0, global_clipnorm=1.0), -0.6, -0.8),
                            (SGD(1.0, clipvalue=3.5), -3.0, -3.5)):
        tx = optimizer.to_optax()
        updates, _ = tx.update(grads, tx.init(grads))
        assert (float(updates["a"][0]), float(updates["b"][0])) == (approx(a), approx(b))


def test_zero_gradient_stays_finite_when_clipping():
    for optimizer in (SGD(clipnorm=1.0), SGD(global_clipnorm=1.0)):
        tx = optimizer.to_optax()
        updates, _ = tx.update(jnp.zeros(3), tx.init(jnp.zeros(3)))
        np.testing.assert_array_equal(updates, np.zeros(3))


# ------------------------------------------------------------------ state as a scan carry
@pytest.mark.parametrize("case", list(CASES))
def test_state_keeps_shapes_and_dtypes(case):
    tx = CASES[case][0].to_optax()
    params = as_tree(PARAMS0)
    state = jax.eval_shape(tx.init, params)
    after = jax.eval_shape(lambda s: tx.update(params, s, params)[1], state)
    assert jax.tree_util.tree_structure(after) == jax.tree_util.tree_structure(state)
    assert jax.tree_util.tree_leaves(after) == jax.tree_util.tree_leaves(state)
    assert (state.count.shape, state.count.dtype) == ((), jnp.int32)


def test_scan_of_steps_equals_step_by_step():
    tx = RMSprop(0.01, momentum=0.5, centered=True, weight_decay=0.1).to_optax()

    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    params = as_tree(PARAMS0)
    stacked = as_tree([np.stack([g[i] for g in GRADS]) for i in range(len(NAMES))])
    scan = jax.jit(lambda carry: jax.lax.scan(step, carry, stacked))
    (scanned, state), _ = scan((params, tx.init(params)))
    looped = run_batchfit(RMSprop(0.01, momentum=0.5, centered=True, weight_decay=0.1))[-1]
    for name, value in zip(NAMES, looped):
        np.testing.assert_allclose(scanned[name], value, rtol=1e-6)
    assert int(state.count) == len(GRADS)


def sub_states(state, cls):
    """The parts of an optimizer state that are `cls` instances (optax.TraceState, ...)."""
    is_cls = lambda node: isinstance(node, cls)  # noqa: E731
    return [s for s in jax.tree_util.tree_leaves(state, is_leaf=is_cls) if is_cls(s)]


def test_absent_options_keep_no_slots():
    params = as_tree(PARAMS0)
    assert sub_states(SGD().to_optax().init(params), optax.TraceState) == []
    assert len(sub_states(SGD(momentum=0.5).to_optax().init(params), optax.TraceState)) == 1
    assert sub_states(Adam().to_optax().init(params), AdamState)[0].velocity_hat is None
    state = RMSprop().to_optax().init(params)
    assert sub_states(state, optax.TraceState) == []
    assert sub_states(state, optax.ScaleByRStdDevState) == []
    (accumulator,) = sub_states(Adagrad().to_optax().init(params), optax.ScaleByRssState)
    np.testing.assert_array_equal(accumulator.sum_of_squares["bias"], np.float32([0.1, 0.1]))


# ------------------------------------------------------------------ get() and errors
@pytest.mark.parametrize("name, cls", [("sgd", SGD), ("Adam", Adam), ("ADAMW", AdamW),
                                       ("rmsprop", RMSprop), ("adagrad", Adagrad)])
def test_get_builds_keras_defaults_from_names(name, cls):
    tx = get(name)
    assert isinstance(tx, optax.GradientTransformation)
    by_name = tx.update(jnp.array([0.5]), tx.init(jnp.array([1.0])), jnp.array([1.0]))[0]
    direct = cls().to_optax()
    by_class = direct.update(jnp.array([0.5]), direct.init(jnp.array([1.0])), jnp.array([1.0]))[0]
    assert float(by_name[0]) == float(by_class[0])


def test_keras_defaults():
    assert vars(SGD()) == dict(learning_rate=0.01, weight_decay=None, clipnorm=None,
                                    clipvalue=None, global_clipnorm=None, momentum=0.0,
                                    nesterov=False)
    adamw = AdamW()
    assert (adamw.learning_rate, adamw.weight_decay, adamw.beta_1, adamw.beta_2,
            adamw.epsilon, adamw.amsgrad) == (0.001, 0.004, 0.9, 0.999, 1e-7, False)
    rms = RMSprop()
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == \
        (0.001, 0.9, 0.0, 1e-7, False)
    ada = Adagrad()
    assert (ada.learning_rate, ada.initial_accumulator_value, ada.epsilon) == (0.001, 0.1, 1e-7)


def test_get_passes_objects_and_optax_through():
    # lr 0.01 is 10x the default, so 10x the hand-worked Adam step below
    assert one_update(Adam(learning_rate=0.01), 1e-8) == approx(10 * -3.15231e-6, rel=1e-4)
    plain = optax.sgd(0.1)
    assert get(plain) is plain
    chained = optax.chain(optax.clip(1.0), optax.adam(1e-3))
    assert isinstance(chained, optax.GradientTransformationExtraArgs)
    assert get(chained) is chained


def test_get_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamm'\. Did you mean 'adam'\?"
                                         r".*adagrad, adam, adamw, rmsprop, sgd"):
        get("adamm")


@pytest.mark.parametrize("given, fragment", [(3, "got int"), (None, "got NoneType"),
                                             (Adam, "got the class Adam, not an instance")])
def test_get_rejects_other_types_and_says_how_to_fix(given, fragment):
    with pytest.raises(TypeError, match=fragment) as info:
        get(given)
    assert "optimizer=" in str(info.value)


def test_constructor_errors():
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue`"):
        Adam(clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(ValueError, match="AdamW needs a float `weight_decay`"):
        AdamW(weight_decay=None)
    with pytest.raises(TypeError, match="`learning_rate` must be a float or a schedule"):
        SGD(learning_rate="0.1")
    with pytest.raises(ValueError, match=r"`momentum` must be a float in \[0, 1\]"):
        SGD(momentum=1.5)
    with pytest.raises(ValueError, match="`initial_accumulator_value` must be >= 0"):
        Adagrad(initial_accumulator_value=-1.0)


def test_weight_decay_without_params_explains():
    tx = AdamW().to_optax()
    with pytest.raises(ValueError, match=r"needs the parameters; got params=None"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_public_names_and_doctests():
    assert sorted(optimizers.__all__) == sorted([
        "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Optimizer", "AdamState", "get",
        "get_learning_rate", "set_learning_rate", "schedule_step", "schedules"])
    result = doctest.testmod(optimizers, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


# ------------------------------------------------------------------ optax pieces vs Keras details
def test_sgd_momentum_with_a_schedule_follows_keras_not_optax_sgd():
    # lr(step) = 0.1, 0.2; momentum 0.5; g = 1.
    # Keras: m1 = -0.1; m2 = 0.5 * -0.1 - 0.2 = -0.25; nesterov update2 = 0.5 * -0.25 - 0.2 = -0.325
    # optax.sgd traces g first: t2 = 1 + 0.5 * 1 = 1.5, update2 = -0.2 * 1.5 = -0.3
    schedule = lambda step: 0.1 * (step + 1)  # noqa: E731
    for optimizer, want in ((SGD(schedule, momentum=0.5), -0.25),
                            (SGD(schedule, momentum=0.5, nesterov=True), -0.325),
                            (optax.sgd(schedule, momentum=0.5), -0.3)):
        tx = get(optimizer)
        state = tx.init(jnp.zeros(()))
        _, state = tx.update(jnp.ones(()), state)
        assert float(tx.update(jnp.ones(()), state)[0]) == approx(want), optimizer


def test_global_clipnorm_with_a_non_finite_norm_gives_nan_everywhere():
    # Keras: scale = c * min(1/inf, 1/c) + (inf - inf) = NaN for every leaf;
    # optax.clip_by_global_norm would return 1 / inf * c = 0 for the finite leaf "b".
    grads = {"a": jnp.array([jnp.inf]), "b": jnp.array([1.0])}
    tx = SGD(1.0, global_clipnorm=1.0).to_optax()
    updates, _ = tx.update(grads, tx.init(grads))
    assert np.isnan(updates["a"][0]) and np.isnan(updates["b"][0])


@pytest.mark.parametrize("case", [c for c in CASES if not callable(CASES[c][0].learning_rate)])
def test_state_keeps_bfloat16_dtypes(case):
    # Keras casts lr to each variable's dtype, so bfloat16 slots stay bfloat16.
    tx = CASES[case][0].to_optax()
    params = {n: jnp.asarray(p, jnp.bfloat16) for n, p in zip(NAMES, PARAMS0)}
    state = jax.eval_shape(tx.init, params)
    updates, after = jax.eval_shape(lambda s: tx.update(params, s, params), state)
    assert jax.tree_util.tree_leaves(after) == jax.tree_util.tree_leaves(state)
    assert {u.dtype for u in jax.tree_util.tree_leaves(updates)} == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------ the learning rate in the state
def test_learning_rate_is_a_float32_array_in_the_state():
    state = Adam(learning_rate=0.01).to_optax().init(as_tree(PARAMS0))
    lr = get_learning_rate(state)
    assert (lr.shape, lr.dtype) == ((), jnp.float32) and float(lr) == approx(0.01)
    assert any(leaf is lr for leaf in jax.tree_util.tree_leaves(state))


def test_set_learning_rate_changes_the_next_update_without_retracing():
    # lr 0.1, momentum 0.9, g = 1: m1 = -0.1; then lr 0.5: m2 = 0.9 * -0.1 - 0.5 * 1 = -0.59
    tx = SGD(0.1, momentum=0.9).to_optax()
    traces = []

    @jax.jit
    def step(state, grads):
        traces.append(1)
        return tx.update(grads, state)

    u1, state = step(tx.init(jnp.zeros(())), jnp.ones(()))
    u2, state = step(set_learning_rate(state, 0.5), jnp.ones(()))
    assert (float(u1), float(u2)) == (approx(-0.1), approx(-0.59))
    assert float(get_learning_rate(state)) == 0.5 and len(traces) == 1


@pytest.mark.parametrize("case", [c for c in CASES if not callable(CASES[c][0].learning_rate)])
def test_first_update_is_linear_in_the_learning_rate_set_in_the_state(case):
    # Every Keras update (weight decay included) is lr times a direction, and the first
    # direction does not depend on lr: doubling lr in the state doubles the first update.
    tx = CASES[case][0].to_optax()
    params, grads = as_tree(PARAMS0), as_tree(GRADS[0])
    state = tx.init(params)
    doubled = set_learning_rate(state, 2 * get_learning_rate(state))
    for one, two in zip(jax.tree_util.tree_leaves(tx.update(grads, state, params)[0]),
                        jax.tree_util.tree_leaves(tx.update(grads, doubled, params)[0])):
        np.testing.assert_allclose(two, 2 * one, rtol=1e-6)


def test_set_learning_rate_inside_jit_with_a_traced_value():
    # lr halves before each update: 1.0 * 0.5 = 0.5, then 0.25; g = 1, so updates -0.5, -0.25
    tx = SGD(1.0).to_optax()

    def step(state, _):
        state = set_learning_rate(state, get_learning_rate(state) * 0.5)
        update, state = tx.update(jnp.ones(()), state)
        return state, update

    _, updates = jax.jit(lambda s: jax.lax.scan(step, s, None, length=2))(tx.init(jnp.zeros(())))
    np.testing.assert_allclose(updates, [-0.5, -0.25])


def test_schedule_learning_rate_is_read_but_not_set():
    # lr(step) = 0.1 / (1 + step): the state holds lr(0) = 0.1 before and after update 0,
    # and lr(1) = 0.05 after update 1.
    tx = SGD(lambda step: 0.1 / (1 + step)).to_optax()
    state = tx.init(jnp.zeros(()))
    got = [float(get_learning_rate(state))]
    for _ in range(2):
        state = tx.update(jnp.ones(()), state)[1]
        got.append(float(get_learning_rate(state)))
    assert got == approx([0.1, 0.1, 0.05])
    with pytest.raises(TypeError, match="`learning_rate` cannot be set: it follows a schedule"):
        set_learning_rate(state, 0.01)


def test_learning_rate_of_optax_states():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    state = set_learning_rate(tx.init(jnp.zeros(2)), 0.5)
    assert float(get_learning_rate(state)) == 0.5
    with pytest.raises(ValueError, match=r"`opt_state` must hold exactly one learning rate; "
                                         r"found 0.*optax.inject_hyperparams"):
        get_learning_rate(optax.adam(1e-3).init(jnp.zeros(2)))


@pytest.mark.parametrize("given, error", [(float("nan"), ValueError), (-0.1, ValueError),
                                          (True, TypeError)])
def test_set_learning_rate_refuses_bad_values(given, error):
    state = SGD().to_optax().init(jnp.zeros(2))
    with pytest.raises(error, match=r"`learning_rate` must be"):
        set_learning_rate(state, given)
    with pytest.raises(ValueError, match=r"`learning_rate` must be a scalar; got shape \(2,\)"):
        set_learning_rate(state, jnp.ones(2))


# ------------------------------------------------------------------ hyperparameter refusals
NAN, INF = float("nan"), float("inf")
REFUSALS = [  # (optimizer, argument, value, error)
    (SGD, "learning_rate", NAN, ValueError), (SGD, "learning_rate", INF, ValueError),
    (Adam, "learning_rate", -1e-3, ValueError), (RMSprop, "learning_rate", True, TypeError),
    (Adagrad, "learning_rate", "0.1", TypeError),
    (Adam, "beta_1", 1.0, ValueError), (Adam, "beta_1", -0.1, ValueError),
    (AdamW, "beta_1", NAN, ValueError), (Adam, "beta_2", 1.0, ValueError),
    (AdamW, "beta_2", 1.5, ValueError), (Adam, "beta_2", False, TypeError),
    (RMSprop, "rho", 1.0, ValueError), (RMSprop, "rho", -0.5, ValueError),
    (RMSprop, "rho", None, TypeError),
    (RMSprop, "momentum", -0.1, ValueError), (RMSprop, "momentum", INF, ValueError),
    (SGD, "momentum", -0.1, ValueError), (SGD, "momentum", NAN, ValueError),
    (SGD, "momentum", True, TypeError),
    (Adam, "epsilon", -1e-7, ValueError), (RMSprop, "epsilon", NAN, ValueError),
    (Adagrad, "epsilon", INF, ValueError), (AdamW, "epsilon", "1e-7", TypeError),
    (AdamW, "weight_decay", -0.004, ValueError), (SGD, "weight_decay", INF, ValueError),
    (Adam, "weight_decay", NAN, ValueError), (RMSprop, "weight_decay", True, TypeError),
    (SGD, "clipnorm", 0.0, ValueError), (Adam, "clipnorm", -1.0, ValueError),
    (Adam, "clipvalue", 0, ValueError), (RMSprop, "clipvalue", INF, ValueError),
    (Adagrad, "global_clipnorm", NAN, ValueError), (SGD, "global_clipnorm", -2.0, ValueError),
    (SGD, "clipnorm", True, TypeError),
    (Adagrad, "initial_accumulator_value", -1.0, ValueError),
    (Adagrad, "initial_accumulator_value", INF, ValueError),
]


@pytest.mark.parametrize("cls, name, value, error", REFUSALS,
                         ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v, _ in REFUSALS])
def test_refuses_bad_hyperparameters_and_says_how_to_fix(cls, name, value, error):
    with pytest.raises(error) as info:
        cls(**{name: value})
    message = str(info.value)
    assert f"`{name}` must be" in message and repr(value) in message, message
    assert f"Pass e.g. {name}=" in message, message


def test_refusal_messages_state_the_expected_range():
    with pytest.raises(ValueError, match=r"`beta_2` must be a float in \[0, 1\); got 1\.0\. "
                                         r"Pass e\.g\. beta_2=0\.999\."):
        Adam(beta_2=1.0)
    with pytest.raises(ValueError, match=r"`clipnorm` must be > 0 and finite; got 0"):
        SGD(clipnorm=0)
    with pytest.raises(TypeError, match=r"`momentum` must be a number; got bool True"):
        RMSprop(momentum=True)


def test_accepts_boundary_values_and_schedules():
    # Keras allows lr 0 (no step), epsilon 0, beta 0, SGD momentum 1, ints for floats.
    for optimizer in (SGD(learning_rate=0), SGD(momentum=1.0), SGD(1, weight_decay=0),
                      Adam(beta_1=0.0, beta_2=0.0, epsilon=0.0), RMSprop(rho=0.0, momentum=2),
                      Adagrad(initial_accumulator_value=0, epsilon=1e-7, clipvalue=1),
                      AdamW(np.float32(1e-3), weight_decay=0.0),
                      Adam(optax.cosine_decay_schedule(1e-3, 100))):
        tx = optimizer.to_optax()
        updates, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
        assert np.all(np.isfinite(updates)), optimizer
    assert float(one_update(SGD(learning_rate=0.0), 3.0)) == 0.0
