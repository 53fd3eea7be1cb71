"""Error helpers: describe values by dtype and shape, never by content."""

from __future__ import annotations

import contextlib
import json
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["describe", "check_int", "CheckpointError", "reading"]


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


class CheckpointError(ValueError):
    """A saved model, weights file or checkpoint that cannot be read: damaged, truncated, or not what
    it claims to be. The message names the file and what is wrong with it."""


# Every way a saved file can be damaged is one CheckpointError naming the file.
_DAMAGE = (((zipfile.BadZipFile, zlib.error), "is damaged: its zip structure or a checksum is wrong"),
           ((EOFError, struct.error), "is truncated or damaged"),
           ((json.JSONDecodeError, UnicodeDecodeError), "holds broken JSON"), ((KeyError,), "lacks a part"))


@contextlib.contextmanager
def reading(path: str, member: str | None = None):
    """Errors while decoding the file `path` (or its zip `member`) as one CheckpointError naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:         # noqa: BLE001 - whatever NumPy or zipfile raise on bytes that are not theirs
        what = next((text for kinds, text in _DAMAGE if isinstance(e, kinds)), "cannot be read")
        detail = f"{type(e).__name__}: {e}"
        if "pickle" in detail.lower():       # NumPy's advice to unpickle must never reach a user
            detail = "an array holds Python objects, or its header is damaged; batchfit never unpickles"
        where = f"'{path}'" + (f" (member {member})" if member else "")
        raise CheckpointError(f"{where} {what} ({detail}). Load an intact copy written by batchfit.") from None
