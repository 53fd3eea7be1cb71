"""Which module a layer runs, and which value a weight has, while a model's module runs.

Keras code calls layers and reads weights through attributes (`self.dense(x)`, `ops.matmul(x,
self.w)`). Inside a compiled step the engine runs a *copy* of the model's module (nnx.merge),
so those attributes must resolve to the copy's parts: the module running binds each layer (and
each weight handle) to its part for the duration of the call, and `lookup` finds it. Outside
any binding a layer runs its own module and a weight reads its own variable (eager use).

While a model is being built, `building(rngs)` hands the layers built on the way the model's
random streams, so the same model seed builds the same weights.
"""

from __future__ import annotations

import contextlib

__all__ = ["bind", "lookup", "building", "build_rngs", "note_edit", "edits"]

_bound: list[dict] = []          # a stack of {id(owner): part}
_rngs: list = []                 # a stack of HostRngs for layers built on the way
edits = 0                        # counts weights set from outside a model (layer.set_weights, assign)


def note_edit() -> None:
    """A weight was set outside any model call: models holding it read their modules again."""
    global edits
    edits += 1


def is_bound() -> bool:
    return bool(_bound)


@contextlib.contextmanager
def bind(parts: dict):
    """Within the block, `lookup(owner)` returns `parts[id(owner)]` (innermost binding first)."""
    _bound.append(parts)
    try:
        yield
    finally:
        _bound.pop()


def lookup(owner):
    key = id(owner)
    for parts in reversed(_bound):
        part = parts.get(key)
        if part is not None:
            return part
    return None


@contextlib.contextmanager
def building(rngs):
    """Layers first built within the block draw their weights from `rngs`."""
    _rngs.append(rngs)
    try:
        yield
    finally:
        _rngs.pop()


def build_rngs():
    """The random streams of the model being built, or fresh ones (from the global seed)."""
    if _rngs:
        return _rngs[-1]
    from batchfit._random import next_seed
    from batchfit.layers.initializers import HostRngs
    return HostRngs(next_seed())
