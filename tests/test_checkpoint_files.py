"""ModelCheckpoint (decisions checked against Keras 3's own callback), atomic durable saves, and the one
typed error (bf.errors.CheckpointError) for every way a saved file can be damaged."""

import io
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")      # Keras is the reference; never TensorFlow

import numpy as np
import pytest

import batchfit as bf
from batchfit.errors import CheckpointError

X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
Y = X @ np.array([[1.0], [-2.0], [0.5]], np.float32)


def small_model(seed=0):
    model = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)), bf.layers.Dense(1)], seed=seed)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


# ----- the save decisions, against Keras's ModelCheckpoint driven with the same logs -------------------

class Recorder:
    """Stands for the model: records where each save went."""

    def __init__(self):
        self.saved = []

    def save(self, filepath, overwrite=True):
        self.saved.append(("model", filepath))

    def save_weights(self, filepath, overwrite=True):
        self.saved.append(("weights", filepath))


def drive(cb, events):
    """Run `events` ([("epoch", e, logs) | ("batch", e, b, logs)]) through callback `cb`; the saves it made."""
    recorder = Recorder()
    cb.set_model(recorder)
    cb.on_train_begin()
    for event in events:
        if event[0] == "epoch":
            cb.on_epoch_begin(event[1])
            cb.on_epoch_end(event[1], dict(event[2]))
        else:
            cb.on_epoch_begin(event[1])
            cb.on_train_batch_end(event[2], dict(event[3]))
    return recorder.saved


EPOCHS = [("epoch", e, {"loss": loss, "val_loss": val, "val_mae": mae})
          for e, (loss, val, mae) in enumerate([(1.0, 0.9, 0.5), (0.8, 0.95, 0.6), (0.7, 0.85, 0.4),
                                                (0.6, 0.85, 0.7), (0.5, 0.86, 0.3)])]


@pytest.mark.parametrize("kwargs", [
    dict(filepath="ck/m-{epoch:02d}-{val_loss:.2f}.keras"),
    dict(filepath="ck/best.keras", save_best_only=True),                            # auto: val_loss goes down
    dict(filepath="ck/best.keras", save_best_only=True, initial_value_threshold=0.88),
    dict(filepath="ck/{epoch}.weights.h5", save_best_only=True, monitor="val_mae", mode="max",
         save_weights_only=True),
    dict(filepath="ck/{epoch}-{val_mae:.1f}.keras", save_best_only=True, monitor="val_mae", mode="min"),
    dict(filepath="ck/{epoch}.keras", save_best_only=True, monitor="val_mae", mode="max",
         initial_value_threshold=0.65),
])
def test_epoch_saves_match_keras(kwargs):
    import keras
    keras_saves = drive(keras.callbacks.ModelCheckpoint(**kwargs), EPOCHS)
    ours = drive(bf.callbacks.ModelCheckpoint(**kwargs), EPOCHS)
    assert ours == keras_saves
    assert len(ours) >= 1


def test_the_worked_examples_of_the_epoch_saves():
    saves = drive(bf.callbacks.ModelCheckpoint("ck/m-{epoch:02d}-{val_loss:.2f}.keras"), EPOCHS)
    assert [p for _, p in saves][:2] == ["ck/m-01-0.90.keras", "ck/m-02-0.95.keras"]     # epoch is 1-based
    best = drive(bf.callbacks.ModelCheckpoint("{epoch}.keras", save_best_only=True), EPOCHS)
    assert [p for _, p in best] == ["1.keras", "3.keras"]       # 0.9, then 0.85; 0.95, 0.85, 0.86 are no better
    threshold = drive(bf.callbacks.ModelCheckpoint("{epoch}.keras", save_best_only=True,
                                                   initial_value_threshold=0.86), EPOCHS)
    assert [p for _, p in threshold] == ["3.keras"]             # 0.85 < 0.86 is the only improvement


