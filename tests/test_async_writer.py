"""Checkpoint writes in the background (batchfit/_async_writer.py): the device-side snapshot, the writer's
semantics (a waiting write replaced, errors raised in the training thread, fit's end waits), and files
that are those of a synchronous save."""

import io
import json
import os
import threading
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf
from batchfit._async_writer import Writer, snapshot

X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
Y = X @ np.array([[1.0], [-2.0], [0.5]], np.float32)


# ----- the snapshot ------------------------------------------------------------------------------

def test_a_snapshot_holds_every_dtype_exactly_and_outlives_the_donation_of_its_arrays():
    key = jax.random.key(7)
    leaves = [jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7, jnp.array([True, False]),
              jnp.array([-3, 2**31 - 1], jnp.int32), key, jnp.array([1.5, -2.25], jnp.bfloat16),
              jnp.zeros((0, 4), jnp.float32), jnp.array(9, jnp.uint8)]
    expected = [np.asarray(jax.random.key_data(a)) if a is key else np.asarray(a) for a in leaves]
    taken = snapshot(leaves)
    bump = jax.jit(lambda a: a + 1, donate_argnums=0)        # as a training call donates the state
    leaves[0] = bump(leaves[0])
    got = taken.arrays()
    for a, b in zip(got, expected, strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        np.testing.assert_array_equal(a, b)
    assert taken.layout[3].key_impl == str(jax.random.key_impl(key)) and got[3].dtype == np.uint32
    assert taken.packed.dtype == jnp.uint8 and taken.packed.size == 24 + 2 + 8 + 8 + 4 + 0 + 1   # the bytes


# ----- the writer ----------------------------------------------------------------------------------

class Gate:
    """A job that blocks the writer until released, so that later submissions wait behind it."""

    def __init__(self, log, name):
        self.log, self.name, self.started, self.release = log, name, threading.Event(), threading.Event()

    def __call__(self):
        self.started.set()
        assert self.release.wait(10)
        self.log.append(self.name)


def test_a_waiting_write_is_replaced_by_a_later_one_of_the_same_key_and_other_keys_all_run():
    writer, log, owner = Writer(), [], object()
    gate = Gate(log, "a1")
    writer.submit("a", gate, owner, "a1")
    assert gate.started.wait(10)                              # a1 runs; the others wait behind it
    for key, name in (("a", "a2"), ("b", "b1"), ("a", "a3"), ("c", "c1")):
        writer.submit(key, lambda name=name: log.append(name), owner, name)
    gate.release.set()
    writer.wait(owner)
    assert log == ["a1", "a3", "b1", "c1"]                    # a2 replaced by a3, in a's place in the queue


def test_an_error_in_the_writer_is_raised_in_the_training_thread_once_with_its_owner():
    writer, mine, other = Writer(), object(), object()

    def fail():
        raise OSError(28, "No space left on device")
    writer.submit("x", fail, mine, "the file x.weights.h5")
    writer.wait(other)                                        # another owner's wait does not raise it
    with pytest.raises(OSError, match="No space left") as info:
        writer.check(mine)
    assert "background write of the file x.weights.h5" in " ".join(info.value.__notes__)
    writer.check(mine)                                        # raised once, not again
    writer.submit("x", fail, mine, "x")
    with pytest.warns(RuntimeWarning, match="No space left"):  # when another exception is on its way
        writer.wait(mine, raise_errors=False)


def test_cancel_drops_only_the_owners_writes_not_yet_started():
    writer, log, mine, other = Writer(), [], object(), object()
    gate = Gate(log, "running")
    writer.submit("g", gate, mine, "g")
    assert gate.started.wait(10)
    writer.submit("m", lambda: log.append("mine"), mine, "m")
    writer.submit("o", lambda: log.append("other"), other, "o")
    writer.cancel(mine)
    gate.release.set()
    writer.wait()
    assert log == ["running", "other"]


def test_a_save_due_while_the_writer_is_idle_starts_at_once():
    writer, log, owner = Writer(), [], object()
    writer.submit("a", lambda: time.sleep(0.05), owner, "a")
    writer.wait()
    submitted = time.monotonic()
    writer.submit("a", lambda: log.append(time.monotonic()), owner, "a again")
    writer.wait(owner)
    assert len(log) == 1 and log[0] - submitted < 0.5         # no rest after the first job


# ----- ModelCheckpoint: the files of a synchronous save -------------------------------------------

def dropout_model(seed=0):
    """Dropout and BatchNorm: the .keras file holds RNG keys (as "prng_key") and batch statistics."""
    model = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,), name="hidden"),
                           bf.layers.Dropout(0.3, name="dropout"), bf.layers.BatchNormalization(name="norm"),
                           bf.layers.Dense(1, name="out")], seed=seed, name="net")   # same names: same configs
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


