"""bf.optimizers.schedules against keras.optimizers.schedules (KERAS_BACKEND=jax), and schedules in training.

Keras evaluates the schedule at `optimizer.iterations`, the number of updates applied so far: update n
(from 0) uses schedule(n), and `optimizer.learning_rate` reads schedule(iterations), the next update's rate.
"""

import doctest
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytest import approx

import batchfit as bf
from batchfit.optimizers import schedules
from batchfit.optimizers.schedules import (CosineDecay, CosineDecayRestarts, ExponentialDecay, InverseTimeDecay,
                                           LearningRateSchedule, PiecewiseConstantDecay, PolynomialDecay)

keras = pytest.importorskip("keras")

# (class name, args, kwargs): every option of every schedule, each changing the values in steps 0..59
CASES = [
    ("ExponentialDecay", (0.1, 7, 0.6), {}),
    ("ExponentialDecay", (0.1, 7, 0.6), {"staircase": True}),
    ("PiecewiseConstantDecay", ([3, 10, 20], [1.0, 0.5, 0.1, 0.01]), {}),
    ("PiecewiseConstantDecay", ([5], [0.3, 0.2]), {}),
    ("PolynomialDecay", (0.1, 10), {}),
    ("PolynomialDecay", (0.1, 10), {"power": 0.5}),
    ("PolynomialDecay", (0.1, 10), {"power": 2.0, "cycle": True, "end_learning_rate": 0.01}),
    ("InverseTimeDecay", (0.1, 5, 0.5), {}),
    ("InverseTimeDecay", (0.1, 5, 0.5), {"staircase": True}),
    ("CosineDecay", (0.1, 20), {}),
    ("CosineDecay", (0.1, 20), {"alpha": 0.1}),
    ("CosineDecay", (0.0, 20), {"warmup_target": 0.1, "warmup_steps": 5, "alpha": 0.2}),
    ("CosineDecay", (0.01, 30), {"warmup_target": 0.1, "warmup_steps": 8}),
    ("CosineDecayRestarts", (0.1, 4), {}),
    ("CosineDecayRestarts", (0.1, 4), {"t_mul": 1.0, "m_mul": 0.5, "alpha": 0.1}),
    ("CosineDecayRestarts", (0.1, 3), {"t_mul": 1.5, "m_mul": 0.8, "alpha": 0.05}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for name, _, kw in CASES]
STEPS = np.arange(60)


def both(name, args, kwargs):
    return getattr(schedules, name)(*args, **kwargs), getattr(keras.optimizers.schedules, name)(*args, **kwargs)


@pytest.mark.parametrize("name, args, kwargs", CASES, ids=IDS)
def test_values_match_keras_eagerly_and_under_jit(name, args, kwargs):
    mine, theirs = both(name, args, kwargs)
    some = [0, 3, 5, 8, 10, 13, 21, 45]                     # boundaries, restarts, ends
    np.testing.assert_allclose([float(mine(s)) for s in some], [float(theirs(s)) for s in some],
                               rtol=1e-6, atol=1e-9)
    # In training both run inside a jitted step, on the int32 update count: all of steps 0..59.
    traced = np.asarray(jax.jit(jax.vmap(mine))(jnp.asarray(STEPS, jnp.int32)))
    want = np.asarray(jax.jit(jax.vmap(theirs))(jnp.asarray(STEPS, jnp.int32)))
    if name == "PolynomialDecay":     # Keras's jitted 1 - p is -1.5e-8 at the end (NaN for power 0.5); ours is 0
        want = np.array([float(theirs(int(s))) for s in STEPS])
    assert traced.dtype == np.float32 and len(set(np.round(want, 7))) >= 2         # the schedule moves
    np.testing.assert_allclose(traced, want, rtol=1e-6, atol=1e-9)


def test_public_names_and_doctests():
    assert sorted(schedules.__all__) == sorted([
        "LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
        "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize"])
    assert bf.optimizers.schedules is schedules and "schedules" in bf.optimizers.__all__
    result = doctest.testmod(schedules)
    assert result.attempted >= 2 and result.failed == 0


def test_hand_worked_values():
    assert float(ExponentialDecay(0.1, 10, 0.5)(15)) == approx(0.1 * 0.5 ** 1.5)
    assert float(ExponentialDecay(0.1, 10, 0.5, staircase=True)(15)) == approx(0.05)
    piecewise = PiecewiseConstantDecay([2, 4], [1.0, 0.5, 0.1])    # a boundary step keeps the earlier value
    assert [float(piecewise(s)) for s in range(6)] == approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.1])
    assert float(InverseTimeDecay(0.1, 5, 0.5)(10)) == approx(0.1 / (1 + 0.5 * 2))
    assert float(PolynomialDecay(0.1, 10, end_learning_rate=0.0)(5)) == approx(0.05)
    assert float(PolynomialDecay(0.1, 10, end_learning_rate=0.0)(50)) == 0.0       # held at the end
    # cycle: step 15 lies in the second period, decay_steps * ceil(15 / 10) = 20: 0.1 * (1 - 15/20)
    assert float(PolynomialDecay(0.1, 10, end_learning_rate=0.0, cycle=True)(15)) == approx(0.025)
    warm = CosineDecay(0.0, 10, warmup_target=0.2, warmup_steps=4)
    # warmup: 0.2 * step / 4; then 0.2 * (1 + cos(pi * (step - 4) / 10)) / 2; held after 4 + 10
    assert [float(warm(s)) for s in (0, 2, 4, 9, 14, 20)] == approx([0.0, 0.1, 0.2, 0.1, 0.0, 0.0], abs=1e-8)
    # SGDR with t_mul=2: periods of 4, 8, ...; step 8 is 4 into the second period of 8: 0.5 * (1 + cos(pi / 2))
    assert float(CosineDecayRestarts(1.0, 4, m_mul=0.5)(8)) == approx(0.5 * 0.5 * (1 + 0.0), abs=1e-7)


