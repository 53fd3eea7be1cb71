"""Two more orders a resumed fit reads as its predecessor did: shuffles built inside flat_map / interleave
functions, and a shuffled validation dataset.

A flat_map / interleave step draws one seed when built (carried like a shuffle's, data/_seeds.py); the
seed=None steps its map_func builds for element i of iteration key k take the count-th seed of (that
seed, k, i, count) (data/_drawn.py). fit's validation data keeps its order generation and drawn seeds
in the Position (validation_seed, validation_data_seeds; engine/validation.py). The references are
uninterrupted runs on pipelines built again with the seeds put back (flat_map takes no seed argument).

    python tests/test_resume_nested.py BACKUP_DIR SEEDS_JSON     # the child process of the subprocess test
"""

import doctest
import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import batchfit as bf
import batchfit.checkpoint as checkpoint
from batchfit.checkpoint import TrainingCheckpoints
from batchfit.data import _drawn, _nested
from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
from batchfit.errors import CheckpointError

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402

Dataset = bf.data.Dataset


def _host_pair(a, b):
    return np.asarray(a), b                # not traceable: the pipeline is streamed, not fused


def nested(kind: str):
    """backup_child's 72 training rows as 6 groups of 12, each shuffled (seed=None) inside the function
    ("cached": not shuffled there, cached, then shuffled as a whole)."""
    (x, y), _ = child.data()
    rows = lambda i: Dataset.from_tensor_slices((x[12 * int(i):12 * int(i) + 12], y[12 * int(i):12 * int(i) + 12]))
    group = lambda i: rows(i).shuffle(12)
    groups = Dataset.range(6)
    if kind == "flat_map":
        return groups.flat_map(group).batch(8)
    if kind == "cached":
        return groups.interleave(rows, cycle_length=2).cache().shuffle(72).batch(8)
    return groups.interleave(group, cycle_length=2, num_parallel_calls=2 if kind == "parallel" else None).batch(8)


class Recorder:
    """A host map (streamed, not traced) that notes the rows it maps: the order validation reads them in."""

    def __init__(self):
        self.rows = []

    def __call__(self, a, b):
        a = np.asarray(a)                  # before anything else: a tracer stops here (the map is per row)
        self.rows.append(a.tolist())
        return a, b


def validation(kind: str, recorder=None):
    """backup_child's 24 validation rows shuffled (seed=None, a new order each pass), in batches of 8.

    The validation metrics tell orders apart only by rounding (a few distinct values over 16 orders), so
    the tests also compare the rows a streamed validation pass reads, through `recorder`."""
    _, (vx, vy) = child.data()
    ds = Dataset.from_tensor_slices((vx, vy)).shuffle(24)
    if kind == "streamed":                 # each pass reads another order (the pass number is in the key)
        ds = ds.map(recorder or _host_pair)
    elif kind == "two shuffles":           # another pipeline: two drawn seeds
        ds = ds.map(_host_pair).shuffle(8)
    return ds.batch(8)


def rebuilt(build, kind, seeds, *args):
    ds = build(kind, *args)
    put_drawn_seeds(ds, seeds)
    return ds


def iterations(ds, count=2) -> list:
    """`count` iterations of `ds` (each draws new nested orders), as lists of rows."""
    return [[tuple(np.asarray(part).tolist() for part in batch) for batch in ds] for _ in range(count)]


# ----- seeds inside flat_map / interleave functions ------------------------------------------------

@pytest.mark.parametrize("kind", ["flat_map", "interleave", "parallel"])
def test_a_rebuilt_nested_pipeline_reads_alike_with_the_seeds_put_back(kind):
    first, other, again = nested(kind), nested(kind), nested(kind)
    seeds = drawn_seeds(first)
    assert len(seeds) == 1 and drawn_seeds(again) != seeds          # the flat_map / interleave step's own
    expected = iterations(first)
    assert expected[0] != expected[1]                                # reshuffled each iteration, as tf.data
    rows = lambda iteration: sorted(row for x, _ in iteration for row in x)
    assert rows(expected[0]) == rows(expected[1]) == sorted(child.data()[0][0].tolist())    # the same 72 rows
    assert iterations(other) != expected                             # 12!^6 orders: agreeing would be a bug
    assert put_drawn_seeds(again, seeds) is True
    assert iterations(again) == expected