class SyncSaves(bf.callbacks.Callback):
    """The synchronous reference: model.save / save_weights at the same batches, in the training thread."""

    def __init__(self, folder, every, weights_only):
        super().__init__()
        self.folder, self.every, self.weights_only, self.epoch = folder, every, weights_only, 0

    def max_steps_per_execution(self, num_batches):
        return None

    def control_batches(self, epoch, first, count, seen):
        return bf.callbacks.every_nth(self.every, first, count, seen)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            name = f"s-{self.epoch + 1}-{batch + 1}"
            if self.weights_only:
                self.model.save_weights(os.path.join(self.folder, name + ".weights.h5"))
            else:
                self.model.save(os.path.join(self.folder, name + ".keras"))


def _members(path) -> dict:
    """A saved file's parts: JSON members as objects (without the save date), arrays by name."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "model.weights.npz" not in names:                   # a .weights.h5 file: one .npz
            with np.load(path) as npz:
                return {name: npz[name] for name in npz.files}
        parts = {name: json.loads(archive.read(name)) for name in names if name.endswith(".json")}
        parts["metadata.json"].pop("date_saved")
        with np.load(io.BytesIO(archive.read("model.weights.npz"))) as npz:
            parts.update({name: npz[name] for name in npz.files})
    return parts


@pytest.mark.parametrize("weights_only", [True, False])
def test_background_saves_write_what_synchronous_saves_write(tmp_path, weights_only):
    """8 batches an epoch, saves every 4: the files of batches 4 and 8 of both epochs, array for array."""
    suffix = ".weights.h5" if weights_only else ".keras"
    background, reference = dropout_model(), dropout_model()
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / ("b-{epoch}-{batch}" + suffix)), save_freq=4,
                                      save_weights_only=weights_only)
    background.fit(X, Y, batch_size=8, epochs=2, verbose=0, seed=5, callbacks=[cb])
    reference.fit(X, Y, batch_size=8, epochs=2, verbose=0, seed=5,
                  callbacks=[SyncSaves(str(tmp_path), 4, weights_only)])
    names = [f"{e}-{b}{suffix}" for e in (1, 2) for b in (4, 8)]
    assert sorted(os.listdir(tmp_path)) == sorted([f"b-{n}" for n in names] + [f"s-{n}" for n in names])
    for name in names:
        ours, theirs = _members(tmp_path / f"b-{name}"), _members(tmp_path / f"s-{name}")
        assert sorted(ours) == sorted(theirs)
        for member, value in theirs.items():
            if isinstance(value, np.ndarray):
                assert ours[member].dtype == value.dtype
                np.testing.assert_array_equal(ours[member], value, err_msg=f"{name}: {member}")
            else:
                assert ours[member] == value, f"{name}: {member}"
    for a, b in zip(bf.load_model(tmp_path / "b-2-8.keras").get_weights() if not weights_only else [],
                    background.get_weights()):
        np.testing.assert_array_equal(a, b)                    # the last save: the final weights


def test_a_failed_background_write_is_raised_by_fit(tmp_path):
    """The folder for the file is a file: the first write fails in the writer thread; fit raises that error
    at a later save (the next one, unless the writer has not run yet) or at its end, never loses it."""
    (tmp_path / "blocked").write_text("a file where a folder should be")
    model = dropout_model()
    cb = bf.callbacks.ModelCheckpoint(str(tmp_path / "blocked" / "w-{batch}.weights.h5"), save_weights_only=True,
                                      save_freq=4)
    with pytest.raises(OSError) as info:
        model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert "ModelCheckpoint's file" in " ".join(info.value.__notes__)
    assert int(model.get_position().train.step) in (8, 12, 16)       # stopped at a save after the failed one
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[])  # nothing left over for the next fit
