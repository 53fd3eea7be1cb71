"""A bf.data.Dataset with shuffle(seed=None) resumes in the order of the run that saved the backup.

The restarted job builds its dataset again and draws other seeds; the Position carries the seeds the
saving run drew (data/_seeds.py) and fit puts them back, so the resumed run ends bitwise where the run
that was never stopped ends. The reference run is built with those seeds given explicitly.

    python tests/test_resume_seed.py BACKUP_DIR SEEDS_JSON     # the child process of the subprocess test
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import batchfit as bf
from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
from batchfit.engine.state import Position

sys.path.insert(0, os.path.dirname(__file__))
import backup_child as child  # noqa: E402

_CARRIED = pytest.mark.skipif("data_seeds" not in Position._fields,
                              reason="needs Position.data_seeds: the lead's diff to engine/state.py, engine/loop.py, "
                                     "model.py and data/source.py (issue 23, h3's report)")


def _host_double(a, b):
    return np.asarray(a) * 2.0, b          # not traceable: the pipeline is streamed, not fused


def pipeline(kind: str, seeds=(None, None)):
    """The 72 training rows of backup_child, shuffled with `seeds` (None: drawn), mapped, in batches of 8."""
    (x, y), _ = child.data()
    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(72, seed=seeds[0])
    if kind == "fused":                     # arrays + shuffle + batch: fit runs it on the device
        return ds.map(lambda a, b: (a * 2.0, b)).batch(8)
    ds = ds.map(_host_double)
    if kind == "two shuffles":              # the second with a window of 16 rows
        ds = ds.shuffle(16, seed=seeds[1])
    return ds.batch(8)


def explicit(kind: str, seeds: tuple):
    """The pipeline with `seeds` (as drawn_seeds lists them: outermost first) given in the code."""
    return pipeline(kind, seeds[::-1] if kind == "two shuffles" else (seeds[0], None))


def batches(ds) -> list:
    return [tuple(np.asarray(part).tolist() for part in batch) for batch in ds]


# ----- the seeds of a pipeline ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fused", "streamed", "two shuffles"])
def test_a_rebuilt_pipeline_reads_in_the_order_of_the_seeds_put_back(kind):
    """Each comparison is of a dataset's first iteration (each iteration reshuffles)."""
    first, other, again = pipeline(kind), pipeline(kind), pipeline(kind)
    seeds, expected = drawn_seeds(first), batches(first)
    assert len(seeds) == (2 if kind == "two shuffles" else 1) and drawn_seeds(again) != seeds
    assert batches(other) != expected                  # 72! orders: two draws that agree would be a bug
    assert put_drawn_seeds(again, seeds) is True and drawn_seeds(again) == seeds
    assert put_drawn_seeds(again, seeds) is False      # nothing to change the second time
    assert batches(again) == expected == batches(explicit(kind, seeds))   # as if given explicitly


def test_sample_from_datasets_with_a_drawn_seed_is_carried_too():
    parts = [bf.data.Dataset.from_tensor_slices(np.arange(10 * i, 10 * i + 10)) for i in range(2)]
    first, again = (bf.data.Dataset.sample_from_datasets(parts).batch(4) for _ in range(2))
    seeds, expected = drawn_seeds(first), [b.tolist() for b in first]
    assert len(seeds) == 1 and drawn_seeds(again) != seeds
    assert put_drawn_seeds(again, seeds) is True
    assert [b.tolist() for b in again] == expected
    assert drawn_seeds(bf.data.Dataset.sample_from_datasets(parts, seed=3)) == ()   # given in the code


def test_seeds_given_in_the_code_are_not_carried_and_not_overwritten():
    ds = pipeline("two shuffles", seeds=(5, None))
    drawn = drawn_seeds(ds)
    assert len(drawn) == 1 and ds._input.seed == drawn[0]        # the outer, drawn shuffle only
    put_drawn_seeds(ds, (123,))
    assert ds._input.seed == 123 and ds._input._input._input.seed == 5


def test_another_pipeline_or_a_cache_after_the_shuffle_is_refused():
    with pytest.raises(ValueError, match=r"drew 2 shuffle seed\(s\).*this dataset has 1 such step"):
        put_drawn_seeds(pipeline("streamed"), (1, 2))
    (x, y), _ = child.data()
    cached = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(72).cache().batch(8)
    with pytest.raises(ValueError, match=r"caches after a shuffle\(seed=None\).*cache\(\) before shuffling"):
        put_drawn_seeds(cached, (drawn_seeds(cached)[0] + 1,))


