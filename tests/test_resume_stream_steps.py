"""A training stream read `steps_per_epoch` batches an epoch resumes at the place it had reached.

With steps_per_epoch=k each epoch reads the next k batches of one iterator kept across epochs (Keras's
rule); a pass that runs out ends that epoch early and the next epoch opens a new pass (a reshuffling
Dataset's next order). The Position keeps the stream's place at its batch (data_place: passes begun,
batches read of the last one; data/_stream_place.py), worked out from where each epoch's first batch was
read, not from where the reader (ahead of training) is; a resumed fit puts it back before any step.

backup_child's 72 training rows make a pass of 9 batches of 8. With k=4 the epochs read [4, 4, 1] batches
of pass 1 (it runs out inside epoch 2, ending it early), then [4, 4] of pass 2: the places at the starts
of epochs 0..5 are (0, 0), (1, 4), (1, 8), (1, 0) (ran out), (2, 4), (2, 8), and the b-th batch of epoch 3
is read at (2, b)... With .repeat() no pass ends: epoch e starts at (1, 4e), and epoch 2 reads batch 8 of
the first repetition and batches 0-2 of the second (another order).
"""

import functools
import os
import sys
import time
import warnings

import pytest

import batchfit as bf
import batchfit.checkpoint as checkpoint
from batchfit.checkpoint import TrainingCheckpoints
from batchfit.data._seeds import drawn_seeds
from batchfit.errors import CheckpointError

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402
from test_position import StopAt  # noqa: E402
from test_resume_nested import Recorder, _position, assert_bitwise, rebuilt  # noqa: E402
from test_resume_validation_steps import Batches, stream_of  # noqa: E402

STEPS, EPOCHS = 4, 5
KINDS = ["reshuffled", "repeated", "list", "py_dataset"]
SIZES = {"passes": [4, 4, 1, 4, 4], "repeated": [4, 4, 4, 4, 4]}     # batches of epochs 0..4
MID_EPOCH = {"passes": (2, 3), "repeated": (1, 15)}        # position (3, 3): pass 2's 3rd / 4 * 3 + 3
BOUNDARY = {"passes": (1, 0), "repeated": (1, 12)}         # position (3, 0): pass 1 ran out / 4 * 3
RAN_OUT = "The input ran out of data after"     # pass 1 ends inside epoch 2


def training(kind: str, recorder=None):
    """The 72 training rows as test_resume_validation_steps.stream_of gives them (9 batches a pass)."""
    (x, y), _ = child.data()
    return stream_of(kind, x, y, recorder)


def again(kind, seeds, recorder=None):
    """The training data built again with the drawn `seeds` put back (a Dataset), as a reference reads it."""
    return training(kind, recorder) if seeds is None else rebuilt(training, kind, seeds, recorder)


def fit(data, callbacks=(), model=None, epochs=EPOCHS, **options):
    model = model or child.make_model()            # Dropout, BatchNorm, Adam; calls of 3 steps
    with warnings.catch_warnings():                # Keras warns
        warnings.filterwarnings("ignore", RAN_OUT)
        history = model.fit(data, epochs=epochs, verbose=0, callbacks=list(callbacks), **options)
    return child.leaves(model), child.history_record(history)


@functools.cache
def reference(kind: str):
    """(the drawn seeds, the run never stopped, the rows it mapped in order) of `kind`."""
    data, read = training(kind), Recorder()
    seeds = drawn_seeds(data) if isinstance(data, bf.data.Dataset) else None
    return seeds, fit(again(kind, seeds, read), steps_per_epoch=STEPS), read.rows


