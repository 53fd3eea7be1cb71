"""A validation stream read `validation_steps` batches an epoch resumes at the place it had reached.

With validation_steps=k, each epoch's validation reads the next k batches of one iterator kept across
epochs (as Keras's cached eval iterator does); a pass that runs out ends that validation early and the
next opens a new pass (a reshuffling Dataset's next order). The Position keeps that place at its epoch's
start (validation_place: passes begun, batches read of the last one; engine/validation.py) and a resumed
fit skips the batches read before its first validation, so History's val_* equal the uninterrupted run's.

backup_child's data: 9 training batches of 8 an epoch, 24 validation rows in 3 batches of 8. With k=2 the
validations of a 3-batch pass read [b0 b1], [b2] (the pass runs out), then [b0 b1] of the next pass...:
the places at epochs 0..4 are (0, 0), (1, 2), (1, 0), (2, 2), (2, 0). With .repeat() no pass ends: the
validations cross the repetitions, the place at epoch e is (1, 2e).
"""

import doctest
import itertools
import os
import sys
import warnings

import numpy as np
import pytest

import batchfit as bf
import batchfit.checkpoint as checkpoint
from batchfit.callbacks.backup import _capture
from batchfit.checkpoint import TrainingCheckpoints
from batchfit.data import _stream_place
from batchfit.data._seeds import drawn_seeds
from batchfit.data.prefetch import Prefetcher, stoppable
from batchfit.data.source import validation_source
from batchfit.errors import CheckpointError

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402
from test_position import StopAt  # noqa: E402
from test_resume_nested import Recorder, _host_pair, _position, assert_bitwise, rebuilt  # noqa: E402

STEPS = 2
THREE_BATCHES = [(0, 0), (1, 2), (1, 0), (2, 2), (2, 0)]         # the places at the start of epochs 0 .. 4
PLACES = {"reshuffled": THREE_BATCHES, "list": THREE_BATCHES, "py_dataset": THREE_BATCHES,
          "repeated": [(0, 0), (1, 2), (1, 4), (1, 6), (1, 8)]}


class Batches(bf.utils.PyDataset):
    """The 3 validation batches by index."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def stream_of(kind: str, x, y, recorder=None):
    """Rows x, y in batches of 8: shuffled (seed=None: each pass another order) and mapped on the host through
    `recorder` ("reshuffled"), the same repeated without end ("repeated"), or the batches in order in a list
    ("list") or a PyDataset ("py_dataset")."""
    if kind in ("list", "py_dataset"):
        batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]
        return batches if kind == "list" else Batches(batches)
    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).map(recorder or _host_pair).batch(8)
    return ds.repeat() if kind == "repeated" else ds


def validation(kind: str, recorder=None):
    """The 24 validation rows as `stream_of` gives them (3 batches a pass)."""
    _, (vx, vy) = child.data()
    return stream_of(kind, vx, vy, recorder)


def again(kind, seeds, recorder=None):
    """The validation data built again (other seeds drawn), or with `seeds` put back (a reference)."""
    return validation(kind, recorder) if seeds is None else rebuilt(validation, kind, seeds, recorder)


def fit(val, callbacks=(), model=None, epochs=4):
    model = model or child.make_model()            # Dropout, BatchNorm, Adam; calls of 3 steps
    (x, y), _ = child.data()
    with warnings.catch_warnings():                # a pass that runs out inside a validation warns, as in Keras
        warnings.filterwarnings("ignore", "(The|Your) input ran out of data")
        history = model.fit(x, y, batch_size=8, epochs=epochs, seed=3, verbose=0, validation_data=val,
                            validation_steps=STEPS, callbacks=list(callbacks))
    return child.leaves(model), child.history_record(history)


def reads(source, epochs: int) -> list:
    """Each epoch's validation batches (x rows as lists) read from `source` as fit reads them."""
    out = []
    for _ in range(epochs):
        feed = source.feed([source.next_key()], 1)
        out.append([np.asarray(piece.data.x).tolist() for piece in feed.epoch()])
        feed.close()
    return out


# ----- the place of a stream -------------------------------------------------------------------------

