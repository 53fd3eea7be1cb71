"""A training process for tests/test_backup.py: fit with BackupAndRestore, maybe SIGKILL itself.

    python tests/backup_child.py BACKUP_DIR OUT KILL [INPUT]

KILL is "none", "batch:n" / "val:n" (SIGKILL at the n-th training / validation batch hook of
this process), "file:n" (at the n-th fsync by a checkpoint write: odd n the file before its rename,
even n the folder after it) or "folder:n" (at the n-th fsync of the folder, after a rename). The
parent also kills it at random instants. INPUT is "arrays" (the default: NumPy arrays, shuffled by
fit) or "grain" (a grain MapDataset, shuffled by grain, mapped and batched: a stream that resumes by
skipping the batches of the epoch already run). When fit ends, OUT.npz holds every array of the
training state and OUT.json the History, both written aside and renamed.
"""

import json
import os
import signal
import sys

import jax
import numpy as np

import batchfit as bf
import batchfit.checkpoint as checkpoint
from batchfit._async_writer import WRITER

FIT = dict(batch_size=8, epochs=3, seed=3, accumulate_steps=2, verbose=0)
SAVE_FREQ = 3


def make_model():
    model = bf.Sequential([bf.layers.Dense(8, activation="relu", input_shape=(4,)), bf.layers.Dropout(0.25),
                           bf.layers.BatchNormalization(), bf.layers.Dense(1)], seed=1)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"], steps_per_execution=3)   # calls end at saves
    return model


def data():
    rng = np.random.default_rng(7)
    x = rng.random((96, 4)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
    return (x[:72], y[:72]), (x[72:], y[72:])          # 9 training batches an epoch, 3 validation batches


def fit(model, callbacks, input="arrays", **overrides):
    (x, y), validation = data()
    if input == "grain":
        return model.fit(grain_dataset(x, y), validation_data=validation, callbacks=callbacks,
                         **{**FIT, "batch_size": None, **overrides})
    return model.fit(x, y, validation_data=validation, callbacks=callbacks, **{**FIT, **overrides})


def grain_dataset(x, y):
    """x, y as a grain MapDataset: shuffled (grain's own seeded order), mapped, batches of 8."""
    import grain
    return (grain.MapDataset.source([(x[i], y[i]) for i in range(len(x))]).shuffle(seed=5)
            .map(lambda pair: (pair[0] * 2.0, pair[1])).batch(8))


def leaves(model) -> list:
    """Every array of the training state (PRNG keys as their data)."""
    return [np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
            for a in jax.tree.leaves(model.get_position().train)]


def history_record(history) -> dict:
    return {"epoch": history.epoch, "history": history.history, "batch_history": history.batch_history}


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class InterruptAt(bf.callbacks.Callback):
    """At batch hook (epoch, batch): raise KeyboardInterrupt (Ctrl-C, as fit sees it), or send this process
    a real SIGINT (`signal_it`), which fit notes and raises at that step boundary."""

    def __init__(self, epoch, batch, signal_it=False):
        super().__init__()
        self.at, self.signal_it, self.epoch = (epoch, batch), signal_it, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):       # overridden: "auto" runs one step per call
        if (self.epoch, batch) == self.at:
            if not self.signal_it:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)


class KillAt(bf.callbacks.Callback):
    """SIGKILL this process at the n-th train ("batch") or validation ("val") batch hook."""

    def __init__(self, kind, n):
        super().__init__()
        self.kind, self.n, self.count = kind, n, 0

    def max_steps_per_execution(self, num_batches):
        return None                   # leave the compiled calls as BackupAndRestore cuts them

    def _tick(self, kind):
        if kind == self.kind:
            self.count += 1
            if self.count == self.n:
                die()

    def on_train_batch_end(self, batch, logs=None):
        self._tick("batch")

    def on_test_batch_end(self, batch, logs=None):
        self._tick("val")


def kill_in_writes(kind, n):
    """SIGKILL at the n-th fsync of a file ("file") or of the folder ("folder") by a checkpoint write."""
    name = {"file": "_fsync", "folder": "_fsync_directory"}[kind]
    original, count = getattr(checkpoint, name), [0]

    def counted(*args):
        count[0] += 1
        if count[0] == n:
            die()
        return original(*args)

    setattr(checkpoint, name, counted)


def main(backup_dir, out, kill, input="arrays"):
    WRITER.duty = 1.0                # the writer writes back to back (no rest): more kills land inside writes
    callbacks = [bf.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ, delete_checkpoint=False)]
    kind, _, n = kill.partition(":")
    if kind in ("batch", "val"):
        callbacks.append(KillAt(kind, int(n)))
    elif kind in ("file", "folder"):
        kill_in_writes(kind, int(n))
    model = make_model()
    print("ready", flush=True)
    history = fit(model, callbacks, input)
    np.savez(out + ".tmp.npz", *leaves(model))
    with open(out + ".tmp.json", "w") as f:
        json.dump(history_record(history), f)
    os.replace(out + ".tmp.npz", out + ".npz")
    os.replace(out + ".tmp.json", out + ".json")


if __name__ == "__main__":
    main(*sys.argv[1:5])