class InterruptAtEpochEnd(bf.callbacks.Callback):
    """Ctrl-C (as fit sees it) at the end of epoch `epoch`, after BackupAndRestore saved (epoch + 1, 0)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _pattern(kind):
    return "repeated" if kind == "repeated" else "passes"


# ----- fit resumes bitwise ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_uninterrupted_run_reads_on_across_epochs_and_reshuffles_each_pass(kind):
    seeds, (_, record), rows = reference(kind)
    assert [len(losses) for losses in record["batch_history"]["loss"]] == SIZES[_pattern(kind)]
    if seeds is not None:                          # 17 batches mapped: pass 2 (repetition 2) in another order
        assert sorted(rows[:72]) == sorted(child.data()[0][0].tolist()) and rows[72:80] != rows[:8]


@pytest.mark.parametrize("stop", ["mid-epoch", "epoch boundary"])
@pytest.mark.parametrize("kind", KINDS)
def test_fit_resumes_from_a_backup_bitwise(tmp_path, kind, stop):
    """Ctrl-C after batch 2 of epoch 3 (pass 2), or at the end of epoch 2 (pass 1 ran out after its one batch);
    the restarted job builds its data again (other seeds drawn) and resumes from the backup."""
    seeds, expected, _ = reference(kind)
    backup = tmp_path / "backup"
    if stop == "mid-epoch":
        callbacks, at = [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(3, 2)], (3, 3)
    else:
        callbacks, at = [bf.callbacks.BackupAndRestore(backup), InterruptAtEpochEnd(2)], (3, 0)
    with pytest.raises(KeyboardInterrupt):
        fit(again(kind, seeds), callbacks, steps_per_epoch=STEPS)
    saved, _ = TrainingCheckpoints(backup).restore(child.make_model().get_position().train)
    place = (MID_EPOCH if stop == "mid-epoch" else BOUNDARY)[_pattern(kind)]
    assert (saved.epoch, saved.batch, saved.data_place) == (*at, place)
    resumed = fit(training(kind), [bf.callbacks.BackupAndRestore(backup)], steps_per_epoch=STEPS)
    assert_bitwise(resumed, expected)                    # weights, optimizer, History and batch losses


@pytest.mark.parametrize("kind", KINDS)
def test_set_position_mid_epoch_and_after_fit_reads_on_from_the_place(kind):
    """A position copied out after batch 2 of epoch 1, and one taken after a fit of 2 epochs, continue in a
    fresh model on data built again as the run never stopped."""
    seeds, (weights, record), _ = reference(kind)
    stop, model = StopAt(1, 2), child.make_model()
    fit(again(kind, seeds), [stop], steps_per_epoch=STEPS)
    fit(again(kind, seeds), model=model, epochs=2, steps_per_epoch=STEPS)
    after = model.get_position()
    assert (stop.position.epoch, stop.position.batch, stop.position.data_place) == (1, 3, (1, 7))   # 4 + 3
    assert (after.epoch, after.batch, after.data_place) == (2, 0, (1, 8))
    for position in (stop.position, after):
        resumed = child.make_model()
        resumed.set_position(position)
        got = fit(training(kind), model=resumed, steps_per_epoch=STEPS)
        assert_bitwise((got[0], None), (weights, None))
        for part in ("history", "batch_history"):
            assert got[1][part] == {k: v[position.epoch:] for k, v in record[part].items()}


def test_a_pass_read_to_its_end_at_an_epoch_boundary_opens_the_next_at_the_next_epoch():
    """8 batches, 2 epochs a pass: the position after epoch 1 is at (1, 8), the pass not yet known to have
    ended; the resumed fit finds it ended at epoch 2's first draw and opens pass 2, as the run never stopped."""
    eight = training("list")[:8]
    expected, model = fit(eight, steps_per_epoch=STEPS), child.make_model()
    fit(eight, model=model, epochs=2, steps_per_epoch=STEPS)
    position = model.get_position()
    assert (position.epoch, position.batch, position.data_place) == (2, 0, (1, 8))
    resumed = child.make_model()
    resumed.set_position(position)
    got = fit(eight, model=resumed, steps_per_epoch=STEPS)
    assert [len(losses) for losses in expected[1]["batch_history"]["loss"]] == [4, 4, 4, 4, 4]
    assert_bitwise((got[0], None), (expected[0], None))
    assert got[1]["history"] == {k: v[2:] for k, v in expected[1]["history"].items()}


class CountedBatches(Batches):
    """The 9 batches, counting the reads (the reader runs ahead of training)."""

    reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_the_place_is_that_of_the_batch_trained_not_of_the_reader_ahead():
    """At each call's end (3 steps) and epoch end: the place of the batches trained, while the reader (held
    until it is ahead) has read more."""
    data, found, ahead = CountedBatches(training("list")), [], []

    def at_batch(batch, logs):
        trained = sum(SIZES["passes"][:epoch[0]]) + batch + 1
        deadline = time.monotonic() + 10
        while data.reads <= trained and trained < 17 and time.monotonic() < deadline:
            time.sleep(0.001)
        ahead.append(data.reads > trained or trained == 17)
        found.append((epoch[0], batch + 1, model.get_position().data_place))

    epoch, model = [0], child.make_model()
    track = bf.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epoch.__setitem__(0, e),
                                        on_train_batch_end=at_batch,
                                        on_epoch_end=lambda e, logs: found.append((e + 1, 0, model.get_position().data_place)))
    fit(data, [track], model, steps_per_epoch=STEPS)
    assert found == [(0, 3, (1, 3)), (0, 4, (1, 4)), (1, 0, (1, 4)), (1, 3, (1, 7)), (1, 4, (1, 8)), (2, 0, (1, 8)),
                     (2, 1, (1, 9)), (3, 0, (1, 0)), (3, 3, (2, 3)), (3, 4, (2, 4)), (4, 0, (2, 4)),
                     (4, 3, (2, 7)), (4, 4, (2, 8)), (5, 0, (2, 8))]
    assert all(ahead) and model.get_position().data_place == (2, 8)


