"""Symbolic tensors (`bf.Input`) and the nodes layers record when called on them: Keras's functional API.

`x = bf.Input((10,)); y = Dense(4)(x)` builds Dense for inputs [B, 10] right away and records a
Node (the layer, its symbolic inputs and outputs). `bf.Model(inputs, outputs)` later walks the
nodes back from its outputs (batchfit/functional.py).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

__all__ = ["KerasTensor", "Node", "Input", "is_symbolic", "call_layer", "single_node", "unique_name"]

_counts: dict[str, itertools.count] = {}


def unique_name(base: str) -> str:
    """Keras's automatic names: "dense", "dense_1", "dense_2", ... per base name, for the process."""
    count = next(_counts.setdefault(base, itertools.count()))
    return base if count == 0 else f"{base}_{count}"


class KerasTensor:
    """A symbolic tensor: `shape` (batch axis first, None), `dtype`; made by `bf.Input` or by a layer."""

    def __init__(self, shape, dtype, name: str | None = None, node: "Node | None" = None, index: int = 0):
        self.shape, self.dtype, self.name = tuple(shape), np.dtype(dtype).name, name
        self.node, self.index = node, index
        self.input_layer = None            # for a bf.Input: its InputLayer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __bool__(self):
        raise TypeError("A symbolic tensor (bf.Input or a layer's output on one) has no value: it only "
                        "describes the model's graph. Use layers on it, and bf.Model(inputs, outputs).")

    def _operator(self, name: str, *others):
        raise TypeError(f"`{name}` on a symbolic tensor: write the arithmetic in a layer (a bf.layers.Lambda "
                        f"or a custom Layer's call), or use layers such as bf.layers.Add on the tensors.")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __matmul__ = (
        lambda self, *o: self._operator("arithmetic"))
    __getitem__ = lambda self, i: self._operator("indexing")


class Node(NamedTuple):
    """One call of `layer` on symbolic `inputs` (a pytree of KerasTensors) giving `outputs`."""

    layer: Any
    inputs: Any
    args: tuple
    kwargs: dict
    outputs: Any


def _is_tensor(x) -> bool:
    return isinstance(x, KerasTensor)


def is_symbolic(inputs) -> bool:
    return any(_is_tensor(leaf) for leaf in jax.tree.leaves(inputs, is_leaf=_is_tensor))


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None, **kwargs):  # noqa: N802
    """Keras's `Input`: a symbolic input [B, *shape] for a functional model (or the first entry of a Sequential)."""
    from batchfit.layers.core import InputLayer
    unknown = set(kwargs) - {"sparse", "tensor", "optional", "ragged"}
    if unknown:
        raise TypeError(f"Input() got unexpected keyword arguments {sorted(unknown)}; it takes shape, batch_size, "
                        f"dtype, name and batch_shape.")
    if kwargs.get("sparse") or kwargs.get("ragged") or kwargs.get("tensor") is not None:
        raise ValueError("Input(sparse=/ragged=/tensor=) is not supported by batchfit: inputs are dense arrays.")
    if batch_shape is not None:
        batch_size, shape = batch_shape[0], tuple(batch_shape[1:])
    if shape is None:
        raise ValueError("Input() needs `shape`, the shape of one sample without the batch axis, e.g. shape=(28, 28).")
    layer = InputLayer(shape=shape, dtype=dtype, name=name or unique_name("input_layer"))
    tensor = KerasTensor((batch_size, *layer.input_shape), _input_dtype(layer), layer.name)
    tensor.input_layer = layer
    return tensor


def _input_dtype(layer) -> str:
    return layer.compute_dtype


def _spec(tensor: KerasTensor):
    return jax.ShapeDtypeStruct((2, *tensor.shape[1:]), tensor.dtype)


def call_layer(layer, inputs, args: tuple, kwargs: dict):
    """A layer called on symbolic tensors: build it for their shapes, work out its outputs, record the node."""
    from batchfit.layers.base import run_module
    if any(d is None for t in jax.tree.leaves(inputs, is_leaf=_is_tensor) if _is_tensor(t) for d in t.shape[1:]):
        raise ValueError(f"{type(layer).__name__} '{layer.name}' was called on a symbolic tensor with an unknown "
                         f"size other than the batch axis ({inputs}); give bf.Input a full shape.")
    specs = jax.tree.map(lambda t: _spec(t) if _is_tensor(t) else t, inputs, is_leaf=_is_tensor)
    module = layer._module_for(specs)
    graph, state = nnx.split(module)

    def run(state, specs):
        return run_module(nnx.merge(graph, state), specs, args, kwargs)

    try:
        out = jax.eval_shape(run, state, specs)
    except Exception as e:  # noqa: BLE001 - re-raised with the layer named
        raise ValueError(f"{type(layer).__name__} '{layer.name}' cannot run on {inputs}: {e}") from e
    leaves, treedef = jax.tree.flatten(out)
    node = Node(layer, inputs, tuple(args), dict(kwargs), None)
    tensors = [KerasTensor((None, *o.shape[1:]), o.dtype, f"{layer.name}_output{'' if i == 0 else i}", node, i)
               for i, o in enumerate(leaves)]
    node = node._replace(outputs=jax.tree.unflatten(treedef, tensors))
    for t in tensors:
        t.node = node
    layer._nodes.append(node)
    return node.outputs


def single_node(layer, what: str) -> Node:
    if len(layer._nodes) != 1:
        raise AttributeError(f"`{type(layer).__name__}.{what}` needs a layer called exactly once on symbolic "
                             f"tensors (bf.Input); '{layer.name}' was called {len(layer._nodes)} times.")
    return layer._nodes[0]