def test_batch_saves_match_keras_also_when_calls_fuse_steps():
    import keras
    # Batch indices as fit reports them: every batch (5 per epoch), then fused calls ending at 2 and 4.
    for indices in ([0, 1, 2, 3, 4] * 3, [2, 4] * 3, [1, 3, 4, 0, 4, 2, 4]):
        events, epoch, last = [], 0, None
        for i, b in enumerate(indices):
            epoch += last is not None and b <= last
            last = b
            events.append(("batch", epoch, b, {"loss": 1.0 / (i + 1)}))
        for save_freq in (1, 2, 3, 7):
            kwargs = dict(filepath="ck/{epoch}-{batch}-{loss:.3f}.keras", save_freq=save_freq, monitor="loss")
            assert drive(bf.callbacks.ModelCheckpoint(**kwargs), events) == \
                drive(keras.callbacks.ModelCheckpoint(**kwargs), events), (indices, save_freq)
    saves = drive(bf.callbacks.ModelCheckpoint("{epoch}-{batch}.keras", save_freq=3),
                  [("batch", e, b, {}) for e in range(2) for b in range(5)])
    assert [p for _, p in saves] == ["1-3.keras", "2-1.keras", "2-4.keras"]   # batches 3, 6, 9 of 5 per epoch


def test_arguments_are_checked_as_keras_does():
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`.*Received: filepath=w\.keras"):
        bf.callbacks.ModelCheckpoint("w.keras", save_weights_only=True)
    with pytest.raises(ValueError, match=r"must end in `\.keras`.*Received: filepath=m\.weights"):
        bf.callbacks.ModelCheckpoint("m.weights")
    with pytest.raises(ValueError, match="legacy HDF5"):
        bf.callbacks.ModelCheckpoint("m.h5")
    with pytest.raises(ValueError, match="Unrecognized save_freq: 'batch'"):
        bf.callbacks.ModelCheckpoint("m.keras", save_freq="batch")
    with pytest.warns(UserWarning, match="mode 'biggest' is unknown"):
        assert bf.callbacks.ModelCheckpoint("m.keras", mode="biggest").mode == "auto"


def test_bad_monitor_or_file_name_fail_before_any_step(tmp_path):
    model = small_model()
    before = model.get_weights()
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"), monitor="val_wiggle", save_best_only=True)
    with pytest.raises(ValueError, match="monitor=val_wiggle.*mode='max'"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[cb])
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / "m-{val_acuracy:.2f}.keras"))
    with pytest.raises(ValueError, match=r"names \['val_acuracy'\].*\['loss', 'mae'\]"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[cb])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not os.listdir(tmp_path)


# ----- in fit: files at the right batches, holding the weights of that moment ------------------------

class Watch(bf.callbacks.Callback):
    """Records the weights and batch index at every call end (and lets fit fuse steps)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def max_steps_per_execution(self, num_batches):
        return None

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((batch, self.model.get_weights()))


def test_batch_checkpoints_in_fit_hold_the_weights_of_their_batch(tmp_path):
    model, watch = small_model(), Watch()
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch}-{batch}.weights.h5"), save_weights_only=True,
                                      save_freq=6)
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[cb, watch])
    # 8 batches per epoch; the calls end after the fit's batches 6 and 12 (epoch 2, batch 4), where it saves,
    # and at each epoch's end: the rest stay fused
    assert [b for b, _ in watch.seen] == [5, 7, 3, 7]
    assert sorted(os.listdir(tmp_path)) == ["w-1-6.weights.h5", "w-2-4.weights.h5"]
    for name, index in (("w-1-6.weights.h5", 0), ("w-2-4.weights.h5", 2)):
        fresh = small_model(seed=9)
        fresh.load_weights(tmp_path / name)
        for a, b in zip(fresh.get_weights(), watch.seen[index][1]):
            np.testing.assert_array_equal(a, b)


def test_best_model_files_load_back_to_the_weights_of_their_epoch(tmp_path):
    model, epochs = small_model(), []
    record = bf.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: epochs.append((logs, model.get_weights())))
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss", save_best_only=True)
    model.fit(X[:48], Y[:48], batch_size=16, epochs=4, verbose=0, validation_data=(X[48:], Y[48:]),
              callbacks=[cb, record])
    best = min(range(4), key=lambda e: epochs[e][0]["val_loss"])
    loaded = bf.load_model(tmp_path / "best.keras")
    for a, b in zip(loaded.get_weights(), epochs[best][1]):
        np.testing.assert_array_equal(a, b)
    assert loaded.evaluate(X[48:], Y[48:], verbose=0)[0] == pytest.approx(epochs[best][0]["val_loss"], rel=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["best.keras"]       # no temporary file left


# ----- damaged files: one typed error naming the file ----------------------------------------------

def _keras_file(tmp_path):
    model = small_model()
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    return model, model.save(tmp_path / "m.keras")


def _rewrite(path, member, data=None, arrays=None):
    """The zip at `path` again with `member` replaced by `data` (bytes) or `arrays` (an .npz), or dropped."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
    if data is None:
        del members[member]
    else:
        members[member] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in members.items():
            archive.writestr(name, value)


def _arrays(path, member="model.weights.npz"):
    with zipfile.ZipFile(path) as archive, np.load(io.BytesIO(archive.read(member))) as npz:
        return {name: npz[name] for name in npz.files}


def refused(load, path, what):
    with pytest.raises(CheckpointError, match=what) as info:
        load(path)
    message = str(info.value)
    assert os.path.basename(str(path)) in message and "allow_pickle" not in message
    assert info.value.__suppress_context__ or info.value.__context__ is None    # no NumPy advice chained
    return message


def test_damaged_keras_files_raise_one_typed_error_naming_the_file(tmp_path):
    model, path = _keras_file(tmp_path)
    good = open(path, "rb").read()
    for cut in (0, 10, len(good) // 3, len(good) // 2, len(good) - 30, len(good) - 1):
        open(path, "wb").write(good[:cut])
        refused(bf.load_model, path, "damaged|truncated")
    for offset in (40, len(good) // 2, len(good) - 100):      # a flipped byte in data, then in the directory
        open(path, "wb").write(good[:offset] + bytes([good[offset] ^ 0x5A]) + good[offset + 1:])
        refused(bf.load_model, path, "damaged|truncated")
    cases = [("config.json", dict(data=b'{"class_name": "Seq'), "broken JSON"),
             ("metadata.json", dict(data=b"[1, 2"), "broken JSON"),
             ("model.weights.npz", dict(data=None), r"lacks \['model.weights.npz'\]"),
             ("config.json", dict(data=b"[]"), "no model entry")]
    arrays = _arrays(path)
    cases += [("model.weights.npz", dict(arrays={k: v for k, v in arrays.items() if k != "weights/1"}),
               "lacks the array weights/1"),
              ("model.weights.npz", dict(arrays={**arrays, "weights/0": np.zeros((4, 3), np.float32)}),
               r"weights/0 is float32\[4, 3\], but the file recorded float32\[3, 4\]"),
              ("model.weights.npz", dict(arrays={**arrays, "weights/0": arrays["weights/0"].astype(np.float64)}),
               r"weights/0 is float64\[3, 4\]"),
              ("model.weights.npz", dict(arrays={**arrays, "weights/0": np.array([{"x": 1}], dtype=object)}),
               "Python objects")]
    for member, change, what in cases:
        open(path, "wb").write(good)
        _rewrite(path, member, **change)
        refused(bf.load_model, path, what)
        if member == "model.weights.npz":
            refused(small_model().load_weights, path, what)


def test_damaged_weights_files_raise_the_typed_error(tmp_path):
    model = small_model()
    path = model.save_weights(tmp_path / "w.weights.h5")
    good = open(path, "rb").read()
    for cut in (5, len(good) // 2, len(good) - 1):
        open(path, "wb").write(good[:cut])
        refused(small_model().load_weights, path, "damaged|truncated")
    open(path, "wb").write(good[:200] + bytes([good[200] ^ 1]) + good[201:])
    refused(small_model().load_weights, path, "damaged|truncated")
    with np.load(io.BytesIO(good)) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for change, what in (({"weights/1": np.zeros(5, np.float32)}, r"weights/1 is float32\[5\]"),
                         ({"weights/2": np.array([None], dtype=object)}, "Python objects"),
                         ({"manifest": np.array("{not json")}, "broken JSON")):
        with open(path, "wb") as f:                  # np.savez(path) would add ".npz" to the name
            np.savez(f, **{**arrays, **change})
        refused(small_model().load_weights, path, what)


def test_damaged_folder_saves_raise_the_typed_error(tmp_path):
    model = small_model()
    folder = model.save(tmp_path / "m")
    config_path, weights_path = os.path.join(folder, "model.json"), os.path.join(folder, "weights.npz")
    config, weights = open(config_path).read(), open(weights_path, "rb").read()
    open(config_path, "w").write(config[:40])
    assert "model.json" in refused(bf.load_model, folder, "broken JSON")
    open(config_path, "w").write(config)
    for damaged in (weights[:len(weights) // 2], weights[:100] + bytes([weights[100] ^ 4]) + weights[101:]):
        open(weights_path, "wb").write(damaged)
        assert "weights.npz" in refused(bf.load_model, folder, "damaged|truncated")
    arrays = [np.ones((3, 4), np.float32), np.zeros(4, np.float32), np.ones((4, 1), np.float32)]
    for change, what in (({}, "lacks the array w/3"), ({"w0": np.ones((4, 3), np.float32)}, r"w/0 is float32\[4, 3\]"),
                         ({"w1": np.array([1], dtype=object)}, "Python objects")):
        with open(weights_path, "wb") as f:
            np.savez(f, **{**{f"w{i}": a for i, a in enumerate(arrays)}, **change})
        refused(bf.load_model, folder, what)


# ----- atomic saves: leftovers are cleaned, a folder swap cut short is recovered ----------------------

def test_leftovers_of_killed_saves_are_ignored_by_load_and_removed_by_the_next_save(tmp_path):
    model = small_model()
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m")
    (tmp_path / ".m.keras.batchfit-tmp-abc").write_bytes(b"half a zip")
    (tmp_path / ".m.batchfit-tmp-xyz").mkdir()
    (tmp_path / ".m.batchfit-old-xyz").mkdir()
    (tmp_path / "other.txt").write_text("mine")
    np.testing.assert_array_equal(bf.load_model(tmp_path / "m.keras").get_weights()[0], model.get_weights()[0])
    np.testing.assert_array_equal(bf.load_model(tmp_path / "m").get_weights()[0], model.get_weights()[0])
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m", "m.keras", "other.txt"]


def test_a_folder_save_killed_between_its_two_renames_is_recovered(tmp_path):
    old, new = small_model(seed=1), small_model(seed=2)
    old.save(tmp_path / "m")
    new.save(tmp_path / "staged")
    # The instant between the renames: the old copy moved aside, the complete new one not yet in place.
    os.replace(tmp_path / "m", tmp_path / ".m.batchfit-old-k1")
    os.replace(tmp_path / "staged", tmp_path / ".m.batchfit-new-k1")
    np.testing.assert_array_equal(bf.load_model(tmp_path / "m").get_weights()[0], new.get_weights()[0])
    old.save(tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    np.testing.assert_array_equal(bf.load_model(tmp_path / "m").get_weights()[0], old.get_weights()[0])


SAVER = textwrap.dedent("""
    import sys, numpy as np, batchfit as bf
    model = bf.Sequential([bf.layers.Dense(256, input_shape=(256,)), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    for i in range(100_000):
        model.set_weights([np.full_like(w, i) for w in model.get_weights()])
        model.save(sys.argv[1])
        if i == 0:
            print("saved", flush=True)
""")


def _first_saves(savers: list, timeout: float = 180.0) -> None:
    """Wait until every saver has printed "saved" (its first save is whole); other output goes in the message."""
    waiting, other, deadline = {saver.stdout: saver for saver in savers}, [], time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for out in select.select(list(waiting), [], [], 1.0)[0]:
            line = out.readline()
            if line.strip() == "saved":
                del waiting[out]
            elif line:
                other.append(line)
            else:
                raise AssertionError(f"a saver ended before its first save (exit {waiting[out].wait()}); "
                                     f"output: {other!r}")
    assert not waiting, f"{len(waiting)} of {len(savers)} savers made no first save in {timeout} s; output: {other!r}"


def test_saves_killed_at_random_instants_leave_a_loadable_save(tmp_path):
    """SIGKILL during repeated saves (.keras files and folders) at seeded instants: the path always
    loads and holds one whole save (every weight equal to one i); the next save leaves no leftovers."""
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    delays = np.random.default_rng(23).uniform(0.0, 0.2, size=6)
    paths = [str(tmp_path / f"run{k}" / ("m.keras" if k % 2 else "m")) for k in range(len(delays))]
    savers = [subprocess.Popen([sys.executable, str(script), path], stdout=subprocess.PIPE, text=True)
              for path in paths]             # one process each (a fork after import could inherit held locks)
    try:
        _first_saves(savers)
        for saver, delay in zip(savers, delays):
            time.sleep(delay)
            saver.send_signal(signal.SIGKILL)
        assert [saver.wait(timeout=30) for saver in savers] == [-signal.SIGKILL] * len(savers)
    finally:
        for saver in savers:
            saver.kill()
            saver.wait()
    for path in paths:
        model = bf.load_model(path, compile=False)
        assert len({float(v) for w in model.get_weights() for v in np.unique(w)}) == 1   # never a mix of two
        model.save(path)
        assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_a_training_checkpoint_is_one_file_that_keeps_every_dtype_bitwise_without_pickle(tmp_path):
    """TrainingCheckpoints in one process: `{step}.npz` with two members, the arrays' bytes (uint8 [36]: bfloat16
    2*2, an empty [0, 3], bool 2, a PRNG key's uint32 data 2*4, uint8 2, an int32 scalar 4, the 4 float32 batch
    losses 16) and the record; every array comes back with its dtype, shape and bits; max_to_keep=1 leaves the
    newest only, and a save removes the temporary file a killed save left."""
    import jax
    import jax.numpy as jnp
    from batchfit.checkpoint import TrainingCheckpoints
    from batchfit.engine.state import Position, TrainState
    state = TrainState(params={"w": jnp.array([1.5, -2.25], jnp.bfloat16), "e": jnp.zeros((0, 3))},
                       model_state={"on": jnp.array([True, False]), "key": jax.random.key(3)},
                       opt_state=(jnp.array([7, 255], jnp.uint8),), step=jnp.array(5, jnp.int32))
    losses = np.array([0.5, 0.25, 1.0, 2.0], np.float32)
    position = Position(state, 2, 4, 11, np.array([[3.0, 4.0]], np.float32), losses)
    store = TrainingCheckpoints(tmp_path)
    assert store.save(position, {"note": 1}) == 0
    (tmp_path / ".1.npz.batchfit-tmp-x1").write_bytes(b"half")          # left by a save killed mid-write
    assert store.save(position) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.npz"]     # the leftover and step 0 are gone
    with np.load(tmp_path / "1.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["arrays", "record.json"] and archive["arrays"].size == 20 + 16
    back, extra = store.restore(state)
    plain = lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a
    for got, saved in zip(jax.tree.leaves(back.train), jax.tree.leaves(state), strict=True):
        assert (got.dtype, got.shape) == (saved.dtype, saved.shape)
        np.testing.assert_array_equal(np.asarray(plain(got)).reshape(-1).view(np.uint8),
                                      np.asarray(plain(saved)).reshape(-1).view(np.uint8))
    assert (back.epoch, back.batch, back.seed, extra) == (2, 4, 11, {})
    np.testing.assert_array_equal(back.batch_losses, losses)
