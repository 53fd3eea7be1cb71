"""bf.data.Dataset: a tf.data-style input pipeline over NumPy arrays and Python generators.

    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=0).batch(32).prefetch(bf.data.AUTOTUNE)
    model.fit(ds, epochs=10)

Elements are NumPy arrays (or tuples / dicts of them), produced lazily on iteration.
Differences from tf.data, on purpose:

* `shuffle(n)` is tf.data's windowed shuffle on every path (fit's device path included), but
  tf.data's random stream cannot be reproduced: the orders are other draws with the same
  window property. Over rows of `from_tensor_slices` with `n` >= the number of rows it is one
  uniform permutation per iteration, drawn as `fit(shuffle=True, seed=seed)` draws it, so a
  dataset and the same arrays give the same batches in the first fit call.
* `shuffle(seed=None)` draws the seed once, when the dataset is built. With
  `reshuffle_each_iteration=True` every iteration, and every fit / evaluate call, draws a new
  order (as tf.data makes a new iterator per epoch). Inside a `flat_map` / `interleave` function
  or a `group_by_window` reduce_func, its seed derives from that step's own seed, drawn once
  (`_nested.py`); so does one built by a `map` function (which then runs per element,
  `_map_seeds.py`); a shuffled dataset such a function or a `from_generator` generator captures
  (closure, defaults, globals) is an input of the step (`_captured.py`); so `BackupAndRestore`
  resumes those orders too.
* `interleave(num_parallel_calls=...)` reads the inner datasets on one thread, in tf.data's
  deterministic order; `sample_from_datasets` draws from NumPy's generator.
* `element_spec` is read from the first element (no static shapes here).
* `prefetch(AUTOTUNE)` keeps a fixed number of elements ready (8); in `fit` the
  engine's own chunk prefetch replaces a trailing `prefetch`.
* `map(f)` on rows of arrays traces `f` when `map()` is called, as tf.data does, and runs it on whole
  batches when that gives the per-row results bit for bit (see `_map.py`); otherwise per row.
  A NumPy-written `f` (`np.where`, `np.clip`, ufuncs, indexing) is traced too, with NumPy's types.
  `num_parallel_calls` runs a per-row `f` on threads and always keeps the input order.
* `cache()` keeps elements in memory; `cache(filename)` with a file is not supported.
* `prefetch(0)` is refused (tf.data takes it as no prefetch): leave the prefetch out instead.
"""

from __future__ import annotations

# The class and its methods live in _base.py, the steps they build in _ops.py (which
# registers them in STEPS); importing _ops here makes sure they are registered.
from batchfit.data import _methods, _methods_batch, _nested, _ops, text  # noqa: F401
from batchfit.data._base import (AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, Dataset, FusedPlan,
                                 TensorSpec)

from batchfit.data._methods_batch import Options
from batchfit.data.text import TextLineDataset

__all__ = ["Dataset", "Options", "TensorSpec", "TextLineDataset", "AUTOTUNE", "INFINITE_CARDINALITY",
           "UNKNOWN_CARDINALITY"]
