"""`keras.utils` for training scripts: to_categorical, pad_sequences, set_random_seed, PyDataset,
and the (x, y, sample_weight) packing a custom train_step reads its `data` with.

>>> to_categorical([0, 2], num_classes=3)
array([[1., 0., 0.],
       [0., 0., 1.]])
"""

from __future__ import annotations

import itertools
import random

import jax
import numpy as np

from batchfit import _random
from batchfit.saving import register_keras_serializable

__all__ = ["to_categorical", "pad_sequences", "set_random_seed", "PyDataset", "register_keras_serializable",
           "pack_x_y_sample_weight", "unpack_x_y_sample_weight"]


def to_categorical(x, num_classes=None):
    """Integer class labels [...] as one-hot rows [..., num_classes], as Keras makes them.

    A trailing axis of size 1 is dropped first ([N, 1] labels give [N, C]). NumPy and Python
    inputs give a float64 NumPy array; a JAX array gives a float32 JAX array.

    Args:
      x: integer labels in [0, num_classes).
      num_classes: the number of classes; None: the largest label + 1.
    """
    if isinstance(x, jax.Array):
        if x.ndim > 1 and x.shape[-1] == 1:
            x = x.reshape(x.shape[:-1])
        if num_classes is None:
            num_classes = int(x.max()) + 1
        return jax.nn.one_hot(x, num_classes)
    x = np.array(x, dtype="int64")
    shape = x.shape[:-1] if x.ndim > 1 and x.shape[-1] == 1 else x.shape
    x = x.reshape(-1)
    if not num_classes:
        num_classes = int(np.max(x)) + 1
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must lie in [0, num_classes={num_classes}); got labels from "
                         f"{x.min()} to {x.max()}. Map the labels to 0..{num_classes - 1} or raise num_classes.")
    categorical = np.zeros((x.shape[0], num_classes))
    categorical[np.arange(x.shape[0]), x] = 1
    return categorical.reshape(shape + (num_classes,))


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Sequences of different lengths as one array [num_sequences, maxlen, ...], as Keras pads them.

    Args:
      sequences: a list of sequences (lists or arrays [length, ...]; the trailing shape must agree).
      maxlen: the length of the output; None: the longest sequence's.
      dtype: the output dtype. For strings, `dtype=object` (or a string dtype) with a string `value`.
      padding: "pre" or "post": where `value` fills a short sequence.
      truncating: "pre" or "post": which end of a long sequence is cut.
      value: the padding value.

    >>> pad_sequences([[1, 2], [3]], maxlen=3)
    array([[0, 1, 2],
           [0, 0, 3]], dtype=int32)
    """
    for name, given in (("padding", padding), ("truncating", truncating)):
        if given not in ("pre", "post"):
            raise ValueError(f"pad_sequences: `{name}` must be 'pre' or 'post'; got {name}={given!r}.")
    if not hasattr(sequences, "__len__"):
        raise ValueError(f"pad_sequences: `sequences` must be a list of sequences; got "
                         f"{type(sequences).__name__}. Pass e.g. [[1, 2], [3]].")
    lengths, sample_shape = [], None
    for index, sequence in enumerate(sequences):
        if not hasattr(sequence, "__len__"):
            raise ValueError(f"pad_sequences: `sequences` must be a list of sequences; item {index} is a "
                             f"{type(sequence).__name__}. Wrap single values in lists.")
        lengths.append(len(sequence))
        if sample_shape is None and len(sequence):
            sample_shape = np.asarray(sequence).shape[1:]     # the first non-empty sequence decides
    sample_shape = sample_shape or ()
    if maxlen is None:
        maxlen = int(np.max(lengths)) if lengths else 0
    is_string_dtype = np.issubdtype(dtype, np.str_) or np.issubdtype(dtype, np.bytes_)
    if isinstance(value, str) and dtype is not object and not is_string_dtype:
        raise ValueError(f"pad_sequences: `dtype` {dtype} cannot hold the string `value` {value!r}. "
                         f"Pass dtype=object for variable-length strings.")

    padded = np.full((len(sequences), maxlen) + sample_shape, value, dtype=dtype)
    for index, sequence in enumerate(sequences):
        if not len(sequence) or not maxlen:
            continue
        kept = np.asarray(sequence[-maxlen:] if truncating == "pre" else sequence[:maxlen], dtype=dtype)
        if kept.shape[1:] != sample_shape:
            raise ValueError(f"pad_sequences: sequence {index} has items of shape {kept.shape[1:]}, but the "
                             f"first non-empty sequence has {sample_shape}. Give every item the same shape.")
        if padding == "post":
            padded[index, :len(kept)] = kept
        else:
            padded[index, -len(kept):] = kept
    return padded


def set_random_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and batchfit's global seed (Keras's function).

    After it, models built without a seed (`bf.Sequential([...])`), unseeded initializers and
    fit's shuffling draw the same numbers in the same order on every run.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"set_random_seed: `seed` must be an integer in [0, 2**32); got {seed!r} "
                         f"({type(seed).__name__}). Pass e.g. set_random_seed(42).")
    random.seed(int(seed))
    np.random.seed(int(seed))
    _random.set_global_seed(int(seed))


def unpack_x_y_sample_weight(data) -> tuple:
    """Keras's reading of a step's `data`: (x, y, sample_weight), None for each part that is absent.

    `data` is x alone, or a tuple or list (x,), (x, y) or (x, y, sample_weight), as a custom
    train_step / test_step / predict_step receives it.

    >>> unpack_x_y_sample_weight(([1.0], [2.0]))
    ([1.0], [2.0], None)
    """
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return data, None, None
    if 1 <= len(data) <= 3:
        return tuple(data) + (None,) * (3 - len(data))
    raise ValueError(f"unpack_x_y_sample_weight: `data` must be x, (x,), (x, y) or (x, y, sample_weight); got a "
                     f"tuple of {len(data)} items. Pass at most three.")


def pack_x_y_sample_weight(x, y=None, sample_weight=None):
    """Keras's inverse of unpack_x_y_sample_weight: x alone (a tuple x wrapped as (x,)) when y is None,
    else (x, y) or (x, y, sample_weight).

    >>> pack_x_y_sample_weight([1.0], [2.0])
    ([1.0], [2.0])
    """
    if y is None:
        return (x,) if isinstance(x, (tuple, list)) else x
    return (x, y) if sample_weight is None else (x, y, sample_weight)


class PyDataset:
    """Keras's batch sequence: subclass it and define `__len__` (batches per epoch) and
    `__getitem__(index)` -> `(x, y)` or `(x, y, sample_weight)`, arrays [B, ...].

    `fit`, `evaluate` and `predict` read batches 0 .. len - 1 in order (fit's `shuffle` does not
    apply, as in Keras: shuffle in `on_epoch_end`); `on_epoch_end()` runs at every epoch's end (also
    when `steps_per_epoch` ends an epoch inside a pass) and after each evaluation pass, as Keras
    calls it; `on_epoch_begin()` runs before each pass. Batches are read on batchfit's background
    thread, ahead of the device; `workers`, `use_multiprocessing` and `max_queue_size` are accepted
    for Keras code and unused.

    >>> class Squares(PyDataset):
    ...     def __len__(self):
    ...         return 2
    ...     def __getitem__(self, index):
    ...         x = np.arange(4.0).reshape(4, 1) + 4 * index
    ...         return x, x**2
    >>> [y.ravel().tolist() for _, y in Squares()][1]
    [16.0, 25.0, 36.0, 49.0]
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.workers, self.use_multiprocessing, self.max_queue_size = workers, use_multiprocessing, max_queue_size

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index) returning (x, y) "
                                  f"or (x, y, sample_weight) for batch `index`.")

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch: `len(self)`. A subclass without `__len__` may return None (endless)."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(f"{type(self).__name__} must define __len__ (batches per epoch) or a "
                                  f"`num_batches` property (None for an endless dataset).")

    def on_epoch_begin(self):
        """Called before each pass over the batches."""

    def on_epoch_end(self):
        """Called at the end of every epoch (e.g. to reshuffle the samples)."""

    def __iter__(self):
        count = self.num_batches
        for index in range(count) if count is not None else itertools.count():
            yield self[index]

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
