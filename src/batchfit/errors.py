"""Error helpers: describe values by dtype and shape, never by content."""

from __future__ import annotations

import numpy as np

__all__ = ["describe", "check_int"]


def check_int(name: str, value, minimum: int) -> int:
    """`value` as an int, refused (ValueError) unless it is an integer >= `minimum` (bools too)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def describe(x) -> str:
    """A short description of `x` for error messages, e.g. ``float32[4, 2]``.

    >>> describe(np.zeros((4, 2), np.float32))
    'float32[4, 2]'
    >>> describe([1, 2])
    'list of 2'
    """
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{dtype}[{', '.join(str(d) for d in shape)}]"
    if isinstance(x, dict):
        return "dict(" + ", ".join(f"{k}: {describe(v)}" for k, v in x.items()) + ")"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__
