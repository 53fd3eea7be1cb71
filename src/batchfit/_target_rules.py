"""The value rules of the losses that have them: targets in a range, checked on the host.

Loss.validate_targets calls these; fit runs them once per call on arrays, once per chunk on
streams, and *_on_batch on every batch.
"""

from __future__ import annotations

import math

import numpy as np

from batchfit.errors import describe

_LIST_RANGE_MAX = 256      # targets ranged through a Python list (see finite_range)


def finite_range(y, name: str) -> tuple:
    """(min, max) of numeric host targets as floats; (None, None) when empty or not numeric. NaN and
    inf are refused here with the finite rule's message (a range rule covers that rule for y).

    A batch's few targets go through a Python list: right after a compiled step, a NumPy reduction
    costs about 10 us (its machinery evicted from the CPU caches by the step), the list about 1 us.
    Their sum is finite exactly when no value is NaN or inf; otherwise NumPy's reductions decide."""
    y = np.asarray(y)
    if y.size == 0 or y.dtype.kind not in "biuf":
        return None, None
    if y.size <= _LIST_RANGE_MAX:
        values = y.ravel().tolist()
        if math.isfinite(sum(values)):
            return float(min(values)), float(max(values))
    low, high = float(np.minimum.reduce(y, axis=None)), float(np.maximum.reduce(y, axis=None))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
        raise ValueError(f"`y` ({describe(y)}) contains {bad} NaN or infinite values; {name} needs finite targets. "
                         f"Clean or impute them.")
    return low, high


def check_sparse_labels(y, low: float, high: float, num_outputs: int | None, found: str) -> None:
    """Sparse labels must be whole numbers in [0, num_outputs)."""
    valid = (f"[0, {num_outputs}) for a model with {num_outputs} outputs" if num_outputs
             else "[0, num_classes)")
    whole = y.dtype.kind in "biu" or (np.isfinite(low) and np.isfinite(high) and np.all(y == np.round(y)))
    if not whole:
        raise ValueError(
            f"sparse_categorical_crossentropy needs integer class labels in {valid}; "
            f"{found} and non-integer values. Pass integer class ids, or use "
            "binary_crossentropy / categorical_crossentropy for probability targets.")
    if low >= 0 and (not num_outputs or high < num_outputs):
        return
    if low < 0:
        fix = "Remap the labels to 0..num_classes-1, e.g. np.unique(y, return_inverse=True)[1]."
    elif num_outputs == 1:
        fix = "With one output unit use loss='binary_crossentropy', or one unit per class."
    elif low >= 1 and high == num_outputs:
        fix = "The labels look 1-based: pass y - 1."
    else:
        fix = (f"Give the last layer {int(high) + 1} units (one per class), or remap the "
               "labels to 0..num_classes-1, e.g. np.unique(y, return_inverse=True)[1].")
    raise ValueError(
        f"sparse_categorical_crossentropy needs integer class labels in {valid}; {found}. {fix}")
