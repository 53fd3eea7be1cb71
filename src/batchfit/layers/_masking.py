"""Keras masks between layers: which module takes the mask [B, T] that came with its input, and which mask
goes with its output. Sequential's Stack and the functional GraphModule carry masks with `run_masked`.

A module says what it does with a mask by its attributes: `compute_mask(inputs, mask)` makes the output's
(Embedding(mask_zero=True), Masking, recurrent layers); `takes_mask = True` gets `mask=` in its call;
`passes_mask` True/False keeps or drops it. Where a module does not say, the mask is kept when the output
has the input's axes but for the last (an element-wise or last-axis layer: Dense, Dropout, Activation,
the normalizations) and dropped when a layer changes the others (Flatten). A layer written as Keras writes
one follows Keras: its `compute_mask`, else the mask kept only with `supports_masking = True`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from batchfit.layers.base import Layer, run_module

__all__ = ["makes_mask", "run_masked"]


def _keras_layer(module):
    """The Layer whose `call` a module runs (a layer written as Keras writes one), else None."""
    layer = getattr(module, "layer", None)
    return layer if isinstance(layer, Layer) else None


def makes_mask(module) -> bool:
    """Whether `module` may give a mask when its input has none."""
    return hasattr(module, "compute_mask") or hasattr(type(_keras_layer(module)), "compute_mask")


def run_masked(module, inputs, mask, args=(), kwargs=None):
    """(outputs, their mask): `run_module` with the mask that came with `inputs` ([B, T] bool, a list for
    several inputs, or None); an explicit `mask=` in `kwargs` wins."""
    kwargs = dict(kwargs or {})
    if mask is not None and kwargs.get("mask") is None:
        kwargs["mask"] = mask
    outputs = run_module(module, inputs, args, kwargs)
    mask, layer = kwargs.get("mask"), _keras_layer(module)
    if hasattr(module, "compute_mask"):
        return outputs, module.compute_mask(inputs, mask)
    if hasattr(type(layer), "compute_mask"):
        return outputs, layer.compute_mask(inputs, mask)
    if mask is None:
        return outputs, None
    if layer is not None:
        passes = bool(vars(layer).get("supports_masking", getattr(type(layer), "supports_masking", False)))
    else:
        passes = getattr(module, "passes_mask", None)
    if passes is None:
        first = jax.tree.leaves(inputs)[0]
        passes = hasattr(outputs, "shape") and outputs.shape[:-1] == first.shape[:-1]
    masks = [m for m in (mask if isinstance(mask, (list, tuple)) else [mask]) if m is not None]
    return outputs, functools.reduce(jnp.logical_and, masks) if passes and masks else None
