"""Equivalences and invariants of the one-step engine."""

import gc
import jax
import numpy as np
import optax
import pytest
from pytest import approx

import batchfit as bf
import batchfit.model as model_module
from batchfit.data.arrays import plan_chunks
from batchfit.engine import loop


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

    def counted(**shape):                           # the jitted call of one chunk shape, counting its dispatches
        run = real(**shape)
        return lambda *a: calls.append(1) or run(*a)
    model._exe = model._exe._replace(fit_chunk=counted)
    traces.clear()
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert len(calls) == 4 * 3                      # ceil(7 batches / 3) dispatches per epoch
    assert len(traces) == 2                         # one trace per chunk shape: [3 full], [1 full + tail]


class _EpochEnd(bf.callbacks.Callback):
    """Only an epoch hook: fit takes its general loop (run_fit), fused as a quiet fit is."""

    def on_epoch_end(self, epoch, logs=None):
        pass


@pytest.mark.parametrize("steps_per_execution, calls", [
    ("auto", [dict(shuffle=False)] * 3),
    ("auto", [dict(seed=1), dict(seed=2), dict(seed=2)]),    # the seed is not part of the call repeated
    ("auto", [dict(epochs=3, initial_epoch=1, seed=4)] * 2),
    (3, [dict(batch_size=16, epochs=2, seed=5)] * 3),        # several calls an epoch
])
def test_quiet_fits_and_their_repeats_train_exactly_as_the_general_loop(data, monkeypatch, steps_per_execution,
                                                                         calls):
    """fit with no callback runs loop.run_quiet, and the same call again skips its setup
    (model._repeat): weights, optimizer and RNG state and every History equal run_fit's, bit
    for bit, the histories read only after the last call (a quiet History is parsed when read)."""
    x, y = data
    quiet, general = mlp(dropout=0.2), mlp(dropout=0.2)
    for m in (quiet, general):
        m.compile(optimizer="adam", loss="binary_crossentropy", steps_per_execution=steps_per_execution)
    ran, sources = [], []
    real_quiet, real_fit, real_source = model_module.run_quiet, model_module.run_fit, quiet._source
    monkeypatch.setattr(model_module, "run_quiet", lambda *a, **k: ran.append("quiet") or real_quiet(*a, **k))
    monkeypatch.setattr(model_module, "run_fit", lambda *a, **k: ran.append("fit") or real_fit(*a, **k))
    quiet._source = lambda *a, **k: sources.append(1) or real_source(*a, **k)
    histories = []
    for kwargs in calls:
        kwargs = {"batch_size": 32, "epochs": 1, **kwargs}
        histories.append((quiet.fit(x, y, verbose=0, **kwargs),
                          general.fit(x, y, verbose=0, callbacks=[_EpochEnd()], **kwargs)))
    assert ran == ["quiet", "fit"] * len(calls)
    assert len(sources) == 1                           # the repeats went straight to run_quiet
    host = lambda a: np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
    for a, b in zip(quiet._leaves, general._leaves):
        np.testing.assert_array_equal(host(a), host(b))
    for h_quiet, h_general in histories:
        assert h_quiet.batch_history == h_general.batch_history
        assert h_quiet.history == h_general.history and h_quiet.history["loss"]
        assert (h_quiet.epoch, h_quiet.params) == (h_general.epoch, h_general.params)
    assert quiet.history is histories[-1][0]


