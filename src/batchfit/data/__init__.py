"""Input handling: in-memory arrays on the device, streams with a background prefetch, and Datasets.

`bf.data.Dataset` is a tf.data-style pipeline (from_tensor_slices, from_generator, shuffle,
batch, map, filter, repeat, take, skip, prefetch, cache); see dataset.py for the few
differences from tf.data.
"""

from batchfit.data.dataset import AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, Dataset, TensorSpec

__all__ = ["AUTOTUNE", "Dataset", "INFINITE_CARDINALITY", "TensorSpec", "UNKNOWN_CARDINALITY"]
