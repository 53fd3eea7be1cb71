"""BackupAndRestore and training checkpoints: Ctrl-C, SIGINT and SIGKILL, then a resume that ends bitwise
where a run that was never stopped ends (weights, optimizer and RNG state, History)."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import batchfit as bf
from batchfit.checkpoint import TrainingCheckpoints
from batchfit.errors import CheckpointError

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "backup_child.py")
_SIGINT_REACHES_FIT = pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="SIGINT is ignored in this process (a shell started it in the background), so Ctrl-C cannot reach fit")


@pytest.fixture(scope="module")
def whole():
    """The run never stopped (child.FIT: shuffled, Dropout, BatchNorm, accumulate_steps=2, validation)."""
    model = child.make_model()
    history = child.fit(model, [])
    return child.leaves(model), child.history_record(history)


def assert_same(leaves, record, whole):
    for a, b in zip(leaves, whole[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert record == whole[1]                      # every float of History and batch_history


def test_ctrl_c_mid_group_saves_the_position_and_the_next_fit_continues_bitwise(tmp_path, whole):
    """KeyboardInterrupt at batch 2 of epoch 1 (3 batches: inside the 2nd accumulation group of 2):
    save_freq="epoch" saved epoch 0; the interrupt saves (1, 3); fit resumes from there."""
    backup = tmp_path / "backup"
    stopped = child.make_model()
    with pytest.raises(KeyboardInterrupt):
        child.fit(stopped, [bf.callbacks.BackupAndRestore(backup), child.InterruptAt(1, 2)])
    position = stopped.get_position()               # the model is usable at the step boundary
    assert (position.epoch, position.batch, float(position.accumulated.count)) == (1, 3, 8.0)
    assert np.isfinite(stopped.evaluate(*child.data()[1], verbose=0)[0])
    store = TrainingCheckpoints(backup)
    saved, extra = store.restore(position.train)
    assert store.steps() == [1] and (saved.epoch, saved.batch) == (1, 3)   # step 0: epoch 0's end
    assert extra["history"]["epoch"] == [0] and len(saved.batch_losses) == 3
    history = child.fit(stopped, [bf.callbacks.BackupAndRestore(backup)])   # the backup replaces its state
    assert_same(child.leaves(stopped), child.history_record(history), whole)
    assert not backup.exists()                       # delete_checkpoint=True: gone once fit ends


@_SIGINT_REACHES_FIT
def test_a_real_sigint_stops_at_a_step_boundary_with_a_fresh_seed(tmp_path):
    """os.kill(SIGINT) from batch 5 of epoch 0 (steps_per_execution=3: calls end at batches 2, 5, 8):
    fit stops after batch 5; the data-order seed drawn for seed=None is in the backup."""
    make = child.make_model
    backup, stopped = tmp_path / "b", make()
    with pytest.raises(KeyboardInterrupt):
        child.fit(stopped, [bf.callbacks.BackupAndRestore(backup, save_freq=False), child.InterruptAt(0, 5, True)],
                  seed=None)
    with pytest.raises(KeyboardInterrupt):            # outside fit, Ctrl-C acts as Python's own handler
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
    position = stopped.get_position()
    assert (position.epoch, position.batch) == (0, 6)
    reference = make()
    h_reference = child.fit(reference, [], seed=position.seed)
    h_resumed = child.fit(stopped, [bf.callbacks.BackupAndRestore(backup)], seed=None)
    assert_same(child.leaves(stopped), child.history_record(h_resumed),
                (child.leaves(reference), child.history_record(h_reference)))


def _dataset_fit(model, callbacks, **kwargs):
    (x, y), _ = child.data()
    dataset = bf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 2.0, b)).batch(8)
    return model.fit(dataset, epochs=2, verbose=0, callbacks=callbacks, **kwargs)


def _generator_fit(model, callbacks):
    (x, y), _ = child.data()

    def batches():                                  # endless, the same 9 batches each epoch
        while True:
            yield from ((x[i:i + 8], y[i:i + 8]) for i in range(0, 72, 8))
    return model.fit(batches(), epochs=2, steps_per_epoch=9, verbose=0, callbacks=callbacks)


def _unshuffled_fit(model, callbacks):
    return child.fit(model, callbacks, shuffle=False, epochs=2)


@pytest.mark.parametrize("kind", ["unshuffled", "dataset", "generator"])
def test_streams_resume_a_dataset_at_the_batch_and_a_generator_at_the_epoch(tmp_path, kind):
    """Unshuffled arrays and a mapped bf.data.Dataset (a stream) resume at batch 6 of epoch 1; a
    plain generator with steps_per_epoch cannot be read again mid-epoch: backups at epoch ends only
    (a warning), so it resumes at epoch 1's start, with a new generator, and still ends bitwise."""
    fit = {"unshuffled": _unshuffled_fit, "dataset": _dataset_fit, "generator": _generator_fit}[kind]
    stop_at = (1, 5)
    reference = child.make_model()
    h_reference = fit(reference, [])
    backup, stopped = tmp_path / "b", child.make_model()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        fit(stopped, [bf.callbacks.BackupAndRestore(backup, save_freq=6), child.InterruptAt(*stop_at)])
    assert any("epoch ends only" in str(w.message) for w in caught) == (kind == "generator")
    saved, _ = TrainingCheckpoints(backup).restore(stopped.get_position().train)
    assert (saved.epoch, saved.batch) == ((1, 0) if kind == "generator" else (1, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the generator's warning again
        h_resumed = fit(stopped, [bf.callbacks.BackupAndRestore(backup, save_freq=6)])
    assert_same(child.leaves(stopped), child.history_record(h_resumed),
                (child.leaves(reference), child.history_record(h_reference)))


@pytest.fixture(scope="module")
def saved_backup(tmp_path_factory):
    """A backup kept after a 2-epoch fit (saved at each epoch's end, the last 2 kept), and the model."""
    folder = tmp_path_factory.mktemp("saved")
    model = child.make_model()
    child.fit(model, [bf.callbacks.BackupAndRestore(folder, double_checkpoint=True, delete_checkpoint=False)],
              epochs=2)
    return folder, model


def _rewrite_record(step: Path, edit) -> None:
    """Rewrite the record of the checkpoint file `step` as `edit(record)` returns it (a valid zip, every other
    member as it was): what a person editing the file by hand would leave."""
    with zipfile.ZipFile(step) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    record = np.load(io.BytesIO(members["record.json.npy"]), allow_pickle=False).tobytes().decode()
    edited = io.BytesIO()
    np.save(edited, np.frombuffer(edit(json.loads(record)).encode(), np.uint8))
    members["record.json.npy"] = edited.getvalue()
    with zipfile.ZipFile(step, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _object_array(step: Path) -> None:
    """Replace the arrays by an array of Python objects (np.save pickles it)."""
    with zipfile.ZipFile(step) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    members["arrays.npy"] = pickled.getvalue()
    with zipfile.ZipFile(step, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _recheck(record: dict, **changes) -> str:
    """The record with `changes` and its own SHA-256 recomputed (so that only the arrays' digests can tell)."""
    import hashlib
    record = {**record, **changes}
    body = {k: v for k, v in record.items() if k != "check"}
    record["check"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return json.dumps(record)


def _as_int32(record: dict) -> str:
    """The record saying that the first training array (float32) is int32, its digest recomputed."""
    train = record["layout"]["train"]
    assert train["00000"][0] == "float32"
    return _recheck(record, layout={**record["layout"], "train": {**train, "00000": ["int32", *train["00000"][1:]]}})


def _flip_in_data(step: Path) -> None:
    """Flip one bit of the last byte of the largest array (header bytes such as a zip time stamp are not data)."""
    with zipfile.ZipFile(step) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = bytearray(step.read_bytes())
    local = 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") + \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")   # the local header
    raw[info.header_offset + local + info.file_size - 1] ^= 0x10
    step.write_bytes(bytes(raw))


DAMAGES = {
    "bit_flip": _flip_in_data,
    "truncate": lambda step: step.write_bytes(step.read_bytes()[: step.stat().st_size // 2]),
    "record": lambda step: _rewrite_record(step, lambda r: json.dumps({**r, "epoch": 1})),
    "wrong_dtype": lambda step: _rewrite_record(step, _as_int32),
    "object_array": _object_array,
}


@pytest.mark.parametrize("damage", [*DAMAGES, "wrong_model"])
def test_a_damaged_backup_is_refused_with_checkpoint_error_before_any_step(tmp_path, saved_backup, damage):
    shutil.copy2(saved_backup[0] / "1.npz", tmp_path / "1.npz")        # the latest only: no fallback
    model, step = saved_backup[1], tmp_path / "1.npz"
    if damage == "wrong_model":
        model = bf.Sequential([bf.layers.Dense(5, input_shape=(4,)), bf.layers.Dense(1)], seed=0)
        model.compile(optimizer="adam", loss="mse", metrics=["mae"], steps_per_execution=3)
    else:
        DAMAGES[damage](step)
    with pytest.raises(CheckpointError, match=str(step)) as raised:
        TrainingCheckpoints(tmp_path).restore(model.get_position().train)
    assert "allow_pickle" not in str(raised.value)
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(CheckpointError):
        child.fit(model, [bf.callbacks.BackupAndRestore(tmp_path)])
    for a, b in zip(weights, model.get_weights()):     # refused before any training step
        np.testing.assert_array_equal(a, b)


def test_double_checkpoint_falls_back_to_the_previous_backup(tmp_path, saved_backup):
    shutil.copytree(saved_backup[0], tmp_path, dirs_exist_ok=True)
    store = TrainingCheckpoints(tmp_path, max_to_keep=2)
    assert store.steps() == [0, 1] and sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "1.npz"]
    (tmp_path / "1.npz").write_bytes(b"")
    position, extra = store.restore(saved_backup[1].get_position().train)
    assert (position.epoch, position.batch, extra["history"]["epoch"]) == (1, 0, [0])


def test_background_backups_leave_the_steps_of_a_synchronous_run(tmp_path):
    """save_freq=1 over 3 epochs of 9 batches: 27 saves, faster than the writer writes them (most replace a
    waiting one), yet the folder holds steps 25 and 26 (double_checkpoint), at batches 8 and 9 of epoch 2."""
    model = child.make_model()
    child.fit(model, [bf.callbacks.BackupAndRestore(tmp_path, save_freq=1, double_checkpoint=True,
                                                    delete_checkpoint=False)])
    store = TrainingCheckpoints(tmp_path, max_to_keep=2)
    assert store.steps() == [25, 26]
    like = model.get_position().train
    assert [(p.epoch, p.batch) for p, _ in (store._restore_step(s, like) for s in (25, 26))] == [(2, 8), (2, 9)]



def test_fit_raising_still_leaves_the_checkpoint_written(tmp_path):
    """ModelCheckpoint saves at batches 2, 5, 8 behind a job put in the writer at batch 2 that ends 0.3 s after
    a callback raises at epoch 0's end: fit's on_train_exit waits for the writes, so the file is there when
    the error arrives."""
    from batchfit._async_writer import WRITER
    model, path, raised = child.make_model(), tmp_path / "w.weights.h5", threading.Event()

    class SlowWriterThenFail(bf.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                WRITER.submit("slow", lambda: (raised.wait(10), time.sleep(0.3)), owner=self, what="a slow job")

        def on_epoch_end(self, epoch, logs=None):
            raised.set()
            raise RuntimeError("stop here")
    saves = bf.callbacks.ModelCheckpoint(str(path), save_weights_only=True, save_freq=3)
    with pytest.raises(RuntimeError, match="stop here"):
        child.fit(model, [SlowWriterThenFail(), saves], accumulate_steps=1)
    assert path.exists()
    fresh = child.make_model()
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):     # the save of batch 8: the epoch's last
        np.testing.assert_array_equal(a, b)


@_SIGINT_REACHES_FIT
def test_ctrl_c_during_validation_stops_at_the_next_validation_batch(tmp_path):
    """SIGINT at validation batch 0 of epoch 0 (3 batches, one per call): validation stops there; the
    backup of epoch 0's end is not made (its logs never reached the callbacks), the next fit redoes it."""
    model, seen = child.make_model(), []
    model.compile(optimizer="adam", loss="mse", metrics=["mae"], steps_per_execution=1)

    class SignalAtValidation(bf.callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            seen.append(batch)
            if batch == 0:
                os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        child.fit(model, [bf.callbacks.BackupAndRestore(tmp_path / "b", save_freq=3), SignalAtValidation()],
                  accumulate_steps=1)
    assert seen == [0]
    saved, extra = TrainingCheckpoints(tmp_path / "b").restore(model.get_position().train)
    assert (saved.epoch, saved.batch, extra["history"]["epoch"]) == (0, 9, [])


def test_arguments_are_checked_as_keras_checks_them():
    with pytest.raises(ValueError, match="backup_dir"):
        bf.callbacks.BackupAndRestore("")
    for bad in ("batch", 0, -3, True, 2.5):
        with pytest.raises(ValueError, match="save_freq"):
            bf.callbacks.BackupAndRestore("/tmp/x", save_freq=bad)
    cb = bf.callbacks.BackupAndRestore("/tmp/x", save_freq=6)         # the calls end at the saves
    assert list(cb.control_batches(epoch=1, first=0, count=9, seen=9)) == [2, 8]   # the fit's batches 12 and 18
    assert list(bf.callbacks.BackupAndRestore("/tmp/x").control_batches(0, 0, 9, 0)) == []


# ----- processes killed with SIGKILL ---------------------------------------------------


def _kill_points(num, rng):
    """Seeded kill points: at train or validation batch hooks, inside checkpoint writes, at random instants."""
    kinds = ["timer", "batch", "file", "val", "folder"]
    points = []
    for i in range(num):
        kind = kinds[i % len(kinds)]
        n = {"timer": 0, "batch": rng.randint(1, 9), "val": rng.randint(1, 3), "file": rng.randint(1, 6),
             "folder": rng.randint(1, 3)}[kind]     # 9 batch hooks, 3 validations, and 2 fsyncs in each of the
        # first saves of a run (a restarted run makes fewer; the writer skips saves that a newer one replaced)
        points.append((kind, n, rng.uniform(0.2, 1.5)))
    return points


def _run_child(backup, out, kill, delay, cache, input="arrays"):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}     # children after the first skip compiling
    process = subprocess.Popen([sys.executable, CHILD, str(backup), str(out), kill, input], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    if kill == "timer":
        process.stdout.readline()                         # "ready": imported, about to fit
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    return process.returncode


def _latest_loads(backup, like):
    """The newest checkpoint, if any, reads back whole (no fallback to an older one)."""
    store = TrainingCheckpoints(backup)
    steps = store.steps()
    if steps:
        store._restore_step(steps[-1], like)
    return len(steps)


@pytest.fixture(scope="module")
def whole_grain():
    """The run never stopped, on a grain MapDataset (child.grain_dataset)."""
    pytest.importorskip("grain")
    model = child.make_model()
    history = child.fit(model, [], "grain")
    return child.leaves(model), child.history_record(history)


@pytest.mark.parametrize("input", ["arrays", "grain"])
def test_sigkill_at_seeded_instants_then_restarts_end_bitwise(tmp_path, input, request):
    """BATCHFIT_KILL_POINTS (default 2) SIGKILLs across training batches, validation batches,
    checkpoint writes (mid-fsync, before and after the rename, in the background writer) and random
    instants; each killed child is restarted until its fit ends, which must be bitwise the run never
    stopped. Shuffled arrays, and a grain MapDataset (a stream resumed at the exact batch); each input
    draws its own kill points from BATCHFIT_KILL_SEED."""
    whole = request.getfixturevalue("whole" if input == "arrays" else "whole_grain")
    rng = random.Random(f"{os.environ.get('BATCHFIT_KILL_SEED', '23')}-{input}")
    points = _kill_points(int(os.environ.get("BATCHFIT_KILL_POINTS", "2")), rng)
    tally, run, backup, out = {}, 0, None, None
    like = child.make_model().get_position().train
    for kind, n, delay in points + [("none", 0, 0.0)]:
        if backup is None:
            run += 1
            backup, out = tmp_path / f"backup{run}", tmp_path / f"out{run}"
        code = _run_child(backup, out, f"{kind}:{n}" if kind != "timer" else kind, delay, tmp_path / "jax_cache",
                          input)
        assert code in (0, -signal.SIGKILL), f"kill point {kind}:{n}: the child failed with {code}"
        if code == -signal.SIGKILL:
            tally[kind] = tally.get(kind, 0) + 1
        _latest_loads(backup, like)                           # no kill leaves a corrupt latest checkpoint
        assert not list(backup.glob("*tmp*")) or code != 0
        if code == 0:                                     # this run is done: it must be the whole run
            with np.load(f"{out}.npz") as arrays:
                leaves = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
            assert_same(leaves, json.loads(Path(f"{out}.json").read_text()), _json_whole(whole))
            backup = None
    print(f"kill tally ({input}): {tally} over {run} runs")
    assert sum(tally.values()) >= min(len(points), 2)


def _json_whole(whole):
    return whole[0], json.loads(json.dumps(whole[1]))      # as the child wrote it (int keys become strings)