def test_shuffled_arrays_with_steps_per_epoch_resume_in_their_order_without_a_seed_given(tmp_path):
    """Arrays with steps_per_epoch are streamed through a Dataset shuffled with fit's seed (a new one each
    fit call without `seed`): the Position carries it (data_seeds), so a backup and a set_position resume
    in the order of the run never stopped, which reads [4, 4, 1] batches of epoch order 0, then order 1."""
    (x, y), _ = child.data()
    options = dict(y=y, batch_size=8, steps_per_epoch=STEPS)
    backup, stop = tmp_path / "backup", StopAt(3, 2)
    with pytest.raises(KeyboardInterrupt):
        fit(x, [bf.callbacks.BackupAndRestore(backup, save_freq=4), stop, child.InterruptAt(3, 2)], **options)
    saved = stop.position
    assert (saved.epoch, saved.batch, saved.data_place) == (3, 3, MID_EPOCH["passes"]) and len(saved.data_seeds) == 1
    expected = fit(x, seed=saved.data_seeds[0], **options)
    assert [len(losses) for losses in expected[1]["batch_history"]["loss"]] == SIZES["passes"]
    assert_bitwise(fit(x, [bf.callbacks.BackupAndRestore(backup)], **options), expected)
    model = child.make_model()
    model.set_position(saved)
    weights, record = fit(x, model=model, **options)
    assert_bitwise((weights, None), (expected[0], None))
    assert record["history"] == {k: v[3:] for k, v in expected[1]["history"].items()}


# ----- refused before any step -----------------------------------------------------------------------

def _counter(steps: list):
    return bf.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))


def test_a_backup_on_other_data_is_refused_before_any_step_and_the_model_is_left_as_it_was(tmp_path):
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        fit(training("list"), [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 2)],
            steps_per_epoch=STEPS)                                  # (1, 3): 7 batches of pass 1 read
    model, steps = child.make_model(), []
    before = child.leaves(model)
    with pytest.raises(ValueError, match=r"In the training data: .*7 batches of pass 0.*now ends after 5"):
        fit(training("list")[:5], [bf.callbacks.BackupAndRestore(backup), _counter(steps)], model,
            steps_per_epoch=STEPS)
    assert steps == []
    assert_bitwise((child.leaves(model), None), (before, None))


def test_a_mid_epoch_position_without_its_place_is_refused_before_any_step():
    """A position written before data_place was kept cannot say where the stream had got to."""
    stop = StopAt(1, 2)
    fit(training("list"), [stop], steps_per_epoch=STEPS)
    model, steps = child.make_model(), []
    model.set_position(stop.position._replace(data_place=None))
    with pytest.raises(ValueError, match=r"batch 3 of epoch 1, but it does not say where this input \(read "
                                         r"steps_per_epoch=4 batches an epoch"):
        fit(training("list"), [_counter(steps)], model, steps_per_epoch=STEPS)
    assert steps == []


# ----- one-shot iterators ----------------------------------------------------------------------------

def _generator(period=9):
    """A one-shot iterator over the 9 batches, once (period 9), or without end, cycling over the first
    `period` of them."""
    batches = training("list")
    if period == 9:
        return iter(batches)
    return (batches[i % period] for i in range(10 ** 6))


