"""Keras's functional API: `bf.Model(inputs, outputs)` from layers called on `bf.Input` tensors.

The model's module is a GraphModule: the built modules of its layers (each once, shared layers
included) and the recorded nodes in an order that computes every tensor after its inputs. It
takes one array or a dict {input name: array}, and gives one array or a dict {output name: array}:
lists of inputs and outputs are turned into these dicts at the model's boundary (see `Graph`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from batchfit.errors import describe
from batchfit.layers._symbolic import KerasTensor, Node, unique_name
from batchfit.layers._masking import makes_mask, run_masked
from batchfit.layers.base import run_module
from batchfit.model import Model

__all__ = ["Functional", "Graph", "GraphModule", "graph_from"]


def _tensors(tree) -> list[KerasTensor]:
    return [t for t in jax.tree.leaves(tree, is_leaf=lambda t: isinstance(t, KerasTensor))
            if isinstance(t, KerasTensor)]


def _input_node(tensor: KerasTensor) -> Node:
    if tensor.node is None:
        if tensor.input_layer is None:
            raise ValueError(f"{tensor} is not a bf.Input nor a layer's output.")
        tensor.node = Node(tensor.input_layer, None, (), {}, tensor)
        tensor.input_layer._nodes.append(tensor.node)
    return tensor.node


class Graph(NamedTuple):
    """A functional model's structure: its inputs and outputs as given (a tensor, a list or a dict), their
    names, the nodes in the order they run, and the layers in Keras's order (inputs first, by depth)."""

    inputs: object
    outputs: object
    input_names: tuple
    output_names: tuple
    nodes: tuple
    layers: tuple

    def x_as_module_input(self, x):
        """The user's x (an array, a list in the inputs' order, or a dict by input name) as the module takes it."""
        return _by_name(x, self.input_names, "x", "inputs")

    def y_as_module_output(self, y):
        """The user's y (likewise, by output) as the module's output is: one array, or a dict by output name."""
        return _by_name(y, self.output_names, "y", "outputs")

    def present(self, out):
        """The module's output in the structure of the model's `outputs` (a list stays a list)."""
        if isinstance(self.outputs, (list, tuple)) and isinstance(out, dict):
            return [out[name] for name in self.output_names]
        return out


def _by_name(data, names: tuple, what: str, role: str):
    """`data` in the module's structure: for one name, the array itself (also from a one-entry list or dict);
    for several, a dict by name. Anything else (a Dataset, a generator, None) passes as it is."""
    if len(names) == 1:
        if isinstance(data, dict) and set(data) == set(names):
            return data[names[0]]
        if isinstance(data, (list, tuple)) and len(data) == 1 and hasattr(data[0], "shape"):
            return data[0]
        return data
    if not isinstance(data, (dict, list, tuple)):
        return data                       # a Dataset, a generator, ...: its batches are dicts by name
    if isinstance(data, dict):
        if set(data) != set(names):
            raise ValueError(f"`{what}` is a dict with keys {sorted(data)}; this model's {role} are named "
                             f"{list(names)}. Use those keys, or a list in that order.")
        return dict(data)
    if len(data) == len(names):
        return dict(zip(names, data))
    raise ValueError(f"This model has {len(names)} {role} ({list(names)}); `{what}` must be a list of {len(names)} "
                     f"arrays in that order or a dict by name; got {describe(data)}.")


def _names(structure, tensors, role: str) -> tuple:
    if isinstance(structure, dict):
        return tuple(sorted(structure))        # the order jax.tree.leaves gives the dict's tensors
    if role == "inputs":
        names = tuple(t.name for t in tensors)
    else:
        names = tuple(t.node.layer.name for t in tensors)
    if len(set(names)) != len(names):
        raise ValueError(f"The model's {role} must have distinct names; got {list(names)}. Name the layers "
                         f"(name=...) that produce them.")
    return names


def _walk(outputs: list[KerasTensor]) -> list[Node]:
    """Every node the outputs depend on, each after the nodes that make its inputs (depth-first)."""
    order, seen = [], set()

    def visit(tensor):
        node = _input_node(tensor) if tensor.node is None else tensor.node
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in _tensors(node.inputs):
            visit(parent)
        order.append(node)

    for tensor in outputs:
        visit(tensor)
    return order


def _keras_layer_order(order: list[Node]) -> list:
    """The layers as Keras lists them: by depth from the outputs, deepest (the inputs) first."""
    index = {}
    for node in order:
        index.setdefault(id(node.layer), len(index))
    node_depth, layer_depth, layers = {}, {}, {}
    for node in reversed(order):
        depth = max(node_depth.get(id(node), 0), layer_depth.get(id(node.layer), 0))
        node_depth[id(node)] = layer_depth[id(node.layer)] = depth
        layers[id(node.layer)] = node.layer
        for parent in _tensors(node.inputs):
            parent_node = parent.node
            node_depth[id(parent_node)] = max(depth + 1, node_depth.get(id(parent_node), 0))
    return sorted(layers.values(), key=lambda layer: (-layer_depth[id(layer)], index[id(layer)]))