def test_the_doctest_holds():
    with warnings.catch_warnings():                # the doctest's pass 0 runs out inside an epoch
        warnings.simplefilter("ignore")
        assert doctest.testmod(_stream_place).failed == 0


def test_a_stoppable_iterator_reads_on_in_a_second_worker_after_the_first_closed():
    """As a validation with validation_steps reads on the pass the last one's (closed) worker began."""
    numbers = stoppable(iter(range(6)))
    first = Prefetcher(lambda: itertools.islice(numbers, 2))
    assert list(first) == [0, 1]
    first.close()
    assert list(Prefetcher(lambda: itertools.islice(numbers, 2))) == [2, 3]    # not Stopped


@pytest.mark.parametrize("kind", ["reshuffled", "repeated", "list", "py_dataset"])
def test_the_place_after_each_epoch_and_a_source_put_there_reads_on_alike(kind):
    options = dict(batch_size=None, steps=STEPS, allow_nonfinite=False)
    val = validation(kind)
    seeds = drawn_seeds(val) if isinstance(val, bf.data.Dataset) else None
    source = validation_source(val, **options)
    places, batches = [source.place()], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            batches += reads(source, 1)
            places.append(source.place())
        assert places == PLACES[kind]
        for epoch in range(1, 4):                  # a source built again, put at epoch `epoch`'s place
            fresh = validation_source(again(kind, seeds), **options)
            fresh.put_place(places[epoch])
            assert reads(fresh, 4 - epoch) == batches[epoch:]
    assert [len(b) for b in batches] == ([2, 2, 2, 2] if kind == "repeated" else [2, 1, 2, 1])
    if seeds is not None:                          # each pass (repetition) reads another order: its first batch
        assert (batches[1][1] if kind == "repeated" else batches[2][0]) != batches[0][0]


@pytest.mark.parametrize("place", [(0, 3), (-1, 0), (2, -1)])
def test_a_place_no_stream_reaches_is_refused(place):
    source = validation_source(validation("list"), batch_size=None, steps=STEPS, allow_nonfinite=False)
    with pytest.raises(ValueError, match=r"\(passes begun, batches read of the last one\); got "):
        source.put_place(place)


# ----- fit resumes bitwise ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, epoch, batch", [("reshuffled", 3, 4), ("repeated", 2, 5), ("list", 1, 5),
                                                ("py_dataset", 3, 4)])
def test_fit_resumes_from_a_backup_with_the_validation_place(tmp_path, kind, epoch, batch):
    """Ctrl-C after batch `batch` of `epoch` (the end of a compiled call: save_freq=4 cuts them); the restarted
    job builds its data again (other seeds drawn) and resumes from the backup. The reference is an
    uninterrupted run on data with the saved seeds."""
    backup, read, read_by_reference = tmp_path / "backup", Recorder(), Recorder()
    val = validation(kind)
    with pytest.raises(KeyboardInterrupt):
        fit(val, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(epoch, batch)])
    saved, _ = TrainingCheckpoints(backup).restore(child.make_model().get_position().train)
    assert (saved.epoch, saved.validation_place) == (epoch, PLACES[kind][epoch])
    seeds = drawn_seeds(val) if isinstance(val, bf.data.Dataset) else None
    resumed = fit(again(kind, None, read), [bf.callbacks.BackupAndRestore(backup)])
    reference = fit(again(kind, seeds, read_by_reference))
    assert len(reference[1]["history"]["val_loss"]) == 4
    assert_bitwise(resumed, reference)                         # weights, optimizer, History with val_*
    if seeds is not None:                                      # the rows the last validations read, in order
        assert read.rows[-24:] == read_by_reference.rows[-24:]