def test_two_levels_of_flat_map_and_a_nested_sample_from_datasets_read_alike():
    """The inner flat_map is built inside the outer's call (its seed derived), and opens its own calls."""
    def build():
        inner = lambda i, j: Dataset.sample_from_datasets(
            [Dataset.from_tensor_slices(np.arange(4) + 100 * i + 10 * j), Dataset.from_tensor_slices(-np.arange(4))])
        return Dataset.range(3).flat_map(lambda i: Dataset.range(2).flat_map(lambda j: inner(i, j)))
    first, again = build(), build()
    expected = [[int(v) for v in first] for _ in range(2)]
    assert expected[0] != expected[1] and sorted(expected[0]) == sorted(expected[1])
    assert len(expected[0]) == 3 * 2 * 8
    assert put_drawn_seeds(again, drawn_seeds(first)) is True
    assert [[int(v) for v in again] for _ in range(2)] == expected


def test_the_nested_seeds_are_the_numbers_of_step_seed_key_index_and_count():
    """Each element's inner seed=None steps get the BLAKE2b hash of the words (seed, len(key), *key, index, count),
    4 bytes little-endian, shifted to 31 bits as a drawn seed."""
    built = []

    def inner(i):
        ds = Dataset.from_tensor_slices(np.arange(3)).shuffle(3)
        parts = [Dataset.from_tensor_slices(np.arange(2)), Dataset.from_tensor_slices(np.arange(2))]
        built.append((ds.seed, Dataset.sample_from_datasets(parts).seed))     # counts 0 and 1 of this call
        return ds

    ds = Dataset.range(3).flat_map(inner)
    list(ds._elements((4, 1)))
    number = lambda *words: int.from_bytes(hashlib.blake2b(np.array(words, "<u8").tobytes(), digest_size=4).digest(),
                                           "little") >> 1
    assert built == [(number(ds.seed, 2, 4, 1, i, 0), number(ds.seed, 2, 4, 1, i, 1)) for i in range(3)]
    assert all(0 <= s < 2 ** 31 for pair in built for s in pair) and len({s for p in built for s in p}) == 6


