"""Which traced probabilities came from which logits, so crossentropy can be computed from the logits.

Keras on TensorFlow puts `_keras_logits` on the output of `sigmoid` and `softmax`, and its crossentropy
losses use those logits instead of clipping the probabilities to [1e-7, 1 - 1e-7]: a saturated sample
keeps its true loss (30.0, not 16.1, for a wrong-side logit of 30) and its gradient. JAX arrays and
tracers take no attributes, so `record` keeps the pair here instead, keyed by the output's identity.

Only tracers are recorded (a model's forward pass inside jit/grad): an eager call, e.g. a loss on
plain probabilities, is computed as before. An entry lives as long as its output tracer (a weakref
callback drops it) and is found only by that exact object, so nothing leaks from one trace into
another; at most `_MAX_ENTRIES` are kept, oldest dropped first, in case a tracer outlives its trace.
"""

from __future__ import annotations

import weakref
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

_MAX_ENTRIES = 512


class _Entry(NamedTuple):
    output: weakref.ref     # the probabilities, weakly: the entry dies with them
    logits: object          # the activation's input, same shape as the output
    kind: str               # "sigmoid" or "softmax"
    axis: int               # softmax's axis as a non-negative index (0 for sigmoid, unused)


_ENTRIES: dict[int, _Entry] = {}


def _drop(key: int, ref: weakref.ref) -> None:
    entry = _ENTRIES.get(key)
    if entry is not None and entry.output is ref:
        del _ENTRIES[key]


def _store(output, logits, kind: str, axis: int) -> None:
    key = id(output)
    try:
        ref = weakref.ref(output, lambda ref, key=key: _drop(key, ref))
    except TypeError:                                   # a tracer type without weakrefs: record nothing
        return
    _ENTRIES.pop(key, None)
    _ENTRIES[key] = _Entry(ref, logits, kind, axis)
    while len(_ENTRIES) > _MAX_ENTRIES:
        del _ENTRIES[next(iter(_ENTRIES))]


def record(output, logits, kind: str, axis: int = -1):
    """Note that traced `output` is `kind`("sigmoid"/"softmax", over `axis`) of `logits`; returns `output`.

    Under `jax.grad` the output is a tracer whose primal value is itself a tracer of the enclosing
    jit; that primal is what `value_and_grad(..., has_aux=True)` hands back as aux (the engine's
    y_pred for the metrics), so each primal level is recorded too.
    """
    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"`kind` must be 'sigmoid' or 'softmax'; got {kind!r}.")
    level, level_logits = output, logits
    while isinstance(level, jax.core.Tracer) and level.shape == getattr(level_logits, "shape", None):
        _store(level, level_logits, kind, axis % max(level.ndim, 1))
        level, level_logits = getattr(level, "primal", None), getattr(level_logits, "primal", None)
    return output


def find(y_pred, kind: str, axis: int = -1):
    """The logits `y_pred` was recorded with as `kind` over `axis` (softmax), or None."""
    entry = _ENTRIES.get(id(y_pred))
    if entry is None or entry.output() is not y_pred or entry.kind != kind:
        return None
    if kind == "softmax" and entry.axis != axis % max(y_pred.ndim, 1):
        return None
    return entry.logits


def carry(source, result, transform: Callable):
    """`result` (= a cast or reshape of `source` by `transform`) recorded with `transform(logits)`, when
    `source` was recorded and keeps its meaning (a sigmoid, or a softmax whose rank is unchanged)."""
    entry = _ENTRIES.get(id(source))
    if result is source or entry is None or entry.output() is not source:
        return result
    if entry.kind == "softmax" and jnp.ndim(result) != jnp.ndim(source):
        return result
    _store(result, transform(entry.logits), entry.kind, entry.axis)
    return result