def test_set_position_mid_epoch_and_after_fit_reads_on_from_the_place():
    """A position copied out after batch 5 of epoch 3 into a fresh model, and one taken after a fit of 2
    epochs, continue on rebuilt data as the uninterrupted run of 4 epochs."""
    val, stop = validation("reshuffled"), StopAt(3, 5)
    fit(val, [stop])
    assert stop.position.validation_place == (2, 2)
    model = child.make_model()
    fit(again("reshuffled", drawn_seeds(val)), model=model, epochs=2)
    after = model.get_position()
    assert (after.epoch, after.batch, after.validation_place) == (2, 0, (1, 0))
    reference = fit(again("reshuffled", drawn_seeds(val)))
    for position, first in ((stop.position, 3), (after, 2)):
        resumed = child.make_model()
        resumed.set_position(position)
        got = fit(again("reshuffled", None), model=resumed)
        assert_bitwise((got[0], None), (reference[0], None))
        for part in ("history", "batch_history"):
            assert got[1][part] == {k: v[first:] for k, v in reference[1][part].items()}


class CopiedEarlyMadeLate(bf.callbacks.Callback):
    """Copies the position at epoch 1's first batch hook as BackupAndRestore does (the writer thread makes it
    later) and makes it at epoch 1's end, after validation 1 read on."""

    def __init__(self):
        super().__init__()
        self.epoch = self.read = self.made = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and self.read is None:
            self.read = _capture(self.model)[0]

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.made = self.read()


def test_a_position_made_after_a_later_validation_keeps_the_place_at_its_epochs_start():
    model, late = child.make_model(), CopiedEarlyMadeLate()
    fit(validation("list"), [late], model=model, epochs=2)
    assert (late.made.epoch, late.made.validation_place) == (1, PLACES["list"][1])       # (1, 2)
    assert model.get_position().validation_place == PLACES["list"][2]                    # read on: (1, 0)


def test_a_one_shot_validation_generator_resumes_only_from_its_start(tmp_path):
    """A generator cannot be read again from a place: a backup taken before any validation resumes
    bitwise; one taken after a validation read from it is refused before any step."""
    generator = lambda: itertools.chain.from_iterable(itertools.repeat(validation("list"), 3))   # 9 batches
    for epoch, batch in ((0, 3), (1, 5)):          # ends of compiled calls (save_freq=4 cuts them)
        backup = tmp_path / f"backup{epoch}"
        with pytest.raises(KeyboardInterrupt):
            fit(generator(), [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(epoch, batch)])
    assert_bitwise(fit(generator(), [bf.callbacks.BackupAndRestore(tmp_path / "backup0")]), fit(generator()))
    model, steps = child.make_model(), []
    before = child.leaves(model)
    counter = bf.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    with pytest.raises(ValueError, match=r"In the validation data: .*one-shot iterator.*read again"):
        fit(generator(), [bf.callbacks.BackupAndRestore(tmp_path / "backup1"), counter], model)
    assert steps == []
    assert_bitwise((child.leaves(model), None), (before, None))


def test_a_validation_stream_that_now_ends_sooner_is_refused():
    position = child.make_model().get_position()._replace(validation_place=(1, 4))
    model = child.make_model()
    model.set_position(position)
    with pytest.raises(ValueError, match=r"In the validation data: .*4 batches of pass 0.*ends after 3"):
        fit(validation("list"), model=model)


# ----- the checkpoint record -------------------------------------------------------------------------

def test_the_place_round_trips_and_an_old_record_without_it_still_loads(tmp_path, monkeypatch):
    position = _position()._replace(validation_seed=0, validation_data_seeds=(), validation_place=(2, 6))
    store = TrainingCheckpoints(tmp_path / "a")
    store.save(position)
    assert store.restore(position.train)[0].validation_place == (2, 6)
    monkeypatch.setattr(checkpoint, "place_record", lambda p: {})       # a record written before the field
    old = TrainingCheckpoints(tmp_path / "b")
    old.save(position)
    back, _ = old.restore(position.train)
    assert back.validation_place is None and back.validation_seed == 0


@pytest.mark.parametrize("bad", [[1], [1, -1], [1.5, 2], [True, 0], "1,2", {"passes": 1}])
def test_a_record_with_a_malformed_place_is_refused(tmp_path, monkeypatch, bad):
    position = _position()
    monkeypatch.setattr(checkpoint, "place_record", lambda p: {"validation_place": bad})
    store = TrainingCheckpoints(tmp_path)
    store.save(position)
    with pytest.raises(CheckpointError, match=r"`validation_place` \(\[passes, batches\]\).* are not numbers"):
        store.restore(position.train)