def test_seeds_outside_a_nested_call_are_drawn_and_each_thread_keeps_its_own_call():
    barrier, found = threading.Barrier(2), {}

    def call(name, seed):
        with _drawn.derived_seeds(seed, (0,), 0):
            barrier.wait()                       # both calls are open at once, on two threads
            found[name] = [_drawn.fresh_seed() for _ in range(3)]
            barrier.wait()

    threads = [threading.Thread(target=call, args=(name, seed)) for name, seed in (("a", 1), ("b", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, seed in (("a", 1), ("b", 2)):
        with _drawn.derived_seeds(seed, (0,), 0):
            assert found[name] == [_drawn.fresh_seed() for _ in range(3)]
    assert found["a"] != found["b"]
    assert len({Dataset.range(3).shuffle(3).seed for _ in range(4)}) == 4     # top level: drawn, not derived


def test_text_lines_carry_no_seed_and_the_doctests_hold(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\n")
    assert drawn_seeds(bf.data.TextLineDataset(str(tmp_path / "a.txt"))) == ()
    for module in (_drawn, _nested):
        result = doctest.testmod(module)
        assert result.attempted >= 3 and result.failed == 0


def test_a_cache_after_a_flat_map_is_refused_only_once_its_function_has_drawn_a_seed():
    """fit reads a first batch before it puts seeds back: by then a function that shuffles has drawn."""
    (x, y), _ = child.data()
    plain = lambda: Dataset.range(6).flat_map(lambda i: Dataset.from_tensor_slices(x[12 * i:12 * i + 12])).cache()
    shuffled = lambda: Dataset.range(6).flat_map(
        lambda i: Dataset.from_tensor_slices(x[12 * i:12 * i + 12]).shuffle(12)).cache()
    for build, refused in ((plain, False), (shuffled, True)):
        first, again = build(), build()
        next(iter(again))
        assert again._input.derives is refused
        if refused:
            with pytest.raises(ValueError, match=r"caches after a shuffle\(seed=None\) step \(or a flat_map"):
                put_drawn_seeds(again, drawn_seeds(first))
        else:
            assert put_drawn_seeds(again, drawn_seeds(first)) is True


# ----- fit resumes both orders ---------------------------------------------------------------------

def fit(ds, val, callbacks, model=None, epochs=2):
    model = model or child.make_model()              # Dropout, BatchNorm; calls of 3 steps
    history = model.fit(ds, validation_data=val, epochs=epochs, verbose=0, callbacks=callbacks)
    return child.leaves(model), child.history_record(history)


def assert_bitwise(got, expected):
    for a, b in zip(got[0], expected[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[1] == expected[1]                       # every float of History (val_* too) and batch_history


@pytest.mark.parametrize("kind, val_kind", [("flat_map", "fused"), ("parallel", "streamed")])
def test_fit_resumes_nested_shuffles_and_shuffled_validation_bitwise(tmp_path, kind, val_kind):
    backup = tmp_path / "backup"
    ds, val = nested(kind), validation(val_kind)
    with pytest.raises(KeyboardInterrupt):
        fit(ds, val, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    seeds, val_seeds = drawn_seeds(ds), drawn_seeds(val)
    read, read_by_reference = Recorder(), Recorder()
    again, val_again = nested(kind), validation(val_kind, read)      # the restarted job's: other seeds drawn
    assert drawn_seeds(again) != seeds and drawn_seeds(val_again) != val_seeds
    resumed = fit(again, val_again, [bf.callbacks.BackupAndRestore(backup)])
    assert drawn_seeds(again) == seeds and drawn_seeds(val_again) == val_seeds
    reference = fit(rebuilt(nested, kind, seeds), rebuilt(validation, val_kind, val_seeds, read_by_reference), [])
    assert len(reference[1]["history"]["val_loss"]) == 2
    assert_bitwise(resumed, reference)
    assert_same_last_pass(read, read_by_reference, streamed=val_kind == "streamed")


def test_fit_resumes_a_cache_after_an_interleave_without_nested_shuffles(tmp_path):
    """The interleave's seed is carried, the cache (its order the same for every key) is not refused."""
    backup = tmp_path / "backup"
    ds = nested("cached")
    with pytest.raises(KeyboardInterrupt):
        fit(ds, None, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    again = nested("cached")
    resumed = fit(again, None, [bf.callbacks.BackupAndRestore(backup)])
    assert drawn_seeds(again) == drawn_seeds(ds) and len(drawn_seeds(ds)) == 2      # the shuffle and interleave
    assert_bitwise(resumed, fit(rebuilt(nested, "cached", drawn_seeds(ds)), None, []))


def assert_same_last_pass(read, read_by_reference, streamed: bool):
    """The last validation pass (epoch 1's) read the 24 rows in the order of the uninterrupted run's."""
    if not streamed:                       # a fused dataset is not mapped on the host: nothing recorded
        assert read.rows == read_by_reference.rows == []
        return
    last, expected = read.rows[-24:], read_by_reference.rows[-24:]
    assert last == expected and sorted(last) == sorted(child.data()[1][0].tolist())
    assert read_by_reference.rows[-48:-24] != expected          # epoch 0's pass read another order


def test_the_same_dataset_objects_resume_in_the_generation_they_were_read_in(tmp_path):
    """Fit again in the same process (Ctrl-C caught): each fit call reads a Dataset in its next generation (new
    orders); the position's validation_seed puts the validation data back in the interrupted call's."""
    backup, read, read_by_reference = tmp_path / "backup", Recorder(), Recorder()
    ds, val = nested("flat_map"), validation("streamed", read)
    with pytest.raises(KeyboardInterrupt):
        fit(ds, val, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    resumed = fit(ds, val, [bf.callbacks.BackupAndRestore(backup)])
    assert val._generation == 2                    # the resumed call was the second to read it
    reference = fit(rebuilt(nested, "flat_map", drawn_seeds(ds)),
                    rebuilt(validation, "streamed", drawn_seeds(val), read_by_reference), [])
    assert_bitwise(resumed, reference)
    assert_same_last_pass(read, read_by_reference, streamed=True)


def test_set_position_carries_the_validation_order():
    """get_position after epoch 0 (validation read once), set_position into a fresh model, fit on rebuilt data."""
    ds, val = nested("interleave"), validation("streamed")
    model = child.make_model()
    model.fit(ds, validation_data=val, epochs=1, verbose=0)
    position = model.get_position()
    assert (position.validation_seed, position.validation_data_seeds) == (0, drawn_seeds(val))
    resumed = child.make_model()
    resumed.set_position(position)
    read, read_by_reference = Recorder(), Recorder()
    history = resumed.fit(nested("interleave"), validation_data=validation("streamed", read), epochs=2, verbose=0)
    reference = fit(rebuilt(nested, "interleave", drawn_seeds(ds)),
                    rebuilt(validation, "streamed", drawn_seeds(val), read_by_reference), [])
    assert_bitwise((child.leaves(resumed), None), (reference[0], None))
    assert_same_last_pass(read, read_by_reference, streamed=True)
    assert history.history == {k: v[1:] for k, v in reference[1]["history"].items()}    # val_loss at pass 1 too


def test_a_backup_with_another_validation_pipeline_is_refused_before_any_step(tmp_path):
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        fit(nested("flat_map"), validation("streamed"),
            [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    model, steps = child.make_model(), []
    before = child.leaves(model)
    counter = bf.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    with pytest.raises(ValueError, match=r"In the validation data: .*drew 1 shuffle seed\(s\).*has 2 such step"):
        fit(nested("flat_map"), validation("two shuffles"), [bf.callbacks.BackupAndRestore(backup), counter], model)
    assert steps == []
    assert_bitwise((child.leaves(model), None), (before, None))


# ----- the checkpoint record -----------------------------------------------------------------------

def _position():
    model = child.make_model()
    (x, y), _ = child.data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model.get_position()


def test_the_validation_seeds_round_trip_and_old_records_still_load(tmp_path, monkeypatch):
    position = _position()._replace(data_seeds=(1, 2), validation_seed=3, validation_data_seeds=(4, 5, 6))
    store = TrainingCheckpoints(tmp_path / "a")
    store.save(position)
    back, _ = store.restore(position.train)
    assert (back.data_seeds, back.validation_seed, back.validation_data_seeds) == ((1, 2), 3, (4, 5, 6))
    monkeypatch.setattr(checkpoint, "seeds_record", lambda p: {"data_seeds": [7]})   # a record from before
    old = TrainingCheckpoints(tmp_path / "b")
    old.save(position)
    back, _ = old.restore(position.train)
    assert (back.data_seeds, back.validation_seed, back.validation_data_seeds) == ((7,), None, None)


@pytest.mark.parametrize("bad", [{"validation_seed": "3"}, {"validation_data_seeds": [1.5]},
                                 {"validation_seed": True}, {"data_seeds": None}])
def test_a_record_with_malformed_seeds_is_refused(tmp_path, monkeypatch, bad):
    position = _position()
    monkeypatch.setattr(checkpoint, "seeds_record", lambda p: bad)
    store = TrainingCheckpoints(tmp_path)
    store.save(position)
    with pytest.raises(CheckpointError, match=r"data seeds .* are not numbers"):
        store.restore(position.train)


# ----- a new process ---------------------------------------------------------------------------------

def test_a_new_process_stopped_by_ctrl_c_resumes_bitwise(tmp_path):
    """The child trains on an interleave with nested shuffles and a shuffled streamed validation dataset, and
    is stopped by a real SIGINT; this process builds both again (other seeds) and resumes from its backup."""
    backup, record = tmp_path / "backup", tmp_path / "seeds.json"
    done = subprocess.run([sys.executable, __file__, str(backup), str(record)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    seeds, val_seeds = (tuple(s) for s in json.loads(record.read_text()))
    read, read_by_reference = Recorder(), Recorder()
    again, val_again = nested("parallel"), validation("streamed", read)
    resumed = fit(again, val_again, [bf.callbacks.BackupAndRestore(backup)])
    assert (drawn_seeds(again), drawn_seeds(val_again)) == (seeds, val_seeds)
    reference = fit(rebuilt(nested, "parallel", seeds), rebuilt(validation, "streamed", val_seeds, read_by_reference),
                    [])
    assert_bitwise(resumed, reference)
    assert_same_last_pass(read, read_by_reference, streamed=True)


def _child_main(backup, record):
    ds, val = nested("parallel"), validation("streamed")
    with open(record, "w") as f:
        json.dump([list(drawn_seeds(ds)), list(drawn_seeds(val))], f)
    try:
        fit(ds, val, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5, signal_it=True)])
    except KeyboardInterrupt:
        return
    raise SystemExit("the child's fit was not interrupted")


if __name__ == "__main__":
    _child_main(*sys.argv[1:3])
