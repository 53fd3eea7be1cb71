"""The everyday callbacks against Keras 3 itself (KERAS_BACKEND=jax): EarlyStopping, TerminateOnNaN,
ReduceLROnPlateau, LearningRateScheduler, CSVLogger, TensorBoard, and History.plot().

Monitoring callbacks are driven by the same synthetic logs in Keras and batchfit (same stop
epochs, same learning rates); real fits check the weights against hand computations.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import struct
import types
import optax

import numpy as np
import pytest
from pytest import approx

import batchfit as bf
from conftest import linear_model, reference_sgd

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # Keras's own, from NumPy 2

X = np.arange(16, dtype=np.float32).reshape(8, 2) / 8
Y = X @ np.array([[1.0], [-1.0]], np.float32) + 0.5


def sgd_model(lr=0.1, w=(0.0, 0.0)):
    model = linear_model(list(w))
    model.compile(optimizer=bf.optimizers.SGD(learning_rate=lr), loss="mse")
    return model


def keras_host(lr=0.1):
    """A stand-in for a Keras model: what Keras's callbacks read (stop_training, optimizer, metrics)."""
    return types.SimpleNamespace(stop_training=False, optimizer=keras.optimizers.SGD(learning_rate=lr), metrics=[])


def drive(callback, model, values, monitor="val_loss"):
    """on_train_begin, then on_epoch_end with logs {monitor: value} until stop_training: per epoch
    (stopped, the logged learning rate, the optimizer's rate after the epoch)."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin({})
    seen = []
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch, {})
        logs = {monitor: value}
        callback.on_epoch_end(epoch, logs)
        lr = float(np.asarray(model.optimizer.learning_rate))
        seen.append((bool(model.stop_training), logs.get("learning_rate"), lr))
        if model.stop_training:
            break
    callback.on_train_end({})
    return seen


RNG = np.random.default_rng(0)
SEQUENCES = [
    [1.0, 0.9, 0.95, 0.91, 0.92, 0.80, 0.81, 0.82, 0.83, 0.70, 0.9, 0.9],
    [0.5, 0.5, 0.5, 0.49995, 0.4, 0.4, 0.41, 0.3, 0.3, 0.3, 0.3, 0.3],
    list(np.round(1 + np.cumsum(RNG.normal(0, 0.05, 14)), 4)),
]


@pytest.mark.parametrize("kwargs", [
    {}, {"patience": 2}, {"patience": 1, "min_delta": 0.05}, {"patience": 3, "baseline": 0.85},
    {"patience": 1, "start_from_epoch": 4}, {"patience": 2, "mode": "max"}, {"patience": 2, "min_delta": -0.02}])
def test_early_stopping_stops_where_keras_stops(kwargs):
    ours_model = sgd_model()
    for values in SEQUENCES:
        ours = bf.callbacks.EarlyStopping(**kwargs)
        theirs = keras.callbacks.EarlyStopping(**kwargs)
        got = drive(ours, ours_model, values)
        expected = drive(theirs, keras_host(), values)
        assert [s for s, _, _ in got] == [s for s, _, _ in expected]
        assert (ours.stopped_epoch, ours.best_epoch, ours.wait) == (theirs.stopped_epoch, theirs.best_epoch, theirs.wait)
        assert ours.best == approx(float(theirs.best))


def test_early_stopping_auto_mode_reads_the_name_as_keras_does():
    for monitor, op in [("val_loss", np.less), ("accuracy", np.greater), ("val_auc", np.greater), ("mae", np.less)]:
        cb = bf.callbacks.EarlyStopping(monitor=monitor, min_delta=0.1)
        cb.set_model(sgd_model())
        cb.on_train_begin()
        assert cb.monitor_op is op and cb.min_delta == (-0.1 if op is np.less else 0.1)
    model = sgd_model()
    with pytest.raises(ValueError, match="monitor=my_score.*mode='max'"):     # before any step
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[bf.callbacks.EarlyStopping(monitor="my_score")])
    assert model.get_weights()[0] == approx(np.zeros((2, 1)))
    with pytest.warns(UserWarning, match="mode 'up' is unknown"):
        assert bf.callbacks.EarlyStopping(mode="up").mode == "auto"


def test_early_stopping_restores_the_best_epochs_weights_in_a_real_fit():
    # Train towards y = 2x; validate against y = x: val_loss falls while w < 1, then rises.
    x = np.linspace(0.5, 1.5, 8, dtype=np.float32)[:, None]
    model = linear_model([0.0])
    model.compile(optimizer=bf.optimizers.SGD(learning_rate=0.02), loss="mse")
    weights_at_end = []
    record = bf.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: weights_at_end.append(model.get_weights()))
    stop = bf.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    history = model.fit(x, 2 * x, batch_size=8, epochs=20, shuffle=False, verbose=0,
                        validation_data=(x, x), callbacks=[record, stop])
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert best >= 3 and len(val) == best + 3 and stop.stopped_epoch == best + 2   # patience 2: two worse epochs
    assert val[best + 1] > val[best] and val[best + 2] > val[best]
    assert model.get_weights()[0] == approx(weights_at_end[best][0])   # restored, not the last epoch's
    assert weights_at_end[-1][0] != approx(weights_at_end[best][0])
    _, w, b = reference_sgd(x, 2 * x, [0.0], 0.0, 0.02, 8, best + 1)  # the best epoch's weights by hand
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)
    assert model.get_weights()[1] == approx([b], rel=1e-5, abs=1e-6)


def test_early_stopping_restores_at_the_end_of_training_too():       # Keras 3: even when it never stopped
    model = sgd_model(lr=0.05)
    x, y = X, Y
    stop = bf.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True, baseline=-1.0)
    weights = []
    fake_worse = bf.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: (
        weights.append(model.get_weights()), logs.update(loss=logs["loss"] + (10.0 if e == 2 else 0.0))))
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[fake_worse, stop])
    assert stop.stopped_epoch == 0 and stop.best_epoch == 1
    assert model.get_weights()[0] == approx(weights[1][0])


def test_terminate_on_nan_stops_after_the_nan_batch_as_keras():
    y = Y.copy()
    y[5] = np.nan                                                        # batch 2 of 4 (batch size 2)
    model = linear_model([0.0, 0.0])
    model.compile(optimizer=bf.optimizers.SGD(learning_rate=0.1), loss="mse", allow_nonfinite=True)
    history = model.fit(X, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
                        callbacks=[bf.callbacks.TerminateOnNaN()])
    kmodel = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    kmodel.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    seen = []
    kmodel.fit(X, y, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b)),
        keras.callbacks.TerminateOnNaN()])
    assert seen == [0, 1, 2]                                              # Keras: stops after batch 2
    assert history.epoch == [0] and len(history.batch_history["loss"][0]) == 3
    losses = history.batch_history["loss"][0]
    assert np.isfinite(losses[:2]).all() and np.isnan(losses[2])
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 2"):
        fresh = linear_model([0.0, 0.0])
        fresh.compile(optimizer=bf.optimizers.SGD(learning_rate=0.1), loss="mse", allow_nonfinite=True)
        fresh.fit(X, y, batch_size=2, shuffle=False, verbose=0,
                  callbacks=[bf.callbacks.TerminateOnNaN(raise_error=True)])


@pytest.mark.parametrize("kwargs", [
    {"patience": 1}, {"patience": 2, "factor": 0.5, "cooldown": 2}, {"patience": 1, "min_lr": 0.004},
    {"patience": 1, "min_delta": 0.05, "factor": 0.3}, {"patience": 2, "mode": "max", "cooldown": 1}])
def test_reduce_lr_on_plateau_gives_keras_learning_rates(kwargs):
    model = sgd_model(lr=0.1)
    for values in SEQUENCES:
        model.optimizer.learning_rate = 0.1
        got = drive(bf.callbacks.ReduceLROnPlateau(**kwargs), model, values)
        expected = drive(keras.callbacks.ReduceLROnPlateau(**kwargs), keras_host(0.1), values)
        assert [lr for _, _, lr in got] == approx([lr for _, _, lr in expected], rel=1e-7)
        assert [logged for _, logged, _ in got] == approx([logged for _, logged, _ in expected], rel=1e-7)
    with pytest.raises(ValueError, match="factor >= 1.0. Received factor=1.5"):
        bf.callbacks.ReduceLROnPlateau(factor=1.5)


def test_learning_rate_scheduler_gives_keras_learning_rates():
    schedules = [lambda epoch, lr: lr if epoch < 2 else lr * 0.5, lambda epoch: 0.1 / (1 + epoch),
                 lambda epoch, lr: float(np.float32(0.3) ** (epoch + 1))]
    for schedule in schedules:
        got = drive(bf.callbacks.LearningRateScheduler(schedule), sgd_model(0.1), [1.0] * 5)
        expected = drive(keras.callbacks.LearningRateScheduler(schedule), keras_host(0.1), [1.0] * 5)
        assert [lr for _, _, lr in got] == approx([lr for _, _, lr in expected], rel=1e-7)
        assert [logged for _, logged, _ in got] == approx([logged for _, logged, _ in expected], rel=1e-7)
    with pytest.raises(ValueError, match="should be a float. Got: 1 \\(int\\) at epoch 0"):
        sgd_model().fit(X, Y, verbose=0, callbacks=[bf.callbacks.LearningRateScheduler(lambda epoch: 1)])


def test_learning_rate_scheduler_in_a_real_fit_matches_sgd_by_hand():
    rates = [0.2, 0.1, 0.05]
    model = sgd_model(lr=0.5)
    calls = []
    real = None
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0)                 # build, then count compiled calls
    model.set_weights([np.zeros((2, 1), np.float32), np.zeros(1, np.float32)])
    real = model._exe.fit_chunk
    model._exe = model._exe._replace(fit_chunk=lambda *a, **k: calls.append(k["num_steps"]) or real(*a, **k))
    history = model.fit(X, Y, batch_size=2, epochs=3, shuffle=False, verbose=0,
                        callbacks=[bf.callbacks.LearningRateScheduler(lambda epoch, lr: rates[epoch])])
    w, b = np.zeros(2), 0.0
    for epoch, lr in enumerate(rates):                                  # SGD by hand, one epoch per rate
        losses, w, b = reference_sgd(X, Y, w, b, lr, 2, 1)
        assert history.batch_history["loss"][epoch] == approx(losses[0], rel=1e-5)
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)
    assert history.history["learning_rate"] == approx(rates)
    assert calls == [4, 4, 4]                                           # still one fused call per epoch
    scheduled = linear_model([0.0, 0.0])
    scheduled.compile(optimizer=bf.optimizers.SGD(bf.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)), loss="mse")
    with pytest.raises(TypeError, match="LearningRateScheduler sets model.optimizer.learning_rate.*schedule"):
        scheduled.fit(X, Y, verbose=0, callbacks=[bf.callbacks.LearningRateScheduler(lambda epoch: 0.1)])


def test_reduce_lr_on_plateau_in_a_real_fit():
    raw = linear_model([0.0, 0.0])
    raw.compile(optimizer=optax.sgd(0.1), loss="mse")
    with pytest.raises(ValueError, match="ReduceLROnPlateau sets model.optimizer.learning_rate.*inject_hyperparams"):
        raw.fit(X, Y, verbose=0, callbacks=[bf.callbacks.ReduceLROnPlateau(monitor="loss")])
    assert raw.get_weights()[0] == approx(np.zeros((2, 1)))          # refused before any step
    model = sgd_model(lr=0.1)
    plateau = bf.callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, min_delta=10.0)
    history = model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[plateau])
    # min_delta 10: no epoch after the first improves, so the rate halves after epochs 1 and 2
    assert history.history["learning_rate"] == approx([0.1, 0.1, 0.05])
    assert model.optimizer.learning_rate == approx(0.025)
    w, b = np.zeros(2), 0.0
    for lr in [0.1, 0.1, 0.05]:
        _, w, b = reference_sgd(X, Y, w, b, lr, 8, 1)
    assert model.get_weights()[0].ravel() == approx(w, rel=1e-5)


def keras_csv(tmp_path, epochs_logs, **kwargs):
    path = tmp_path / "keras.csv"
    cb = keras.callbacks.CSVLogger(str(path), **kwargs)
    cb.on_train_begin()
    for epoch, logs in enumerate(epochs_logs):
        cb.on_epoch_end(epoch, dict(logs))
    cb.on_train_end()
    return path.read_bytes()


def test_csv_logger_writes_the_bytes_keras_writes(tmp_path):
    cases = [([{"loss": 0.5, "mae": 0.25, "val_loss": 0.75}, {"loss": 0.125, "val_loss": 1 / 3, "mae": 0.2}], {}),
             ([{"loss": 0.5, "accuracy": 0.9}, {"loss": 0.25, "accuracy": 0.95}], {"separator": ";"}),
             ([{"loss": np.float32(0.1), "b": "text", "a": [1, 2]}], {})]
    for logs, kwargs in cases:
        path = tmp_path / "ours.csv"
        cb = bf.callbacks.CSVLogger(path, **kwargs)
        cb.on_train_begin()
        for epoch, entry in enumerate(logs):
            cb.on_epoch_end(epoch, dict(entry))
        cb.on_train_end()
        assert path.read_bytes() == keras_csv(tmp_path, logs, **kwargs)
    assert keras_csv(tmp_path, cases[0][0])[:32] == b"epoch,loss,mae,val_loss\r\n0,0.5,0"


def test_csv_logger_in_real_fits_appends_without_a_second_header(tmp_path):
    path = tmp_path / "log.csv"
    model = sgd_model()
    first = model.fit(X, Y, batch_size=4, epochs=2, verbose=0, validation_data=(X, Y),
                      callbacks=[bf.callbacks.CSVLogger(path)])
    second = model.fit(X, Y, batch_size=4, epochs=3, initial_epoch=2, verbose=0, validation_data=(X, Y),
                       callbacks=[bf.callbacks.CSVLogger(str(path), append=True)])
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,loss,val_loss" and len(lines) == 4
    rows = [[float(v) for v in line.split(",")] for line in lines[1:]]
    assert [r[0] for r in rows] == [0, 1, 2]
    assert [r[1] for r in rows] == approx(first.history["loss"] + second.history["loss"])
    assert [r[2] for r in rows] == approx(first.history["val_loss"] + second.history["val_loss"])


def read_events(folder):
    """{tag: [(step, value or histogram)]} from the TFRecord event files in `folder` (tensorboardX's protos)."""
    from tensorboardX.proto.event_pb2 import Event
    found = {}
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        data = open(os.path.join(folder, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                item = value.histo if value.HasField("histo") else value.simple_value
                found.setdefault(value.tag, []).append((event.step, item))
    return found


def test_tensorboard_writes_keras_named_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboardX")
    model = sgd_model()
    board = bf.callbacks.TensorBoard(tmp_path, histogram_freq=2, update_freq=3, write_steps_per_second=True)
    history = model.fit(X, Y, batch_size=2, epochs=3, shuffle=False, verbose=0, validation_data=(X[:4], Y[:4]),
                        callbacks=[board])
    train, val = read_events(tmp_path / "train"), read_events(tmp_path / "validation")
    assert [v for _, v in train["epoch_loss"]] == approx(history.history["loss"])
    assert [s for s, _ in train["epoch_loss"]] == [0, 1, 2]
    assert [v for _, v in val["epoch_loss"]] == approx(history.history["val_loss"])
    assert [v for _, v in train["epoch_learning_rate"]] == approx([0.1] * 3)
    # update_freq=3 over 12 batches: the running loss after batches 3, 6, 9, 12 (steps count from fit's start)
    steps = [s for s, _ in train["batch_loss"]]
    assert steps == [3, 6, 9, 12]
    losses = history.batch_history["loss"]
    assert [v for _, v in train["batch_loss"]] == approx([np.mean(losses[0][:3]), np.mean(losses[1][:2]),
                                                          np.mean(losses[2][:1]), np.mean(losses[2])], rel=1e-5)
    assert [s for s, _ in val["evaluation_loss_vs_iterations"]] == [4, 8, 12]
    assert [s for s, _ in train["batch_steps_per_second"]] == [3, 6, 9, 12]
    assert len(train["epoch_steps_per_second"]) == 3 and min(v for _, v in train["epoch_steps_per_second"]) > 0
    (tag,) = [t for t in train if t.endswith("/kernel/histogram")]     # "dense_<n>/kernel/histogram"
    assert tag == model.weights[0].path + "/histogram"
    histograms = train[tag]
    assert [s for s, _ in histograms] == [0, 2] and histograms[0][1].num == 2
    # calls end after every 3rd batch of the fit: this epoch's batch 2 in the first, batch 1 in the second
    assert sorted(board.control_batches(0, 0, 4, 0)) == [2] and sorted(board.control_batches(1, 0, 4, 4)) == [1]


def test_tensorboard_profiles_the_asked_batches_and_asks_for_its_extra(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    board = bf.callbacks.TensorBoard(tmp_path, profile_batch=(3, 4))
    assert sorted(board.control_batches(0, 0, 8, 0)) == [1, 3]        # calls end after the fit's batches 2 and 4
    sgd_model().fit(X, Y, batch_size=1, epochs=1, verbose=0, callbacks=[board])
    traces = [f for _, _, files in os.walk(tmp_path / "train") for f in files if f.endswith(".xplane.pb")]
    assert len(traces) == 1 and not board._is_tracing
    with pytest.raises(ValueError, match="profile_batch must be"):
        bf.callbacks.TensorBoard(tmp_path, profile_batch=(4, 2))
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
    with pytest.raises(ImportError, match='pip install "batchfit\\[tensorboard\\]"'):
        bf.callbacks.TensorBoard(tmp_path)


def test_history_plot_draws_the_logged_values():
    import matplotlib
    matplotlib.use("Agg")
    history = bf.callbacks.History()
    history.on_train_begin()
    for epoch, (loss, val, acc) in enumerate([(1.0, 1.5, 0.5), (0.5, 0.9, 0.7), (0.25, 0.8, 0.8)]):
        history.on_epoch_end(epoch, {"loss": loss, "accuracy": acc, "val_loss": val})
    ax = history.plot()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["accuracy", "loss", "val_loss"]
    assert list(lines["loss"].get_ydata()) == [1.0, 0.5, 0.25]
    assert list(lines["val_loss"].get_ydata()) == [1.5, 0.9, 0.8]
    assert list(lines["loss"].get_xdata()) == [1, 2, 3]
    assert lines["val_loss"].get_color() == lines["loss"].get_color() and lines["val_loss"].get_linestyle() == "--"
    assert [line.get_label() for line in history.plot(metrics="accuracy").get_lines()] == ["accuracy"]
    with pytest.raises(ValueError, match="no logs named \\['mae'\\]"):
        history.plot(["mae"])
