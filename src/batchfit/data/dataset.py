"""bf.data.Dataset: a tf.data-style input pipeline over NumPy arrays and Python generators.

    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=0).batch(32).prefetch(bf.data.AUTOTUNE)
    model.fit(ds, epochs=10)

Elements are NumPy arrays (or tuples / dicts of them), produced lazily on iteration.
Differences from tf.data, on purpose:

* `shuffle(n)` over rows of `from_tensor_slices` with `n` >= the number of rows is one
  uniform permutation per iteration, drawn as `fit(shuffle=True, seed=seed)` draws it, so a
  dataset and the same arrays give the same batches. A smaller buffer is tf.data's windowed
  shuffle, except inside `fit`'s fused device path, which always draws a full permutation.
* `shuffle(seed=None)` draws the seed once, when the dataset is built.
* `prefetch(AUTOTUNE)` keeps a fixed number of elements ready (8); in `fit` the
  engine's own chunk prefetch replaces a trailing `prefetch`.
* `map(num_parallel_calls=...)` runs `fn` on threads and always keeps the input order.
* `cache()` keeps elements in memory; `cache(filename)` with a file is not supported.
* `prefetch(0)` is refused (tf.data takes it as no prefetch): leave the prefetch out instead.
"""

from __future__ import annotations

# The class and its methods live in _base.py, the steps they build in _ops.py (which
# registers them in STEPS); importing _ops here makes sure they are registered.
from batchfit.data import _ops  # noqa: F401
from batchfit.data._base import (AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, Dataset, FusedPlan,
                                 TensorSpec)

__all__ = ["Dataset", "TensorSpec", "AUTOTUNE", "INFINITE_CARDINALITY", "UNKNOWN_CARDINALITY"]
