"""Input handling: in-memory arrays on the device, streams with a background prefetch, and Datasets.

`bf.data.Dataset` is a tf.data-style pipeline with tf.data's method names, arguments and
rules (tests/test_tfdata_methods.py compares it with recorded tf.data output), plus
`TextLineDataset` and `Options`; see dataset.py for the few differences from tf.data.
"""

from batchfit.data.dataset import (AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, Dataset, Options, TensorSpec,
                                   TextLineDataset)

__all__ = ["AUTOTUNE", "Dataset", "INFINITE_CARDINALITY", "Options", "TensorSpec", "TextLineDataset",
           "UNKNOWN_CARDINALITY"]
