"""Callbacks: Keras hook order, stop_training, the progress output and History."""

import numpy as np
import optax
from pytest import approx

import batchfit as bf
from conftest import linear_model

X = np.arange(20, dtype=np.float32).reshape(10, 2) / 10
Y = X.sum(axis=1, keepdims=True)


def compiled(**kwargs):
    model = linear_model([0.0, 0.0])
    model.compile(optimizer=optax.sgd(0.01), loss="mse", **kwargs)
    return model


def test_hooks_fire_in_keras_order():
    events = []
    cb = bf.callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: events.append(f"epoch_begin {epoch}"),
        on_train_batch_end=lambda batch, logs: events.append(f"batch_end {batch}"),
        on_epoch_end=lambda epoch, logs: events.append(f"epoch_end {epoch} {sorted(logs)}"),
        on_train_end=lambda logs: events.append("train_end"))
    compiled().fit(X, Y, batch_size=4, epochs=3, initial_epoch=1, verbose=0, callbacks=[cb],
                   validation_data=(X[:3], Y[:3]))
    assert events == ["train_begin",
                      "epoch_begin 1", "batch_end 0", "batch_end 1", "batch_end 2",
                      "epoch_end 1 ['loss', 'val_loss']",
                      "epoch_begin 2", "batch_end 0", "batch_end 1", "batch_end 2",
                      "epoch_end 2 ['loss', 'val_loss']", "train_end"]


def test_epoch_callbacks_keep_the_epoch_fused():
    model = compiled()
    calls = []
    real = None
    model.fit(X, Y, epochs=1, verbose=0)
    real = model._exe.fit_chunk
    model._exe = model._exe._replace(fit_chunk=lambda *a, **k: calls.append(k["num_steps"]) or real(*a, **k))
    cb = bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    assert calls == [2, 2]                          # one call per epoch: 2 full batches + the tail


def test_stop_training_stops_after_the_current_batch():
    class StopAt(bf.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model = compiled()
    history = model.fit(X, Y, batch_size=4, epochs=5, verbose=0, callbacks=[StopAt()])
    assert history.epoch == [0]
    assert len(history.batch_history["loss"][0]) == 2
    l0, l1 = history.batch_history["loss"][0]
    assert history.history["loss"][0] == approx((l0 + l1) / 2, rel=1e-6)   # two batches of 4


def test_callback_reads_current_weights_during_fit():
    seen = []
    model = compiled()
    cb = bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(model.get_weights()[0].copy()))
    model.fit(X, Y, batch_size=10, epochs=2, verbose=0, callbacks=[cb])
    assert not np.allclose(seen[0], seen[1])
    np.testing.assert_array_equal(seen[1], model.get_weights()[0])


def test_verbose_2_prints_one_line_per_epoch(capsys):
    compiled().fit(X, Y, batch_size=4, epochs=2, verbose=2)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2") and "loss:" in lines[1]


def test_verbose_1_shows_a_progress_bar_with_loss_and_rate(capsys):
    history = compiled().fit(X, Y, batch_size=4, epochs=1, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "3/3" in out and "steps/s" in out
    assert f"loss: {history.history['loss'][0]:.4f}" in out


def test_history_is_returned_and_kept_on_the_model():
    model = compiled()
    history = model.fit(X, Y, batch_size=5, epochs=2, verbose=0)
    assert model.history is history and history.epoch == [0, 1]
    assert [len(b) for b in history.batch_history["loss"]] == [2, 2]


def test_hooks_of_subclasses_instances_and_mixed_lists_fire_in_list_order():
    """Only hooks a callback defines are called, from its class or set on the instance, in list order."""
    events = []

    class EpochEnds(bf.callbacks.Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_end(self, epoch, logs=None):
            events.append(f"{self.name} end {epoch} loss={'loss' in logs}")

    plain = bf.callbacks.Callback()
    plain.on_epoch_begin = lambda epoch, logs=None: events.append(f"plain begin {epoch} {logs}")
    compiled().fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[EpochEnds("a"), plain, EpochEnds("b")])
    assert events == ["plain begin 0 {}", "a end 0 loss=True", "b end 0 loss=True",
                      "plain begin 1 {}", "a end 1 loss=True", "b end 1 loss=True"]


class Recorder(bf.callbacks.Callback):
    """Records every hook it gets, with the batch index and the logs' keys."""

    def __init__(self):
        super().__init__()
        self.events = []


def _recording(name):
    def hook(self, *args):
        self.events.append((name, *[a if isinstance(a, int) else sorted(a or {}) for a in args]))
    return hook


for _name in [n for n in vars(bf.callbacks.Callback) if n.startswith("on_") and n != "on_epoch_batch_losses"]:
    setattr(Recorder, _name, _recording(_name))


def test_evaluate_predict_and_validation_call_keras_test_and_predict_hooks():
    """10 samples in batches of 4: three test / predict batches, each hook once per dispatch
    (steps_per_execution=1), with the running logs (evaluate) or the outputs (predict)."""
    model = compiled(steps_per_execution=1)
    recorder = Recorder()
    model.evaluate(X, Y, batch_size=4, verbose=0, callbacks=[recorder])
    assert recorder.events == [("on_test_begin", []),
                               *[e for b in range(3) for e in (("on_test_batch_begin", b, []),
                                                               ("on_test_batch_end", b, ["loss"]))],
                               ("on_test_end", ["loss"])]
    recorder.events.clear()
    out = model.predict(X, batch_size=4, verbose=0, callbacks=[recorder])
    assert out.shape == (10, 1) and recorder.events[0] == ("on_predict_begin", [])
    assert [e[0] for e in recorder.events[1:]] == ["on_predict_batch_begin", "on_predict_batch_end"] * 3 + [
        "on_predict_end"]
    assert recorder.events[2] == ("on_predict_batch_end", 0, ["outputs"])
    recorder.events.clear()
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[recorder], validation_data=(X[:5], Y[:5]))
    names = [e[0] for e in recorder.events]
    assert names.index("on_test_begin") > names.index("on_train_batch_end")      # validation after the batches
    assert names.index("on_test_end") < names.index("on_epoch_end")
    assert ("on_test_end", ["loss"]) in recorder.events