@pytest.mark.parametrize("name, args, kwargs", CASES[::3], ids=IDS[::3])
def test_configs_are_kerass_and_round_trip_both_ways(name, args, kwargs):
    mine, theirs = both(name, args, kwargs)
    assert mine.get_config() == theirs.get_config()
    again = type(mine).from_config(mine.get_config())
    from_keras = schedules.deserialize(keras.optimizers.schedules.serialize(theirs))
    assert type(again) is type(from_keras) is type(mine)
    assert float(again(7)) == float(from_keras(7)) == float(mine(7))
    written = schedules.serialize(mine)
    assert written == {**keras.optimizers.schedules.serialize(theirs), "module": "batchfit.optimizers.schedules"}
    back = keras.optimizers.schedules.deserialize({**written, "module": "keras.optimizers.schedules"})
    assert float(back(7)) == approx(float(mine(7)), rel=1e-6)


class Halving(LearningRateSchedule):
    """A Keras-style subclass: halve every `period` updates."""

    def __init__(self, start, period):
        self.start, self.period = start, period

    def __call__(self, step):
        return self.start * 0.5 ** jnp.floor(jnp.asarray(step, jnp.float32) / self.period)

    def get_config(self):
        return {"start": self.start, "period": self.period}


def test_a_subclass_is_a_learning_rate_and_deserializes_by_name():
    written = schedules.serialize(Halving(0.8, 2))
    assert written["class_name"] == "Halving" and written["config"] == {"start": 0.8, "period": 2}
    assert float(schedules.deserialize(written)(5)) == approx(0.2)          # registered on definition
    tx = bf.optimizers.SGD(Halving(0.8, 2)).to_optax()
    state, updates = tx.init(jnp.zeros(())), []
    for _ in range(4):
        update, state = tx.update(jnp.ones(()), state)
        updates.append(float(update))
    assert updates == approx([-0.8, -0.8, -0.4, -0.4])


def test_the_base_class_says_what_to_override():
    class NoCall(LearningRateSchedule):
        pass
    with pytest.raises(NotImplementedError, match="must override `__call__"):
        NoCall()(0)
    with pytest.raises(NotImplementedError, match="must override `get_config"):
        NoCall().get_config()
    with pytest.raises(ValueError, match="Unknown learning rate schedule 'Nope'.*custom_objects"):
        schedules.deserialize({"class_name": "Nope", "config": {}})
    assert schedules.deserialize({"class_name": "Nope", "config": {"start": 1.0, "period": 1}},
                                 custom_objects={"Nope": Halving}).period == 1
    with pytest.raises(AttributeError, match="batchfit.optimizers.schedules"):
        schedules.CosineDecayy


@pytest.mark.parametrize("build, error, fragment", [
    (lambda: ExponentialDecay(0.1, 0, 0.9), ValueError, "`decay_steps` must be > 0"),
    (lambda: ExponentialDecay("0.1", 10, 0.9), TypeError, "`initial_learning_rate` must be a number"),
    (lambda: ExponentialDecay(0.1, 10, 0.9, staircase=1), TypeError, "`staircase` must be True or False"),
    (lambda: InverseTimeDecay(0.1, -5, 0.5), ValueError, "`decay_steps` must be > 0"),
    (lambda: PolynomialDecay(0.1, 10, power=float("nan")), ValueError, "`power` must be finite"),
    (lambda: CosineDecay(0.1, 10, warmup_steps=-1), ValueError, "`warmup_steps` must be >= 0"),
    (lambda: CosineDecay(0.1, 10, warmup_target="high"), TypeError, "`warmup_target` must be a number"),
    (lambda: CosineDecayRestarts(0.1, 0), ValueError, "`first_decay_steps` must be > 0"),
    (lambda: PiecewiseConstantDecay([1, 2], [0.1, 0.2]), ValueError, "one element fewer than `values`"),
    (lambda: PiecewiseConstantDecay(3, [0.1, 0.2]), TypeError, "must be lists"),
    (lambda: PiecewiseConstantDecay([1], [0.1, None]), TypeError, r"`values\[1\]` must be a number"),
])
def test_bad_arguments_name_the_argument(build, error, fragment):
    with pytest.raises(error, match=fragment):
        build()