def graph_from(inputs, outputs) -> Graph:
    """Check `inputs` and `outputs` (bf.Input tensors and tensors computed from them) and order the graph."""
    input_tensors, output_tensors = _tensors(inputs), _tensors(outputs)
    if not input_tensors or not output_tensors:
        raise ValueError(f"Model(inputs, outputs) takes symbolic tensors: inputs from bf.Input(...), outputs from "
                         f"layers called on them; got inputs={describe(inputs)}, outputs={describe(outputs)}.")
    for tensor in input_tensors:
        if tensor.input_layer is None:
            raise ValueError(f"Model inputs must come from bf.Input(); {tensor} is a layer's output.")
        _input_node(tensor)
    order = _walk(output_tensors)
    known = {id(t) for t in input_tensors}
    for node in order:
        if node.inputs is None:
            if id(node.outputs) not in known:
                raise ValueError(f"Graph disconnected: the outputs need the input '{node.outputs.name}', which is "
                                 f"not in `inputs`. Add it to Model(inputs=[...]).")
            continue
        known.update(id(t) for t in _tensors(node.outputs))
    return Graph(inputs, outputs, _names(inputs, input_tensors, "inputs"),
                 _names(outputs, output_tensors, "outputs"), tuple(order), tuple(_keras_layer_order(order)))


class GraphModule(nnx.Module):
    """A functional model's module: runs the nodes of `graph` with its layers' modules."""

    def __init__(self, graph: Graph):
        self.graph = graph
        layers = [layer for layer in graph.layers]
        self.parts = nnx.List([layer._module_for_graph() for layer in layers])
        self.part_of = {id(layer): i for i, layer in enumerate(layers)}

    def __call__(self, x):
        graph, values, masks = self.graph, {}, {}      # masks: the Keras mask of a tensor, where it has one
        given = x if len(graph.input_names) > 1 else {graph.input_names[0]: x}
        for name, tensor in zip(graph.input_names, _tensors(graph.inputs)):
            values[id(tensor)] = given[name]
        for node in graph.nodes:
            part = self.parts[self.part_of[id(node.layer)]]
            if node.inputs is None:
                values[id(node.outputs)] = part(values[id(node.outputs)])
                continue
            args = jax.tree.map(lambda t: values[id(t)] if isinstance(t, KerasTensor) else t, node.inputs,
                                is_leaf=lambda t: isinstance(t, KerasTensor))
            inputs = _tensors(node.inputs)
            if not masks and not makes_mask(part):
                result, mask = run_module(part, args, node.args, node.kwargs), None
            else:
                given_masks = [masks.get(id(t)) for t in inputs]
                mask = None if all(m is None for m in given_masks) else (
                    given_masks[0] if len(inputs) == 1 else given_masks)
                result, mask = run_masked(part, args, mask, node.args, node.kwargs)
            outputs = _tensors(node.outputs)
            for tensor, value in zip(outputs, jax.tree.leaves(result)):
                values[id(tensor)] = value
            for tensor, m in zip(outputs, mask if isinstance(mask, (list, tuple)) else [mask]):
                if m is not None:
                    masks[id(tensor)] = m
        outputs = _tensors(graph.outputs)
        if len(outputs) == 1:
            return values[id(outputs[0])]
        return {name: values[id(t)] for name, t in zip(graph.output_names, outputs)}


class Functional(Model):
    """A model made by `bf.Model(inputs, outputs)` (Keras's Functional): see the module docstring."""

    def __init__(self, inputs=None, outputs=None, name=None, seed=None, **kwargs):
        super().__init__(name=name or unique_name("functional"), seed=seed, **kwargs)
        self._spec = graph_from(inputs, outputs)
        self.inputs, self.outputs = _tensors(inputs), _tensors(outputs)
        self._module = GraphModule(self._spec)

    def call(self, inputs, training=False):
        return self._present(run_module(self.module, self._structure_x(inputs), (), {"training": training}))

    @property
    def input_names(self) -> list:
        return list(self._spec.input_names)

    @property
    def output_names(self) -> list:
        return list(self._spec.output_names)

    def _weight_layers(self) -> list:
        return list(self._spec.layers)

    def _structure_x(self, x):
        return self._spec.x_as_module_input(x)

    def _structure_y(self, y):
        return self._spec.y_as_module_output(y)

    def _present(self, out):
        return self._spec.present(out)

    def get_config(self) -> dict:
        """Keras's functional config: the layers with their inbound nodes, and the input and output layers."""
        from batchfit import models
        return models.functional_config(self)