def _unaligned(a):
    """A copy of `a` whose data starts 16 bytes past a 64-byte boundary (JAX copies such arrays)."""
    raw = np.empty(a.nbytes + 80, np.uint8)
    start = (-raw.ctypes.data % 64) + 16
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_repeated_fits_read_arrays_written_in_place(data, shuffle):
    """A quiet fit called again on the same NumPy arrays copies them (and a shuffled epoch's
    order) into its own aligned buffers (source.Stage) on every call, which the compiled call
    reads through jax.Arrays on their memory: what was written in place in between is what
    trains, as on a model that gets fresh copies every call."""
    x0, y0 = data
    x, y = _unaligned(x0), _unaligned(y0)
    assert x.ctypes.data % 64 and y.ctypes.data % 64
    staged, fresh = mlp(), mlp()
    for m in (staged, fresh):
        m.compile(optimizer="adam", loss="binary_crossentropy")
    for step in range(4):
        staged.fit(x, y, batch_size=32, shuffle=shuffle, seed=step, verbose=0)
        fresh.fit(x.copy(), y.copy(), batch_size=32, shuffle=shuffle, seed=step, verbose=0)
        x *= 1.5                                        # in place, between calls
        y[step] = 1.0 - y[step]
    buffers = staged._repeat.seen.stage._buffers
    assert set(buffers) == ({"x", "y", "order"} if shuffle else {"x", "y"})      # the staged path ran
    if jax.default_backend() == "cpu":          # and read the buffers through jax.Arrays on their memory
        for host, read in buffers.values():
            assert isinstance(read, jax.Array) and read.unsafe_buffer_pointer() == host.ctypes.data
    for a, b in zip(staged.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    del x, y
    gc.collect()
    assert staged._repeat.seen.x() is None             # the stage keeps copies, never the user's arrays


def test_a_repeated_quiet_call_refuses_what_a_first_call_refuses(data):
    """A call like the last one but for a value's type, or on arrays reshaped in place, is
    checked again: the same errors as on a fresh model, and the weights untouched."""
    x, y = data
    x = x.copy()
    model = mlp()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, batch_size=32, verbose=0)
    weights = model.get_weights()
    for kwargs, pattern in [(dict(batch_size=32.0), r"`batch_size` must be an integer >= 1; got 32.0"),
                            (dict(epochs=True), r"`epochs` must be an integer >= 0; got True"),
                            (dict(initial_epoch=2), r"`epochs` \(1\) must be >= `initial_epoch` \(2\)"),
                            (dict(seed=-1), r"`seed` must be an integer >= 0; got -1")]:
        with pytest.raises(ValueError, match=pattern):
            model.fit(x, y, verbose=0, **{"batch_size": 32, **kwargs})
    x.shape = (400, 5)                                 # the same array object, another layout
    with pytest.raises(ValueError, match=r"cannot run on `x` \(float32\[400, 5\]\)"):
        model.fit(x, np.concatenate([y, y]), batch_size=32, verbose=0)
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_repeat_checks_on_the_device_only_what_the_loss_and_settings_ask(data):
    """The same NumPy arrays passed again are checked in the first compiled call: NaN / inf
    (bits 1, 2) unless allow_nonfinite, the label range (bit 4) only for a loss that has one."""
    x, y = data
    for loss, allow, bits in [("mse", True, 0), ("mse", False, 3), ("binary_crossentropy", True, 4),
                              ("binary_crossentropy", False, 7)]:
        model = mlp()
        model.compile(optimizer="adam", loss=loss, allow_nonfinite=allow)
        for _ in range(2):
            model.fit(x, y, batch_size=32, seed=0, verbose=0)
        assert model._repeat.quiet.check == bits, (loss, allow)


def test_device_ints_past_their_cache_give_the_same_numbers_and_no_new_trace(data, monkeypatch):
    """Chunk offsets and check bits go to the compiled calls as cached device int32 scalars;
    past the cache, as np.int32: the same signature (no new trace) and the same numbers."""
    x, y = data
    traces = []

    def loss(y_true, y_pred):
        traces.append(1)                               # runs only while tracing
        return bf.losses.binary_crossentropy(y_true, y_pred)

    models = [mlp(), mlp()]
    for m in models:
        m.compile(optimizer="adam", loss=loss, steps_per_execution=2)
    histories = [models[0].fit(x, y, epochs=2, seed=3, verbose=0)]
    histories.append(models[0].fit(x, y, epochs=2, seed=3, verbose=0))    # a repeat: checked on the device
    traced = len(traces)
    monkeypatch.setattr(loop, "_DEVICE_INTS", {})
    monkeypatch.setattr(loop, "_DEVICE_INTS_KEPT", 0)
    histories += [models[1].fit(x, y, epochs=2, seed=3, verbose=0) for _ in range(2)]
    assert histories[0].batch_history == histories[2].batch_history
    assert histories[1].batch_history == histories[3].batch_history
    for a, b in zip(*(m.get_weights() for m in models)):
        np.testing.assert_array_equal(a, b)
    models[0].fit(x, y, epochs=2, seed=3, verbose=0)
    assert len(traces) == 2 * traced and not loop._DEVICE_INTS     # the twin's own traces, and none more


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
    state = model._leaves                      # the TrainState's leaves, as the compiled calls take it
    batch = Batch(x[:32], y[:32], np.ones(32, np.float32))
    out = jax.eval_shape(model._exe.train_batch, state, batch)[0]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), out) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    assert len(state) == 2 * 2 + 2 * 2 * 2 + 2       # params, Adam's m and v, Adam's count, the step


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