# ----------------------------------------------------------------- schedules in training, vs Keras

def data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)


def twin_models(bf_optimizer, keras_optimizer):
    """The same Dense(2) on [B, 3] in both, Keras's initial weights copied into batchfit's."""
    theirs = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
    theirs.compile(optimizer=keras_optimizer, loss="mse")
    mine = bf.Sequential([bf.layers.Dense(2, activation="tanh", input_shape=(3,))])
    mine.compile(optimizer=bf_optimizer, loss="mse")
    mine.set_weights(theirs.get_weights())
    return mine, theirs


OPTIMIZERS = [   # (optimizer, its options, schedule, its arguments): each optimizer with a schedule
    ("SGD", {}, "ExponentialDecay", (0.3, 2, 0.5), {}),
    ("SGD", {"momentum": 0.9, "nesterov": True}, "PiecewiseConstantDecay", ([1, 3], [0.3, 0.1, 0.03]), {}),
    ("Adam", {}, "CosineDecay", (0.0, 4), {"warmup_target": 0.05, "warmup_steps": 2}),
    ("AdamW", {"weight_decay": 0.1, "global_clipnorm": 0.5}, "PolynomialDecay", (0.05, 4), {}),
    ("RMSprop", {"momentum": 0.5}, "InverseTimeDecay", (0.02, 1, 0.5), {}),
    ("Adagrad", {"clipvalue": 0.1}, "CosineDecayRestarts", (0.1, 2), {}),
]


@pytest.mark.parametrize("optimizer, options, schedule, args, kwargs", OPTIMIZERS,
                         ids=[f"{o[0]}-{o[2]}" for o in OPTIMIZERS])
def test_train_on_batch_follows_kerass_optimizer_step_by_step(optimizer, options, schedule, args, kwargs):
    mine, theirs = twin_models(
        getattr(bf.optimizers, optimizer)(getattr(schedules, schedule)(*args, **kwargs), **options),
        getattr(keras.optimizers, optimizer)(getattr(keras.optimizers.schedules, schedule)(*args, **kwargs),
                                             **options))
    x, y = data()
    rates = []
    for step in range(5):
        assert mine.optimizer.learning_rate == approx(float(theirs.optimizer.learning_rate), rel=1e-6)
        rates.append(mine.optimizer.learning_rate)
        batch = slice(4 * step, 4 * step + 4)
        loss = mine.train_on_batch(x[batch], y[batch])
        assert loss == approx(float(theirs.train_on_batch(x[batch], y[batch])), rel=1e-5)
        assert mine.optimizer.iterations == int(theirs.optimizer.iterations) == step + 1
        for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(set(rates)) > 2        # the schedule moved the rate


def test_sgd_exponential_decay_by_hand():
    # Dense(1) w = 1, b = 0 on x = 1, y = 0: loss w^2-ish; dL/dw = dL/db = 2 * (w + b).
    # lr(n) = 0.1 * 0.5 ** n; update n: (w, b) -= lr(n) * 2 * (w + b), so w + b shrinks by 1 - 4 lr(n).
    model = bf.Sequential([bf.layers.Dense(1, input_shape=(1,), kernel_initializer="ones")])
    model.compile(optimizer=bf.optimizers.SGD(ExponentialDecay(0.1, 1, 0.5)), loss="mse")
    x, y = np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)
    w, b = 1.0, 0.0
    for n in range(3):
        assert model.optimizer.learning_rate == approx(0.1 * 0.5 ** n)
        model.train_on_batch(x, y)
        grad = 2 * (w + b)
        w, b = w - 0.1 * 0.5 ** n * grad, b - 0.1 * 0.5 ** n * grad
        assert model.get_weights()[0][0, 0] == approx(w) and model.get_weights()[1][0] == approx(b)
    assert (w, b) == approx((0.716, -0.284))        # w + b: 1, 0.6, 0.6 * 0.8, 0.48 * 0.9


def fit_model(optimizer, **fit_kwargs):
    x, y = data(24, seed=1)
    model = bf.Sequential([bf.layers.Dense(2, input_shape=(3,), kernel_initializer="glorot_uniform")], seed=3)
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(x, y, shuffle=False, verbose=0, **fit_kwargs)
    return model, history


