"""model.summary(): Keras 3's table of layers (name (type), output shape, parameters, connections) and totals."""

from __future__ import annotations

import math
import shutil

import jax
import numpy as np

__all__ = ["print_summary"]


def _shape_text(layer) -> str:
    nodes = getattr(layer, "_nodes", [])
    if nodes:
        shapes = [t.shape for t in _leaves(nodes[0].outputs)]
    else:
        shape = getattr(layer, "_output_shape", None)
        if shape is None:
            return "?"
        shapes = [shape]
    text = ", ".join(str(tuple(s)) for s in shapes)
    return text if len(shapes) == 1 else f"[{text}]"


def _leaves(tree):
    from batchfit.layers._symbolic import KerasTensor
    return [t for t in jax.tree.leaves(tree, is_leaf=lambda t: isinstance(t, KerasTensor)) if isinstance(t, KerasTensor)]


def _connections(layer) -> str:
    names = []
    for node in getattr(layer, "_nodes", [])[:1]:
        for tensor in _leaves(node.inputs):
            producer = tensor.node.layer if tensor.node is not None else tensor.input_layer
            index = producer._nodes.index(tensor.node) if tensor.node in producer._nodes else 0
            names.append(f"{producer.name}[{index}][{tensor.index}]")
    return ", ".join(names) or "-"


def _size(handles) -> tuple[int, int]:
    count = sum(math.prod(h.shape) for h in handles)
    return int(count), int(sum(math.prod(h.shape) * np.dtype(h.dtype).itemsize for h in handles))


def _readable(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024


def _optimizer_size(model) -> tuple[int, int] | None:
    """Keras counts an optimizer's slots (arrays shaped like the weights), its iteration count and its rate."""
    if model._settings is None or model._slot is None or model._slot.state.opt_state is None:
        return None
    shapes = {tuple(np.shape(p)) for p in jax.tree.leaves(model._slot.state.params)}
    slots = [leaf for leaf in jax.tree.leaves(model._slot.state.opt_state)
             if np.ndim(leaf) > 0 and tuple(np.shape(leaf)) in shapes]
    count = sum(int(np.size(leaf)) for leaf in slots) + 2
    return count, sum(int(np.size(leaf)) * np.dtype(leaf.dtype).itemsize for leaf in slots) + 8


def print_summary(model, line_length=None, positions=None, print_fn=None) -> None:
    import rich.console
    import rich.markup
    import rich.table

    model.built                                   # a Sequential with a declared shape builds now
    layers = model.layers
    sequential_like = not hasattr(model, "_spec") or (
        len(model._spec.input_names) == 1 and all(len(_leaves(n.inputs)) <= 1 for n in model._spec.nodes
                                                  if n.inputs is not None))
    if sequential_like:
        header, width, positions = ["Layer (type)", "Output Shape", "Param #"], 88, positions or [0.45, 0.80, 1.0]
    else:
        header, width = ["Layer (type)", "Output Shape", "Param #", "Connected to"], 108
        positions = positions or [0.3, 0.56, 0.74, 1.0]
    line_length = line_length or min(width, shutil.get_terminal_size().columns - 4)
    widths = [int(p * line_length) - int(q * line_length) for p, q in zip(positions, [0, *positions[:-1]])]
    columns = [rich.table.Column(name, justify="right" if name == "Param #" else "left", width=w)
               for name, w in zip(header, widths)]
    table = rich.table.Table(*columns, width=line_length, show_lines=True)
    for layer in layers:
        built = model.built and (getattr(layer, "built", True))
        params = f"{layer.count_params():,}" if built else "0 (unbuilt)"
        row = [f"{rich.markup.escape(layer.name)} ({type(layer).__name__})", _shape_text(layer), params]
        if not sequential_like:
            row.append(_connections(layer))
        table.add_row(*row)

    trainable = _size(model.trainable_weights) if model.built else (0, 0)
    frozen = _size(model.non_trainable_weights) if model.built else (0, 0)
    optimizer = _optimizer_size(model)
    total = [a + b + (optimizer[i] if optimizer else 0) for i, (a, b) in enumerate(zip(trainable, frozen))]
    console = rich.console.Console(highlight=False, force_terminal=False if print_fn else None,
                                   color_system=None if print_fn else "auto")
    if print_fn:
        console.begin_capture()
    console.print(f'Model: "{rich.markup.escape(model.name)}"')
    console.print(table)
    lines = [("Total", total), ("Trainable", trainable), ("Non-trainable", frozen)]
    if optimizer:
        lines.append(("Optimizer", optimizer))
    for label, (count, size) in lines:
        console.print(f" {label} params: {count:,} ({_readable(size)})")
    if print_fn:
        print_fn(console.end_capture())
