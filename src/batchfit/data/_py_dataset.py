"""Keras-style PyDataset input (bf.utils.PyDataset, keras.utils.PyDataset or a subclass): batches by index,
streamed by data/stream.py's StreamSource."""

from __future__ import annotations

import itertools
import numbers

from batchfit.data.stream import StreamSource
from batchfit.errors import describe

__all__ = ["is_py_dataset", "from_py_dataset"]


def is_py_dataset(x) -> bool:
    """A Keras-style PyDataset (bf.utils.PyDataset, keras.utils.PyDataset or a subclass): batches by index."""
    return any(cls.__name__ == "PyDataset" for cls in type(x).__mro__)


def from_py_dataset(dataset, options: dict) -> StreamSource:
    """A PyDataset: each pass is on_epoch_begin(), then batches 0 .. num_batches - 1 in order; on_epoch_end()
    follows every epoch (also of steps_per_epoch batches), run on the worker thread in that order (fit's
    `shuffle` does not apply, as in Keras)."""
    name = type(dataset).__name__
    try:
        num_batches = dataset.num_batches
    except NotImplementedError:
        num_batches = None
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral)
                                    or num_batches < 1):
        raise ValueError(f"The PyDataset {name} has {num_batches!r} batches (its __len__ / num_batches); it "
                         f"needs at least 1. Make __len__ return the number of batches, e.g. "
                         f"math.ceil(num_samples / batch_size).")
    if num_batches is None and options["steps"] is None:
        raise ValueError(f"The PyDataset {name} has no length (num_batches is None): pass steps_per_epoch "
                         f"(validation_steps, steps) to say how many batches make an epoch, or define __len__.")

    def batch(index: int):
        element = dataset[index]
        if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3 or isinstance(element, dict) \
                or hasattr(element, "shape"):
            return element
        raise TypeError(f"{name}[{index}] returned {describe(element)}; a PyDataset's __getitem__ must return "
                        f"a batch: (x, y) or (x, y, sample_weight) (x alone to predict), arrays [B, ...] or "
                        f"dicts of them.")

    def one_pass(key):
        getattr(dataset, "on_epoch_begin", lambda: None)()
        for index in range(num_batches) if num_batches is not None else itertools.count():
            yield batch(index)
    return StreamSource(one_pass, reiterable=True, num_batches=num_batches, what=f"The PyDataset {name}",
                        on_epoch_end=getattr(dataset, "on_epoch_end", None), **options)
