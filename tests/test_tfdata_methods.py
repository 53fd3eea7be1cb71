"""bf.data's tf.data methods against tf.data itself (tests/data/tfdata_reference.json, recorded by
benchmarks/tfdata_record.py with TensorFlow 2.21), their argument errors, and one fit per family.

The fits read the batches back from per-batch losses: a Dense(1) with weights 1 and learning rate 0
predicts sum(x), so each batch loss is mean((sum(x) - y)^2), worked out here in float64."""

import gzip
import importlib.util
import json
import pathlib

import numpy as np
import optax
import pytest

import batchfit as bf
from batchfit.data.dataset import Options, TextLineDataset
from batchfit.data.source import StreamSource, as_source

Dataset = bf.data.Dataset
ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "data" / "tfdata_reference.json").read_text())["pipelines"]


def _recorder():
    spec = importlib.util.spec_from_file_location("tfdata_record", ROOT / "benchmarks" / "tfdata_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _recorder()


@pytest.fixture(scope="module")
def ours():
    return RECORDER.run_all("bf")


# ----- against tf.data -------------------------------------------------------------------

ORDERED = sorted(n for n in REFERENCE if "error" not in REFERENCE[n] and not n.endswith("_multiset"))


@pytest.mark.parametrize("name", ORDERED)
def test_elements_order_dtypes_shapes_and_cardinality_are_tf_datas(ours, name):
    assert ours[name] == REFERENCE[name]


def test_the_recording_covers_the_methods_and_the_pipelines_are_the_recorders():
    assert len(ORDERED) >= 45 and set(REFERENCE) == set(RECORDER.PIPELINES)


@pytest.mark.parametrize("name", ["shuffle_window_multiset", "shuffle_full_multiset", "list_files_shuffled_multiset",
                                  "sample_from_datasets_multiset"])
def test_random_pipelines_give_tf_datas_multiset(ours, name):
    """tf.data's random stream cannot be reproduced: the sorted elements and the cardinality can."""
    assert ours[name] == REFERENCE[name]


def test_a_windowed_shuffle_keeps_tf_datas_window_and_a_shuffled_batch_its_shapes():
    order = [int(v) for v in Dataset.range(20).shuffle(4, seed=7)]
    assert sorted(order) == list(range(20)) and all(v < i + 4 for i, v in enumerate(order))
    batches = list(Dataset.range(10).shuffle(10, seed=1).batch(4))
    reference = REFERENCE["shuffle_batch_multiset"]["elements"]
    assert sorted(b.shape for b in batches) == sorted(tuple(e["shape"]) for e in reference)
    assert sorted(np.concatenate(batches).tolist()) == sorted(v for e in reference for v in e["value"])


def test_sample_from_datasets_follows_its_weights_and_seed():
    a, b = Dataset.range(100), Dataset.range(1000, 1100)
    assert [int(v) for v in Dataset.sample_from_datasets([a, b], weights=[1.0, 0.0], seed=0)] == list(range(100))
    mixed = Dataset.sample_from_datasets([a.repeat(), b.repeat()], weights=[0.8, 0.2], seed=0).take(2000)
    share = np.mean([int(v) < 1000 for v in mixed])
    assert 0.77 < share < 0.83               # binomial sd sqrt(0.8 * 0.2 / 2000) = 0.009: 3.3 sd either side
    fixed = Dataset.sample_from_datasets([a, b], seed=5)          # tf.data: the same draws each iteration ...
    assert [int(v) for v in fixed] == [int(v) for v in fixed]
    fresh = Dataset.sample_from_datasets([a, b], seed=5, rerandomize_each_iteration=True)    # ... unless asked
    assert [int(v) for v in fresh] != [int(v) for v in fresh]


def test_shuffle_autotune_is_refused_by_both():
    assert "buffer_size must be greater than zero" in REFERENCE["shuffle_autotune"]["error"]
    with pytest.raises(ValueError, match="buffer_size must be greater than zero"):
        Dataset.range(4).shuffle(-1)


# ----- the methods' other behaviour and their errors ----------------------------------------

def test_element_spec_reduce_apply_and_options():
    ds = Dataset.from_tensor_slices((np.zeros((5, 3), np.float32), np.arange(5)))
    assert ds.batch(2).element_spec == (bf.data.TensorSpec((None, 3), np.float32),
                                        bf.data.TensorSpec((None,), np.int64))
    assert ds.batch(2, drop_remainder=True).element_spec[0].shape == (2, 3)
    assert Dataset.range(5).reduce(np.int64(0), lambda total, v: total + v) == 0 + 1 + 2 + 3 + 4
    assert [int(v) for v in Dataset.range(6).apply(lambda d: d.shard(2, 1))] == [1, 3, 5]
    options = Options()
    options.deterministic = False
    tuned = Dataset.range(3).with_options(options)
    assert tuned.options().deterministic is False and Dataset.range(3).options().deterministic is None
    assert tuned.batch(2).options().deterministic is False          # options travel downstream, as in tf.data
    with pytest.raises(AttributeError, match="Options has no option 'determinism'"):
        options.determinism = True


@pytest.mark.parametrize("build, error, pattern", [
    (lambda: Dataset.range(5).shard(2, 2), ValueError, r"shard\(\): `index` must be in \[0, num_shards=2\)"),
    (lambda: Dataset.range(5).window(0), ValueError, r"window\(\): `size` must be an integer >= 1; got 0"),
    (lambda: Dataset.zip((Dataset.range(2), [1, 2])), TypeError, r"zip\(\) needs datasets"),
    (lambda: Dataset.range(3).group_by_window(lambda v: v, lambda k, w: w), ValueError, "exactly one of"),
    (lambda: Dataset.range(3).bucket_by_sequence_length(len, [2, 4], [1, 1]), ValueError,
     r"len\(bucket_batch_sizes\) must equal len\(bucket_boundaries\) \+ 1; got 2 sizes for 2 boundaries"),
    (lambda: Dataset.sample_from_datasets([Dataset.range(2)], weights=[-1.0]), ValueError, "non-negative"),
    (lambda: list(Dataset.range(3).map(lambda v: np.arange(v)).padded_batch(3, padded_shapes=[1])), ValueError,
     r"component 0 is int64\[2\], larger than its padded shape \(1,\)"),
    (lambda: list(Dataset.choose_from_datasets([Dataset.range(2)], Dataset.from_tensor_slices([1]))), ValueError,
     r"choice 0 is int32\[\]; each choice must be a scalar integer in \[0, 1\)"),
    (lambda: list(Dataset.range(2).flat_map(lambda v: [v])), TypeError, "must return a bf.data.Dataset"),
    (lambda: list(Dataset.from_tensor_slices([0.5]).unique()), TypeError, "unique\\(\\) takes scalar integers"),
    (lambda: Dataset.list_files("/nonexistent-dir/*.csv"), ValueError, "no files matched"),
    (lambda: TextLineDataset("/nonexistent-dir/a.txt"), FileNotFoundError, "no file '/nonexistent-dir/a.txt'"),
])
def test_bad_arguments_are_named_before_anything_runs(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_text_lines_read_gzip_files_and_a_dataset_of_file_names(tmp_path):
    with gzip.open(tmp_path / "a.txt.gz", "wb") as file:
        file.write(b"1,2\n3,4\r\n")
    lines = TextLineDataset(str(tmp_path / "a.txt.gz"), compression_type="GZIP")
    assert list(lines) == [b"1,2", b"3,4"]
    (tmp_path / "b.txt").write_text("x\ny\n")
    assert list(TextLineDataset(Dataset.list_files(str(tmp_path / "*.txt"), shuffle=False))) == [b"x", b"y"]


# ----- one fit per family ------------------------------------------------------------------

def probe_model(features: int):
    model = bf.Sequential([bf.layers.Dense(1, input_shape=(features,))], seed=0)
    model.set_weights([np.ones((features, 1), np.float32), np.zeros(1, np.float32)])
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    return model


def losses(batches):
    """mean((sum(x) - y)^2) of each (x [B, F], y [B]) batch, float64."""
    return [float(np.mean((np.asarray(x, np.float64).sum(-1) - np.ravel(y)) ** 2)) for x, y in batches]


def fit_losses(dataset, features: int):
    """The per-batch losses of one epoch of fit on `dataset`."""
    return probe_model(features).fit(dataset, epochs=1, verbose=0).batch_history["loss"][0]


def as_xy(v):
    return np.float32([v]), np.float32(v % 3)


def test_fit_on_sources_and_combinations():
    x, y = Dataset.range(6).map(lambda v: np.float32([v])), Dataset.range(6).map(lambda v: np.float32(v % 3))
    zipped = Dataset.zip((x, y)).batch(4)                           # rows (i, i % 3)
    assert fit_losses(zipped, 1) == pytest.approx(losses([([[0], [1], [2], [3]], [0, 1, 2, 0]),
                                                           ([[4], [5]], [1, 2])]), rel=1e-6)
    joined = Dataset.range(2).map(as_xy).concatenate(Dataset.range(4, 6).map(as_xy)).batch(3)
    chosen = Dataset.choose_from_datasets([Dataset.range(2).map(as_xy), Dataset.range(4, 6).map(as_xy)],
                                          Dataset.from_tensor_slices([1, 0, 1, 0])).batch(3)
    assert fit_losses(joined, 1) == pytest.approx(losses([([[0], [1], [4]], [0, 1, 1]), ([[5]], [2])]), rel=1e-6)
    assert fit_losses(chosen, 1) == pytest.approx(losses([([[4], [0], [5]], [1, 0, 2]), ([[1]], [1])]), rel=1e-6)
    one_batch = Dataset.from_tensors((np.float32([[1], [2]]), np.float32([0, 0])))
    assert fit_losses(one_batch, 1) == pytest.approx(losses([([[1], [2]], [0, 0])]), rel=1e-6)     # (1 + 4) / 2
    sampled = Dataset.sample_from_datasets([Dataset.range(3).map(as_xy), Dataset.range(9, 12).map(as_xy)],
                                           weights=[1.0, 0.0], seed=0).batch(3)
    assert fit_losses(sampled, 1) == pytest.approx(losses([([[0], [1], [2]], [0, 1, 2])]), rel=1e-6)


def test_fit_on_selections():
    rows = Dataset.from_tensor_slices((np.arange(10.0, dtype=np.float32).reshape(10, 1), np.zeros(10, np.float32)))
    shards = rows.shard(3, 1).batch(2)                                # rows 1, 4, 7
    assert sorted(float(v) for x, _ in rows.shard(3, 1).shuffle(3, seed=0).batch(3) for v in x.ravel()) == [1, 4, 7]
    assert fit_losses(shards, 1) == pytest.approx(losses([([[1], [4]], [0, 0]), ([[7]], [0])]), rel=1e-6)
    early = Dataset.range(10).take_while(lambda v: v < 3).map(as_xy).batch(2)
    assert fit_losses(early, 1) == pytest.approx(losses([([[0], [1]], [0, 1]), ([[2]], [2])]), rel=1e-6)
    distinct = Dataset.from_tensor_slices([4, 1, 4, 2, 1]).unique().map(as_xy).batch(3)
    assert fit_losses(distinct, 1) == pytest.approx(losses([([[4], [1], [2]], [1, 1, 2])]), rel=1e-6)
    counted = Dataset.range(5, 7).map(as_xy).enumerate().map(lambda i, xy: (xy[0], np.float32(i))).batch(2)
    assert fit_losses(counted, 1) == pytest.approx(losses([([[5], [6]], [0, 1])]), rel=1e-6)


def test_fit_on_padded_bucketed_and_rebatched_sequences():
    sequences = Dataset.range(1, 6).map(lambda n: (np.arange(n, dtype=np.float32), np.float32(n)))
    padded = sequences.padded_batch(2, padded_shapes=([5], []))     # [B, 5] zero-padded
    rows = [np.pad(np.arange(n, dtype=np.float32), (0, 5 - n)) for n in range(1, 6)]
    expected = [(rows[0:2], [1, 2]), (rows[2:4], [3, 4]), (rows[4:], [5])]
    assert fit_losses(padded, 5) == pytest.approx(losses(expected), rel=1e-6)
    assert fit_losses(padded.rebatch(3), 5) == pytest.approx(
        losses([(rows[0:3], [1, 2, 3]), (rows[3:], [4, 5])]), rel=1e-6)
    buckets = sequences.bucket_by_sequence_length(lambda x, y: len(x), [3], [2, 3], padded_shapes=([5], []))
    assert fit_losses(buckets, 5) == pytest.approx(losses([(rows[0:2], [1, 2]), (rows[2:], [3, 4, 5])]), rel=1e-6)
    assert fit_losses(padded.unbatch().batch(5), 5) == pytest.approx(losses([(rows, [1, 2, 3, 4, 5])]), rel=1e-6)
    parity = sequences.group_by_window(lambda x, y: len(x) % 2, lambda key, group: group.padded_batch(
        2, padded_shapes=([5], [])), window_size=2)                 # lengths 1, 3 | 2, 4 | then 5 left over
    expected = [([rows[0], rows[2]], [1, 3]), ([rows[1], rows[3]], [2, 4]), ([rows[4]], [5])]
    assert fit_losses(parity, 5) == pytest.approx(losses(expected), rel=1e-6)


def test_fit_on_windows_of_a_series_and_on_interleaved_files(tmp_path):
    series = Dataset.range(8).map(lambda v: np.float32(v))
    windows = series.window(4, shift=2, drop_remainder=True).flat_map(lambda w: w.batch(4))
    pairs = windows.map(lambda w: (w[:3], w[3])).batch(2)            # 3 values -> the next
    expected = [([[0, 1, 2], [2, 3, 4]], [3, 5]), ([[4, 5, 6]], [7])]
    assert fit_losses(pairs, 3) == pytest.approx(losses(expected), rel=1e-6)
    for name, text in (("a.csv", "1,2\n3,4\n"), ("b.csv", "5,6\n")):
        (tmp_path / name).write_text(text)
    parse = lambda line: (np.float32([line.split(b",")[0]]), np.float32(line.split(b",")[1]))
    files = Dataset.list_files(str(tmp_path / "*.csv"), shuffle=False)
    lines = files.interleave(lambda name: TextLineDataset(name), cycle_length=2).map(parse).batch(2)
    assert fit_losses(lines, 1) == pytest.approx(losses([([[1], [5]], [2, 6]), ([[3]], [4])]), rel=1e-6)


def test_npy_memmaps_stream_row_blocks_without_loading_whole(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    np.save(tmp_path / "y.npy", np.arange(6, dtype=np.float32))
    x, y = (np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in "xy")
    dataset = Dataset.from_tensor_slices((x, y)).batch(4)
    assert isinstance(dataset._input._tensors[0], np.memmap)            # kept as a memmap, not read
    assert isinstance(as_source(dataset), StreamSource)                 # read in blocks of rows, not put on device
    expected = [(np.arange(8.0).reshape(4, 2), [0, 1, 2, 3]), (np.arange(8.0, 12).reshape(2, 2), [4, 5])]
    assert fit_losses(dataset, 2) == pytest.approx(losses(expected), rel=1e-6)
