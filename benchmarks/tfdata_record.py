"""Record what tf.data gives for a fixed list of pipelines, so the tests can hold bf.data to it.

    python benchmarks/tfdata_record.py            # needs TensorFlow (not a batchfit dependency)
    python benchmarks/tfdata_record.py --check    # bf.data against the recording: JSON summary

Each pipeline in PIPELINES is a function `build(D, lib)` written once for both libraries: `D` is
`tf.data.Dataset` or `bf.data.Dataset`, `lib` a namespace of the few other names that differ
(arange, TensorSpec, dtypes, TextLineDataset, the folder of the text files). The recording holds,
per pipeline, every element (values, dtypes and shapes), the cardinality, and for seeded shuffles
the sorted elements only: tf.data's random stream cannot be reproduced, so the tests compare the
multiset and check the window property instead. Errors are recorded as {"error": message}.
Output: tests/data/tfdata_reference.json (plain JSON, no pickle).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import types

import numpy as np

REFERENCE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "tfdata_reference.json"
TEXT_FILES = {"a.txt": "alpha\nbeta\r\ngamma\n", "b.txt": "one\ntwo", "c.txt": ""}


def _gen_floats():
    yield 1.5
    yield 2.5


def _gen_arrays():
    for i in range(3):
        yield np.full((2,), i, np.float64), i


PIPELINES = {
    # tf.data's dtype rules
    "slices_python_floats": lambda D, lib: D.from_tensor_slices([1.5, 2.5]),
    "slices_python_ints": lambda D, lib: D.from_tensor_slices([1, 2, 3]),
    "slices_python_pairs": lambda D, lib: D.from_tensor_slices(([[1.0, 2.0], [3.0, 4.0]], [0, 1])),
    "slices_python_strings": lambda D, lib: D.from_tensor_slices(["a", "bc"]),
    "slices_numpy_float64": lambda D, lib: D.from_tensor_slices(np.array([1.5, 2.5])),
    "from_tensors_python": lambda D, lib: D.from_tensors(([1.0, 2.0], 3)),
    "generator_signature_casts": lambda D, lib: D.from_generator(
        _gen_arrays, output_signature=(lib.TensorSpec((2,), lib.float32), lib.TensorSpec((), lib.int64))),
    "generator_output_types": lambda D, lib: D.from_generator(_gen_floats, output_types=lib.float32),
    "shuffle_autotune": lambda D, lib: D.range(4).shuffle(-1),
    # sources and combinations
    "range_stop": lambda D, lib: D.range(5),
    "range_start_stop_step": lambda D, lib: D.range(2, 11, 3),
    "range_negative_step": lambda D, lib: D.range(5, 1, -2),
    "zip_tuple": lambda D, lib: D.zip((D.range(5), D.range(10, 13))),
    "zip_dict": lambda D, lib: D.zip({"a": D.range(3), "b": D.from_tensor_slices([0.5, 1.5, 2.5])}),
    "zip_infinite": lambda D, lib: D.zip((D.range(4), D.range(3).repeat())),
    "concatenate": lambda D, lib: D.range(3).concatenate(D.range(10, 12)),
    "concatenate_infinite": lambda D, lib: D.range(3).concatenate(D.range(2).repeat()).take(7),
    "enumerate": lambda D, lib: D.from_tensor_slices([5.0, 6.0, 7.0]).enumerate(start=2),
    "shard": lambda D, lib: D.range(10).shard(3, 1),
    "shard_first": lambda D, lib: D.range(10).shard(3, 0),
    "take_while": lambda D, lib: D.range(10).take_while(lambda v: v < 4),
    "unique": lambda D, lib: D.from_tensor_slices([3, 1, 3, 2, 1, 4]).unique(),
    "choose_from_datasets": lambda D, lib: D.choose_from_datasets(
        [D.range(3), D.range(10, 13)], D.from_tensor_slices(np.array([0, 1, 1, 0, 0, 0, 1], np.int64))),
    "choose_keep_going": lambda D, lib: D.choose_from_datasets(
        [D.range(1), D.range(10, 13)], D.from_tensor_slices(np.array([0, 0, 1, 1], np.int64)),
        stop_on_empty_dataset=False),
    "sample_from_datasets_multiset": lambda D, lib: D.sample_from_datasets([D.range(4), D.range(10, 13)], seed=3),
    # batching
    "batch_then_unbatch": lambda D, lib: D.range(7).batch(3).unbatch(),
    "unbatch_full_batches": lambda D, lib: D.range(9).batch(3, drop_remainder=True).unbatch(),
    "unbatch_pairs": lambda D, lib: D.from_tensor_slices((np.arange(4.0), np.arange(4))).batch(3).unbatch(),
    "rebatch": lambda D, lib: D.range(10).batch(4).rebatch(3),
    "rebatch_drop": lambda D, lib: D.range(10).batch(4).rebatch(3, drop_remainder=True),
    "rebatch_list": lambda D, lib: D.range(10).batch(4).rebatch([2, 3]),
    "padded_batch": lambda D, lib: D.range(1, 6).map(lambda v: lib.arange(v)).padded_batch(2),
    "padded_batch_shapes_values": lambda D, lib: D.range(1, 5).map(lambda v: (lib.arange(v), v)).padded_batch(
        3, padded_shapes=([5], []), padding_values=(np.int64(-1), np.int64(0))),
    "padded_batch_drop": lambda D, lib: D.range(1, 6).map(lambda v: lib.arange(v)).padded_batch(2, drop_remainder=True),
    "bucket_by_sequence_length": lambda D, lib: D.range(1, 9).map(lambda v: lib.arange(v)).bucket_by_sequence_length(
        lambda e: lib.size(e), [3, 6], [2, 2, 3]),
    "bucket_pad_to_boundary": lambda D, lib: D.range(1, 6).map(lambda v: lib.arange(v)).bucket_by_sequence_length(
        lambda e: lib.size(e), [3, 6], [2, 2, 2], pad_to_bucket_boundary=True),
    "group_by_window": lambda D, lib: D.range(10).group_by_window(
        lambda v: v % 3, lambda key, window: window.batch(2), window_size=2),
    # windows and nesting
    "window": lambda D, lib: D.range(7).window(3, 2).flat_map(lambda w: w.batch(3)),
    "window_drop": lambda D, lib: D.range(10).window(3, 2, drop_remainder=True).flat_map(lambda w: w.batch(3)),
    "window_stride": lambda D, lib: D.range(7).window(3, 1, 2).flat_map(lambda w: w.batch(3)),
    "window_pairs": lambda D, lib: D.from_tensor_slices((np.arange(5), np.arange(5.0))).window(2).flat_map(
        lambda x, y: D.zip((x.batch(2), y.batch(2)))),
    "window_cardinality": lambda D, lib: D.range(10).window(3, 2),
    "flat_map": lambda D, lib: D.range(4).flat_map(lambda v: D.range(v)),
    "interleave": lambda D, lib: D.range(1, 5).interleave(lambda v: D.range(v).map(lambda u: u + 10 * v),
                                                           cycle_length=2, block_length=2),
    "interleave_parallel": lambda D, lib: D.range(1, 6).interleave(lambda v: D.range(v), cycle_length=3,
                                                                    num_parallel_calls=2, deterministic=True),
    "interleave_cycle_1": lambda D, lib: D.range(1, 4).interleave(lambda v: D.range(v), cycle_length=1),
    # text
    "text_lines": lambda D, lib: lib.TextLineDataset([lib.folder + "/a.txt", lib.folder + "/b.txt",
                                                      lib.folder + "/c.txt"]),
    "text_parallel_reads": lambda D, lib: lib.TextLineDataset([lib.folder + "/a.txt", lib.folder + "/b.txt"],
                                                              num_parallel_reads=2),
    "list_files_sorted": lambda D, lib: D.list_files(lib.folder + "/*.txt", shuffle=False),
    "list_files_shuffled_multiset": lambda D, lib: D.list_files(lib.folder + "/*.txt", seed=1),
    # shuffles: the multiset and the window property only
    "shuffle_window_multiset": lambda D, lib: D.range(20).shuffle(4, seed=7),
    "shuffle_full_multiset": lambda D, lib: D.range(20).shuffle(20, seed=7),
    "shuffle_batch_multiset": lambda D, lib: D.range(10).shuffle(10, seed=1).batch(4),
}
UNORDERED = {name for name in PIPELINES if name.endswith("_multiset")}


def encode(value, folder: str = ""):
    """One element as JSON: {"dtype", "shape", "value"} per component, tuples and dicts kept."""
    if isinstance(value, tuple):
        return {"tuple": [encode(v, folder) for v in value]}
    if isinstance(value, dict):
        return {"dict": {k: encode(v, folder) for k, v in sorted(value.items())}}
    array = np.asarray(value)
    if array.dtype.kind in "SOU":
        text = np.vectorize(lambda b: (b.decode() if isinstance(b, bytes) else str(b)).replace(folder, "<dir>"),
                            otypes=[object])(array) if array.size else array
        return {"dtype": "string", "shape": list(array.shape), "value": np.asarray(text).tolist()}
    return {"dtype": str(array.dtype), "shape": list(array.shape), "value": array.tolist()}


def record(dataset, name: str, folder: str) -> dict:
    """The elements and cardinality of `dataset` (the sorted elements for the unordered pipelines)."""
    try:
        cardinality = int(dataset.cardinality())
        if cardinality == -1 or name.endswith("_cardinality"):      # infinite, or elements that are datasets
            return {"cardinality": cardinality}
        elements = [encode(e, folder) for e in dataset.as_numpy_iterator()]
    except Exception as error:  # noqa: BLE001 - the message is what is recorded
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    if name in UNORDERED:
        elements = sorted(elements, key=lambda e: json.dumps(e, sort_keys=True))
    return {"cardinality": cardinality, "elements": elements}


def make_files(folder: pathlib.Path) -> str:
    for name, text in TEXT_FILES.items():
        (folder / name).write_bytes(text.encode())
    return str(folder)


def tf_lib(folder: str):
    import tensorflow as tf
    return tf.data.Dataset, types.SimpleNamespace(
        arange=lambda v: tf.range(v), size=lambda e: tf.size(e), TensorSpec=tf.TensorSpec, float32=tf.float32,
        int64=tf.int64, TextLineDataset=tf.data.TextLineDataset, folder=folder)


def bf_lib(folder: str):
    import batchfit as bf
    from batchfit.data.dataset import TextLineDataset
    return bf.data.Dataset, types.SimpleNamespace(
        arange=lambda v: np.arange(v), size=lambda e: np.size(e), TensorSpec=bf.data.TensorSpec,
        float32=np.float32, int64=np.int64, TextLineDataset=TextLineDataset, folder=folder)


def run_all(library: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_files(pathlib.Path(tmp))
        D, lib = (tf_lib if library == "tf" else bf_lib)(folder)
        out = {}
        for name, build in PIPELINES.items():
            try:
                dataset = build(D, lib)
            except Exception as error:  # noqa: BLE001
                out[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
                continue
            out[name] = record(dataset, name, folder)
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare bf.data with the recording, print JSON")
    parser.add_argument("--markdown", action="store_true", help="with --check: also print a RESULTS.md section")
    args = parser.parse_args(argv)
    if args.check:
        recording = json.loads(REFERENCE.read_text())
        reference, ours = recording["pipelines"], run_all("bf")
        same = {name: ours[name] == reference[name] for name in reference}
        summary = {"same": sum(same.values()), "total": len(same), "tensorflow": recording["tensorflow"],
                   "differ": sorted(n for n, ok in same.items() if not ok)}
        print(json.dumps(summary, indent=1))
        if args.markdown:
            print(f"\n## bf.data against tf.data (python benchmarks/tfdata_record.py --check)\n\n"
                  f"{summary['same']} of {summary['total']} recorded pipelines (TensorFlow {summary['tensorflow']}) "
                  f"give the same elements, order, dtypes, shapes and cardinality; differing: "
                  f"{', '.join(summary['differ']) or 'none'} (error messages and RNG streams are not comparable).")
        return 0
    import tensorflow as tf
    pipelines = run_all("tf")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({"tensorflow": tf.__version__, "pipelines": pipelines}, indent=None,
                                    sort_keys=True) + "\n")
    print(json.dumps({"recorded": len(pipelines), "file": str(REFERENCE), "tensorflow": tf.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
