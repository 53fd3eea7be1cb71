"""Files as datasets: `Dataset.list_files` and `TextLineDataset`, tf.data's way of reading text.

Lines and file names are bytes, as tf.data's `as_numpy_iterator()` gives them; decode with
`.map(lambda line: line.decode())` where str is wanted.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = path.write_text("one\\r\\ntwo\\n")
>>> list(TextLineDataset(str(path)))
[b'one', b'two']
"""

from __future__ import annotations

import glob
import os

import numpy as np

from batchfit.data._base import STEPS, UNKNOWN_CARDINALITY, Dataset
from batchfit.data._nested import Interleave
from batchfit.data._ops import Slices
from batchfit.errors import describe

__all__ = ["TextLineDataset"]

_COMPRESSIONS = ("", "GZIP", "ZLIB")


def _file_names(filenames) -> list | Dataset:
    if isinstance(filenames, Dataset):
        return filenames
    names = [filenames] if isinstance(filenames, (str, bytes, os.PathLike)) else list(np.asarray(filenames).ravel())
    if not names:
        raise ValueError("TextLineDataset() needs at least one file name; got none.")
    out = []
    for name in names:
        if not isinstance(name, (str, bytes, os.PathLike)):
            raise TypeError(f"TextLineDataset(): file names must be strings; got {describe(name)}.")
        name = os.fsencode(name)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"TextLineDataset(): no file {os.fsdecode(name)!r}. Check the path (relative "
                                    f"paths start at {os.getcwd()!r}), or list the files with Dataset.list_files.")
        out.append(name)
    return out


def _open(name: bytes, compression: str):
    if compression == "GZIP":
        import gzip
        return gzip.open(name, "rb")
    if compression == "ZLIB":
        import io
        import zlib
        with open(name, "rb") as file:
            return io.BytesIO(zlib.decompress(file.read()))
    return open(name, "rb")


def _lines(name, compression: str):
    """The lines of one file without their terminator (\\n or \\r\\n), as bytes."""
    with _open(bytes(np.asarray(name).item()) if not isinstance(name, bytes) else name, compression) as file:
        for line in file:
            yield line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line


class _FileLines(Dataset):
    _batched = False

    def __init__(self, name, compression):
        self._name, self._compression = name, compression

    def _elements(self, key):
        return _lines(self._name, self._compression)

    def _cardinality(self):
        return UNKNOWN_CARDINALITY


class TextLineDataset(Dataset):
    """The lines of one or more text files, in file order (bytes, without line terminators).

    Args:
      filenames: a path, a list of paths, or a Dataset of them (e.g. `Dataset.list_files(...)`).
      compression_type: None or "" (plain), "GZIP" or "ZLIB".
      buffer_size: accepted for tf.data code (Python's own file buffering is used).
      num_parallel_reads: read this many files in turn, one line from each (tf.data's interleave
        with block_length=1); None: one file after another.
    """

    _batched = False

    def __init__(self, filenames, compression_type=None, buffer_size=None, num_parallel_reads=None, name=None):
        compression = (compression_type or "").upper()
        if compression not in _COMPRESSIONS:
            raise ValueError(f"TextLineDataset(): `compression_type` must be None, '', 'GZIP' or 'ZLIB'; got "
                             f"{compression_type!r}.")
        names = _file_names(filenames)
        files = names if isinstance(names, Dataset) else Slices(np.array(names, dtype=object))
        self._input = Interleave(files, lambda n: _FileLines(n, compression), num_parallel_reads or 1, 1, None,
                                 seed=0)       # it builds no shuffle: no seed to carry

    def _elements(self, key):
        return self._input._elements(key)

    def _cardinality(self):
        return UNKNOWN_CARDINALITY


@STEPS.register("list_files")
def list_files(file_pattern, shuffle, seed) -> Dataset:
    """tf.data's list_files: the sorted matches of every pattern as bytes, shuffled unless shuffle=False."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, bytes, os.PathLike)) else list(file_pattern)
    names = []
    for pattern in patterns:
        names.extend(glob.glob(os.fsdecode(pattern)))
    if not names:
        raise ValueError(f"list_files(): no files matched pattern(s) {[os.fsdecode(p) for p in patterns]!r}. Check "
                         f"the path (relative paths start at {os.getcwd()!r}).")
    files = Dataset.from_tensor_slices(np.array(sorted(os.fsencode(n) for n in names)))
    return files if shuffle is False else files.shuffle(len(names), seed=seed)