# ----- fit resumes in the saved order ------------------------------------------------------------

def fit(ds, callbacks):
    model = child.make_model()                    # Dropout, BatchNorm; calls of 3 steps
    history = model.fit(ds, epochs=2, verbose=0, callbacks=callbacks)
    return child.leaves(model), child.history_record(history)


def interrupted(kind, backup):
    """Train on a pipeline with drawn seeds until Ctrl-C after batch 5 of epoch 1; returns its seeds."""
    ds = pipeline(kind)
    with pytest.raises(KeyboardInterrupt):
        fit(ds, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    return drawn_seeds(ds)


def assert_bitwise(got, expected):
    for a, b in zip(got[0], expected[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[1] == expected[1]                  # every float of History and batch_history


@_CARRIED
@pytest.mark.parametrize("kind", ["fused", "streamed", "two shuffles"])
def test_a_new_dataset_object_resumes_bitwise_in_the_saved_order(tmp_path, kind):
    backup = tmp_path / "backup"
    seeds = interrupted(kind, backup)
    rebuilt = pipeline(kind)                       # the restarted job's dataset: other seeds drawn
    assert drawn_seeds(rebuilt) != seeds
    resumed = fit(rebuilt, [bf.callbacks.BackupAndRestore(backup)])
    assert drawn_seeds(rebuilt) == seeds
    assert_bitwise(resumed, fit(explicit(kind, seeds), []))
    assert not backup.exists()


@_CARRIED
def test_set_position_carries_the_drawn_seeds_too():
    """get_position after epoch 0 on one dataset object, set_position into a fresh model, fit on a rebuilt one."""
    first = pipeline("streamed")
    model = child.make_model()
    model.fit(first, epochs=1, verbose=0)
    position = model.get_position()
    assert position.data_seeds == drawn_seeds(first)
    resumed = child.make_model()
    resumed.set_position(position)
    history = resumed.fit(pipeline("streamed"), epochs=2, verbose=0)
    reference = fit(explicit("streamed", drawn_seeds(first)), [])
    assert_bitwise((child.leaves(resumed), None), (reference[0], None))
    assert history.history["loss"] == reference[1]["history"]["loss"][1:]


@_CARRIED
def test_a_backup_of_another_pipeline_is_refused_before_any_step(tmp_path):
    backup = tmp_path / "backup"
    interrupted("two shuffles", backup)
    model, steps = child.make_model(), []
    before = child.leaves(model)
    counter = bf.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    with pytest.raises(ValueError, match=r"drew 2 shuffle seed\(s\).*has 1 such step"):
        model.fit(pipeline("streamed"), epochs=2, verbose=0, callbacks=[bf.callbacks.BackupAndRestore(backup), counter])
    assert steps == []
    assert_bitwise((child.leaves(model), None), (before, None))


@_CARRIED
def test_a_new_process_resumes_bitwise_in_the_order_its_predecessor_drew(tmp_path):
    """The child trains on a pipeline with two drawn seeds and is stopped by Ctrl-C; this process builds the
    pipeline again (other seeds) and resumes from the child's backup."""
    backup, record = tmp_path / "backup", tmp_path / "seeds.json"
    done = subprocess.run([sys.executable, __file__, str(backup), str(record)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    seeds = tuple(json.loads(record.read_text()))
    rebuilt = pipeline("two shuffles")
    assert len(seeds) == 2 and drawn_seeds(rebuilt) != seeds
    resumed = fit(rebuilt, [bf.callbacks.BackupAndRestore(backup)])
    assert_bitwise(resumed, fit(explicit("two shuffles", seeds), []))


def _child_main(backup, record):
    ds = pipeline("two shuffles")
    with open(record, "w") as f:
        json.dump(list(drawn_seeds(ds)), f)
    try:
        fit(ds, [bf.callbacks.BackupAndRestore(backup, save_freq=4), child.InterruptAt(1, 5)])
    except KeyboardInterrupt:
        return
    raise SystemExit("the child's fit was not interrupted")


if __name__ == "__main__":
    _child_main(*sys.argv[1:3])