def test_fit_fused_loop_equals_train_on_batch_loop():
    schedule = CosineDecay(0.0, 6, warmup_target=0.2, warmup_steps=3)
    fitted, _ = fit_model(bf.optimizers.Adam(schedule), batch_size=4, epochs=2)    # 6 updates per epoch
    x, y = data(24, seed=1)
    stepped = bf.Sequential([bf.layers.Dense(2, input_shape=(3,), kernel_initializer="glorot_uniform")], seed=3)
    stepped.compile(optimizer=bf.optimizers.Adam(schedule), loss="mse")
    for _ in range(2):
        for i in range(0, 24, 4):
            stepped.train_on_batch(x[i:i + 4], y[i:i + 4])
    assert fitted.optimizer.iterations == stepped.optimizer.iterations == 12
    assert fitted.optimizer.learning_rate == approx(float(schedule(12)))        # 0.2 * alpha = 0: held
    for a, b in zip(fitted.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_accumulate_steps_counts_updates_not_batches():
    """accumulate_steps=3 with batches of 2 is one batch of 6 per update: 12 batches, 4 updates,
    update n at lr(n), the same as batch_size=6 without accumulation."""
    schedule = PiecewiseConstantDecay([0, 1, 2], [0.4, 0.2, 0.1, 0.05])      # a new rate at every update
    accumulated, _ = fit_model(bf.optimizers.SGD(schedule), batch_size=2, accumulate_steps=3)
    whole, _ = fit_model(bf.optimizers.SGD(schedule), batch_size=6)
    assert accumulated.optimizer.iterations == whole.optimizer.iterations == 4
    assert accumulated.optimizer.learning_rate == whole.optimizer.learning_rate == approx(0.05)
    for a, b in zip(accumulated.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    once, _ = fit_model(bf.optimizers.SGD(0.4), batch_size=6)                     # lr(n) mattered
    assert not np.allclose(once.get_weights()[0], whole.get_weights()[0], rtol=1e-3)


def test_learning_rate_over_a_schedule_is_read_not_set_as_in_keras():
    model, history = fit_model(bf.optimizers.SGD(ExponentialDecay(0.1, 2, 0.5)), batch_size=8, epochs=2)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][1] < history.history["loss"][0]
    assert model.optimizer.learning_rate == approx(0.1 * 0.5 ** 3)              # 6 updates done: lr(6)
    with pytest.raises(TypeError, match="cannot be set: it follows a schedule"):     # Keras: TypeError
        model.optimizer.learning_rate = 0.01
    plain, _ = fit_model(bf.optimizers.SGD(0.1), batch_size=8)
    with pytest.raises(TypeError, match="can be set to a float only.*Compile again"):
        plain.optimizer.learning_rate = ExponentialDecay(0.1, 2, 0.5)
    fresh = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))])
    fresh.compile(optimizer=bf.optimizers.Adam(ExponentialDecay(0.1, 2, 0.5)), loss="mse")
    assert fresh.optimizer.learning_rate == approx(0.1) and fresh.optimizer.iterations == 0


# ----------------------------------------------------------------- optimizer configs with a schedule

def test_optimizer_config_round_trips_and_reads_kerass():
    adam = bf.optimizers.Adam(CosineDecay(0.0, 20, warmup_target=0.1, warmup_steps=5), beta_1=0.8)
    config = adam.get_config()
    assert config["learning_rate"] == {**keras.optimizers.schedules.serialize(
        keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.1, warmup_steps=5)),
        "module": "batchfit.optimizers.schedules"}
    again = bf.optimizers.Adam.from_config(config)
    assert isinstance(again.learning_rate, CosineDecay) and again.beta_1 == 0.8
    assert float(again.learning_rate(7)) == float(adam.learning_rate(7))
    theirs = keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 3, 0.5), momentum=0.5)
    ported = bf.optimizers.SGD.from_config(theirs.get_config())      # Keras's name, use_ema=False, ... dropped
    assert ported.momentum == 0.5 and float(ported.learning_rate(3)) == approx(0.05)
    with pytest.raises(ValueError, match="`use_ema=True` has no batchfit optimizer equivalent"):
        bf.optimizers.SGD.from_config({**theirs.get_config(), "use_ema": True})
    assert bf.optimizers.SGD(0.1).get_config()["learning_rate"] == 0.1


def test_a_model_with_a_schedule_saves_and_loads(tmp_path):
    model, _ = fit_model(bf.optimizers.SGD(ExponentialDecay(0.1, 2, 0.5), momentum=0.5), batch_size=8)
    model.save(tmp_path / "m.keras")
    loaded = bf.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, type(model.optimizer))
    assert loaded.optimizer.learning_rate == model.optimizer.learning_rate == approx(0.1 * 0.5 ** 1.5)