@pytest.mark.parametrize("steps, last", [(None, 0), (STEPS, 2)])
def test_a_generator_that_ran_out_runs_out_again_after_a_resume(tmp_path, steps, last):
    """The run never stopped reads the generator to its end (in epoch 0, or epochs 0-2 with steps_per_epoch)
    and stops at the next epoch, which gets no batch. A backup at that epoch's start keeps that it ran
    out, so a resumed fit with a new generator stops there too instead of training on it."""
    backup = tmp_path / "backup"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = fit(_generator(), steps_per_epoch=steps)
    assert len(expected[1]["epoch"]) == last + 1
    assert any(f"ran out of data at epoch {last + 1}; training stops" in str(w.message) for w in caught)
    with pytest.raises(KeyboardInterrupt):
        fit(_generator(), [bf.callbacks.BackupAndRestore(backup), InterruptAtEpochEnd(last)], steps_per_epoch=steps)
    saved, _ = TrainingCheckpoints(backup).restore(child.make_model().get_position().train)
    assert (saved.epoch, saved.batch, saved.data_place) == (last + 1, 0, (1, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(_generator(), [bf.callbacks.BackupAndRestore(backup)], steps_per_epoch=steps)
    assert any(f"ran out of data at epoch {last + 1}; training stops" in str(w.message) for w in caught)
    assert_bitwise(resumed, expected)


def test_a_generator_read_on_at_an_epoch_boundary_warns_and_reads_the_new_one_from_where_it_is(tmp_path):
    """A backup at epoch 2's start after 8 batches of an endless generator: the new generator is read from
    its start, with a warning. A generator that starts over every 8 batches (2 epochs) yields what the run
    never stopped read next, so that run is matched bitwise."""
    backup = tmp_path / "backup"
    expected = fit(_generator(period=8), steps_per_epoch=STEPS)
    with pytest.raises(KeyboardInterrupt):
        fit(_generator(period=8), [bf.callbacks.BackupAndRestore(backup), InterruptAtEpochEnd(1)],
            steps_per_epoch=STEPS)
    with pytest.warns(UserWarning, match=r"after 8 batches of a one-shot iterator .* reads it on from where it is"):
        resumed = fit(_generator(period=8), [bf.callbacks.BackupAndRestore(backup)], steps_per_epoch=STEPS)
    assert_bitwise(resumed, expected)
    model, steps = child.make_model(), []          # a position inside an epoch: refused before any step
    model.set_position(model.get_position()._replace(epoch=1, batch=2, data_place=(1, 6)))
    with pytest.raises(ValueError, match=r"cannot resume at batch 2 of an epoch of this input: a one-shot"):
        fit(_generator(), [_counter(steps)], model, steps_per_epoch=STEPS)
    assert steps == []


def test_a_one_shot_validation_generator_that_ran_out_reports_no_val_after_a_resume(tmp_path):
    """The run never stopped reads the validation generator to its end at epoch 0 and reports no val_* at
    epochs 1 and 2 (Keras warns each time); a run resumed inside epoch 1 with a new generator does the same."""
    (x, y), _ = child.data()
    validation = lambda: iter(training("list")[:3])

    def run(callbacks=(), model=None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fit(x, callbacks, model, epochs=3, y=y, batch_size=8, seed=3, validation_data=validation())
        return got, sum("Your input ran out of data" in str(w.message) for w in caught)

    (expected, warned) = run()
    assert len(expected[1]["history"]["val_loss"]) == 1 and len(expected[1]["history"]["loss"]) == 3
    assert warned == 2
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        run([bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    saved, _ = TrainingCheckpoints(backup).restore(child.make_model().get_position().train)
    assert (saved.epoch, saved.batch, saved.validation_place) == (1, 6, (1, 0))
    resumed, warned = run([bf.callbacks.BackupAndRestore(backup)])
    assert warned == 2
    assert_bitwise(resumed, expected)
    model = child.make_model()
    model.set_position(saved)
    (weights, record), warned = run(model=model)
    assert warned == 2 and record["history"] == {k: v[1:] for k, v in expected[1]["history"].items() if v[1:]}
    assert_bitwise((weights, None), (expected[0], None))


# ----- the checkpoint record -------------------------------------------------------------------------

def test_the_data_place_round_trips_and_an_old_record_without_it_still_loads(tmp_path, monkeypatch):
    position = _position()._replace(validation_place=(1, 0), data_place=(2, 3))
    store = TrainingCheckpoints(tmp_path / "a")
    store.save(position)
    back, _ = store.restore(position.train)
    assert (back.data_place, back.validation_place) == ((2, 3), (1, 0))
    monkeypatch.setattr(checkpoint, "place_record", lambda p: {"validation_place": [1, 0]})   # before data_place
    old = TrainingCheckpoints(tmp_path / "b")
    old.save(position)
    back, _ = old.restore(position.train)
    assert (back.data_place, back.validation_place) == (None, (1, 0))


@pytest.mark.parametrize("bad", [[2], [2, -1], [2.5, 3], [False, 1], "2,3", {"passes": 2}])
def test_a_record_with_a_malformed_data_place_is_refused(tmp_path, monkeypatch, bad):
    position = _position()
    monkeypatch.setattr(checkpoint, "place_record", lambda p: {"validation_place": None, "data_place": bad})
    store = TrainingCheckpoints(tmp_path)
    store.save(position)
    with pytest.raises(CheckpointError, match=r"places \(`data_place`, `validation_place` .* are not numbers"):
        store.restore(position.train)
