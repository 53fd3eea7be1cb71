"""Stack: the built Sequential; weights in Keras order; regularization penalties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers.initializers import HostRngs
from batchfit.layers import _scope
from batchfit.layers._masking import makes_mask, run_masked
from batchfit.layers.base import Layer, _shape


class Stack(nnx.Module):
    """A built Sequential: applies `layers` (an nnx.List of modules) in order."""

    def __init__(self, modules, layer_names, input_shape, output_shape):
        self.layers = nnx.List(list(modules))
        self.layer_names = tuple(layer_names)  # unique: "dense", "dense_1", ...
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)

    def __call__(self, x):
        """Each module on the last one's output; a Keras mask (made by Embedding(mask_zero=True) or
        Masking) goes along from where one appears: until then, a plain call per module."""
        mask = None
        for module in self.layers:
            if mask is None and not makes_mask(module):
                x = module(x)
            else:
                x, mask = run_masked(module, x, mask)
        return x


def _unique_names(layers) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
        names.append(layer.name if counts[layer.name] == 1
                     else f"{layer.name}_{counts[layer.name] - 1}")
    return names


def _check_declared(layer: Layer, index: int, shape: tuple) -> None:
    declared = layer.input_shape
    if declared is not None and (len(declared) != len(shape) or any(
            d is not None and d != s for d, s in zip(declared, shape))):
        raise ValueError(
            f"Layer {index} ({type(layer).__name__} '{layer.name}') declares input_shape="
            f"{declared}, but its actual per-sample input shape is {tuple(shape)}. Set "
            f"input_shape={tuple(shape)} (without the batch axis), or drop it to infer it.")


def _initial_shape(layers, input_shape) -> tuple:
    shape = layers[0].input_shape if input_shape is None else _shape(input_shape, "input_shape")
    if shape is None or None in shape:
        raise ValueError(f"Cannot build: the per-sample input shape {shape} is not fully known. "
                         "Pass input_shape= to the first layer, or build from a batch of data.")
    return shape


def build_stack(layers, input_shape=None, seed: int = 0) -> Stack:
    """Builds `layers` in order for per-sample `input_shape` (default: the first layer's).

    Weights are drawn on the host from `seed` (initializers.HostRngs), so the same seed gives the
    same weights, with nothing to compile. The Stack starts in inference mode: call `.train()` /
    `.eval()` to switch.
    """
    layers = list(layers)
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"build_stack needs a non-empty list of batchfit layers; got "
                        f"{[type(layer).__name__ for layer in layers]}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; got {seed!r}. Pass e.g. seed=0.")
    shape = _initial_shape(layers, input_shape)

    rngs, modules, current, dtype = HostRngs(seed), [], shape, "float32"
    for index, layer in enumerate(layers):
        _check_declared(layer, index, current)
        if layer._module is None or getattr(layer, "_built_shape", None) != current:   # built layers keep weights
            layer._build_inputs = jax.ShapeDtypeStruct((1, *current), dtype)
            with _scope.building(rngs):
                layer._adopt(layer.make_module(current, rngs))
            layer._built_shape = current
        modules.append(layer._module)
        if type(layer).call is Layer.call:
            output = tuple(layer.compute_output_shape(current))
        else:
            output = tuple(jax.eval_shape(lambda x: layer(x), layer._build_inputs).shape[1:])
        layer._output_shape = (None, *output)
        current, dtype = output, layer.compute_dtype
    stack = Stack(modules, _unique_names(layers), shape, current)
    stack.eval()
    return stack


def keras_weight_variables(module: nnx.Module) -> list[nnx.Variable]:
    """The weights in Keras `get_weights` order, as NNX variables (set with `v[...] = array`).

    A Stack: per layer in order, that layer's `keras_weights`. A module with `keras_weights`:
    those. Any other NNX module: every nnx.Param and nnx.BatchStat in `nnx.iter_graph` order
    (depth first, attributes sorted by name, list items by index; shared variables once).
    """
    if isinstance(module, Stack):
        return [v for m in module.layers for v in keras_weight_variables(m)]
    if hasattr(module, "keras_weights"):
        return [getattr(module, n) for n in module.keras_weights
                if getattr(module, n, None) is not None]
    return [v for _, v in nnx.iter_graph(module) if isinstance(v, (nnx.Param, nnx.BatchStat))]


def regularization_penalty(module: nnx.Module):
    """Scalar float32: sum of `penalty()` over every submodule that defines it (0.0 if none)."""
    total = jnp.zeros((), jnp.float32)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module) and callable(getattr(node, "penalty", None)):
            total = total + node.penalty()
    return total