def test_evaluate_and_predict_show_a_progress_bar_when_verbose(capsys):
    model = compiled()
    model.evaluate(X, Y, batch_size=4, verbose=2)
    model.predict(X, batch_size=4, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Evaluate - ") and "loss: " in lines[0]
    assert lines[1].startswith("Predict - ")
    model.evaluate(X, Y, batch_size=4, verbose=0)
    assert capsys.readouterr().out == ""


def test_an_epoch_callback_that_stops_training_is_obeyed_at_once():
    """A callback with on_epoch_end sees epoch e end before epoch e + 1 starts (epoch_ends_in_order):
    stopping at epoch 1's end trains no batch of epoch 2."""
    model = compiled()
    steps = []

    class StopAfterOne(bf.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            steps.append(int(model.get_position().train.step))
            if epoch == 1:
                self.model.stop_training = True
    history = model.fit(X, Y, batch_size=4, epochs=5, verbose=0, callbacks=[StopAfterOne()])
    assert history.epoch == [0, 1] and steps == [3, 6]
    assert int(model.get_position().train.step) == 6 and model.get_position().epoch == 2


def test_a_history_only_fit_reads_each_epoch_once_the_next_runs_and_loses_none():
    """With History alone, epoch e's logs are read after epoch e + 1 is dispatched: every epoch
    still lands in History, in order, equal to a fit whose callback keeps the epochs in order."""
    deferred, in_order = compiled(), compiled()
    h1 = deferred.fit(X, Y, batch_size=4, epochs=4, verbose=0, shuffle=False)
    h2 = in_order.fit(X, Y, batch_size=4, epochs=4, verbose=0, shuffle=False,
                      callbacks=[bf.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)])
    assert h1.epoch == h2.epoch == [0, 1, 2, 3]
    assert h1.history == h2.history and h1.batch_history == h2.batch_history


class EverySeventh(bf.callbacks.Callback):
    """Needs control after every 7th batch of the fit, and lets fit fuse the rest."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def max_steps_per_execution(self, num_batches):
        return None

    def control_batches(self, epoch, first, count, seen):
        return bf.callbacks.every_nth(7, first, count, seen)

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(batch)


def _counting_calls(model):
    calls, real = [], model._exe.fit_chunk
    model._exe = model._exe._replace(fit_chunk=lambda *a, **k: calls.append(k["num_steps"] + (k["tail"] > 0))
                                     or real(*a, **k))
    return calls


def test_compiled_calls_end_exactly_where_a_callback_needs_control():
    """20 batches per epoch, control after the fit's batches 7, 14, 21, 28, 35: epoch 0 ends calls after its
    batches 6 and 13, epoch 1 after 0 (the fit's 21st), 7 and 14; everything else stays fused, and the numbers
    are those of a fit without the callback."""
    x = np.random.default_rng(0).normal(size=(640, 2)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    plain, cut = compiled(), compiled()
    expected = plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    cut.fit(x, y, batch_size=32, epochs=0, verbose=0)          # builds the executables, trains nothing
    calls, callback = _counting_calls(cut), EverySeventh()
    history = cut.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.seen == [6, 13, 19, 0, 7, 14, 19]
    assert calls == [7, 7, 6, 1, 7, 7, 5]
    assert history.history == expected.history
    assert all(np.array_equal(a, b) for a, b in zip(cut.get_weights(), plain.get_weights()))


def test_a_stream_ends_its_calls_where_a_callback_needs_control():
    x = np.random.default_rng(1).normal(size=(320, 2)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    callback = EverySeventh()
    dataset = bf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    compiled().fit(dataset, epochs=2, verbose=0, callbacks=[callback])
    assert callback.seen == [6, 9, 3, 9]            # the fit's batches 7, 10 (epoch end), 14, 20 (epoch end)
