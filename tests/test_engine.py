"""Equivalences and invariants of the one-step engine."""

import jax
import numpy as np
import optax
import pytest
from pytest import approx

import batchfit as bf
from batchfit.data.arrays import plan_chunks


def mlp(seed=0, dropout=0.0):
    layers = [bf.layers.Dense(16, activation="relu", input_shape=(10,))]
    if dropout:
        layers.append(bf.layers.Dropout(dropout))
    layers.append(bf.layers.Dense(1, activation="sigmoid"))
    return bf.Sequential(layers, seed=seed)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.random((200, 10)).astype(np.float32)
    y = rng.integers(0, 2, size=(200, 1)).astype(np.float32)
    return x, y


def test_fit_and_a_train_on_batch_loop_agree(data):
    x, y = data                                     # 200 / 32: six full batches and one of 8
    a, b = mlp(), mlp()
    for m in (a, b):
        m.compile(optimizer=bf.optimizers.Adam(), loss="binary_crossentropy")
    history = a.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    losses = [[float(b.train_on_batch(x[i:i + 32], y[i:i + 32])) for i in range(0, 200, 32)] for _ in range(2)]
    np.testing.assert_allclose(history.batch_history["loss"], losses, rtol=1e-6, atol=1e-6)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_k_single_steps_equal_one_fused_scan(data, steps):
    x, y = data
    fused, single = mlp(), mlp()
    fused.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    single.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"], steps_per_execution=steps)
    hf = fused.fit(x, y, batch_size=32, epochs=2, seed=3, verbose=0)
    hs = single.fit(x, y, batch_size=32, epochs=2, seed=3, verbose=0)
    np.testing.assert_allclose(hf.batch_history["loss"], hs.batch_history["loss"], rtol=1e-6, atol=1e-7)
    assert hf.history["accuracy"] == approx(hs.history["accuracy"])
    for wa, wb in zip(fused.get_weights(), single.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-6)


def test_same_seed_same_history_and_weights(data):
    x, y = data
    runs = []
    for _ in range(2):
        model = mlp(seed=5, dropout=0.3)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        runs.append((model.fit(x, y, epochs=2, seed=11, verbose=0), model.get_weights()))
    assert runs[0][0].history == runs[1][0].history
    assert runs[0][0].batch_history == runs[1][0].batch_history
    for wa, wb in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(wa, wb)
    other = mlp(seed=5, dropout=0.3)
    other.compile(optimizer="adam", loss="binary_crossentropy")
    assert other.fit(x, y, epochs=2, seed=12, verbose=0).history != runs[0][0].history


def test_shuffle_visits_every_sample_once_per_epoch():
    x = np.arange(20, dtype=np.float32)[:, None]
    model = bf.Sequential([bf.layers.Dense(1, use_bias=False, input_shape=(1,))], seed=0)
    model.set_weights([np.ones((1, 1), np.float32)])   # y_pred = x, y = 0
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    history = model.fit(x, np.zeros_like(x), batch_size=5, epochs=3, seed=0, verbose=0)
    for losses in history.batch_history["loss"]:   # each batch loss = mean of its x^2
        assert sum(l * 5 for l in losses) == approx(np.sum(x**2))
    assert history.batch_history["loss"][0] != history.batch_history["loss"][1]


def test_step_is_traced_once_and_dispatches_are_counted(data):
    x, y = data
    traces = []

    def loss(y_true, y_pred):
        traces.append(1)                            # runs only while tracing
        return bf.losses.binary_crossentropy(y_true, y_pred)

    model = mlp()
    model.compile(optimizer="adam", loss=loss, steps_per_execution=3)
    calls = []
    model.fit(x[:10], y[:10], epochs=1, verbose=0)  # builds the executables
    real = model._exe.fit_chunk

    def counted(*args, **shape):                    # the jitted chunk call, counting its dispatches
        calls.append(1)
        return real(*args, **shape)
    model._exe = model._exe._replace(fit_chunk=counted)
    traces.clear()
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert len(calls) == 4 * 3                      # ceil(7 batches / 3) dispatches per epoch
    assert len(traces) == 2                         # one trace per chunk shape: [3 full], [1 full + tail]


def test_plan_chunks_cover_every_batch_once():
    chunks = plan_chunks(1000, 32, 5)
    assert [c.first for c in chunks] == list(range(0, 32, 5))
    assert chunks[-1] == (30, 31, 960, 1, 8)        # batch 30 full, batch 31 the 8-sample tail
    assert sum(c.num_steps * 32 + c.tail for c in chunks) == 1000
    assert plan_chunks(5, 32, 4) == ((0, 0, 0, 0, 5),)


def test_train_state_keeps_its_shapes_across_a_step(data):
    x, y = data
    model = mlp()
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.train_on_batch(x[:32], y[:32])
    from batchfit.engine.state import Batch
    state = model._slot.leaves                 # the TrainState's leaves, as the compiled calls take it
    batch = Batch(x[:32], y[:32], np.ones(32, np.float32))
    out = jax.eval_shape(model._exe.train_batch, state, batch)[0]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), out) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    # params, Adam's m and v, Adam's count, the optimizer state's count and learning rate, the step
    assert len(state) == 2 * 2 + 2 * 2 * 2 + 1 + 2 + 1


def test_batch_norm_statistics_and_dropout_rng_are_carried(data):
    x, y = data
    model = bf.Sequential([bf.layers.Dense(8, input_shape=(10,)), bf.layers.BatchNormalization(),
                           bf.layers.Dropout(0.5), bf.layers.Dense(1, activation="sigmoid")], seed=0)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0, shuffle=False)
    moving_mean = model.get_weights()[4]
    assert not np.allclose(moving_mean, before[4])  # moving statistics were updated
    a = float(model.test_on_batch(x[:32], y[:32]))
    assert float(model.test_on_batch(x[:32], y[:32])) == a    # inference mode: deterministic
    l1, l2 = float(model.train_on_batch(x[:32], y[:32])), float(model.train_on_batch(x[:32], y[:32]))
    assert l1 != l2


def test_any_nnx_module_trains():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 8, rngs=rngs)
            self.b = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([1.0, 2.0, -1.0]))[:, None].astype(np.float32)
    net = Net(nnx.Rngs(0))
    model = bf.Model(net)
    model.compile(optimizer=bf.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    assert model.evaluate(x, y, verbose=0) == approx(float(np.mean((np.asarray(net(x)) - y) ** 2)), rel=1e-5)
    assert model.predict(x).shape == (64, 1)


@pytest.mark.parametrize("wait", [0.0, 1e-3, 10.0])
def test_to_host_reads_device_values_whatever_the_wait(monkeypatch, wait):
    """The engine's host read polls before blocking; what it returns is np.asarray's, ready or not."""
    from batchfit.engine import state
    monkeypatch.setattr(state, "WAIT_BEFORE_BLOCKING", wait)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    eye = np.eye(256, dtype=np.float32)
    slow = jax.jit(lambda m: jax.lax.fori_loop(0, 200, lambda i, v: v @ m + 1.0, m))(eye)   # ~10 ms: not ready
    np.testing.assert_array_equal(state.to_host(slow), eye + 200)
    out = state.to_host(jax.numpy.asarray(a) * 2, np.float64)
    assert out.dtype == np.float64 and type(out) is np.ndarray
    np.testing.assert_array_equal(out, a * 2)
    np.testing.assert_array_equal(state.to_host(a), a)             # host arrays pass through
