"""Layers written as Keras writes them: `build(input_shape)` with `self.add_weight(...)`, and `call(inputs)`.

The layer stays a plain Python object; its weights live in a CustomModule (an NNX module) made
when the input shape is first known. The module runs the layer's `call` with the layer's weight
handles and sublayers bound to its own parts (layers/_scope.py), so the same `call` runs eagerly,
inside a compiled step (on the step's copy), and under `jax.grad`.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import regularizers
from batchfit.errors import describe
from batchfit.layers import _scope
from batchfit.layers.base import Layer, _autocast, _jax_dtype
from batchfit.layers.initializers import get_initializer, initial_value
from batchfit.layers.variable import NonTrainable, Variable, unique

__all__ = ["CustomModule", "add_weight", "weight_handles", "set_weights", "sublayers"]

_under_construction: list = []     # the CustomModule whose layer's build() is running


class CustomModule(nnx.Module):
    """A custom layer's weights (`weights`, by name) and its sublayers' modules (`children`)."""

    takes_call_arguments = True

    def __init__(self, layer: Layer, input_shape, rngs):
        self.layer, self.deterministic = layer, True
        self.weights, self.handle_names, self.regularized = nnx.Dict(), (), ()
        layer._weight_handles = []
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        batch_shape = ([(None, *s) for s in input_shape] if isinstance(input_shape, list)
                       else (None, *input_shape))
        _under_construction.append((self, rngs))
        try:
            for handle, regularizer in layer._pending:
                self._keep(handle, regularizer)
            layer._pending = []
            with _scope.building(rngs):
                layer.build(batch_shape)
                zeros = jax.tree.map(lambda s: jnp.zeros((1, *s.shape[1:]), s.dtype), layer._build_inputs,
                                     is_leaf=lambda a: hasattr(a, "shape"))
                layer.call(zeros, **_training_argument(layer, False))       # builds the sublayers it calls
        finally:
            _under_construction.pop()
        self._bind_parts(sublayers(layer))

    def _keep(self, handle: Variable, regularizer) -> None:
        self.weights[handle.name] = handle._home
        self.handle_names += ((id(handle), handle.name),)
        self.layer._weight_handles.append(handle)
        if regularizer is not None:
            self.regularized += ((handle.name, regularizer),)

    def _bind_parts(self, children) -> None:
        built = [c for c in children if _module_of(c) is not None]
        self.children = nnx.List([_module_of(c) for c in built])
        self.child_ids = tuple(id(c) for c in built)

    def __call__(self, inputs, *args, **kwargs):
        inputs = jax.tree.map(lambda x: _autocast(x, self.compute_dtype), inputs)
        parts = {key: self.weights[name] for key, name in self.handle_names}
        parts.update(zip(self.child_ids, self.children))
        kwargs = {**_training_argument(self.layer, not self.deterministic), **kwargs}
        with _scope.bind(parts):
            return self.layer.call(inputs, *args, **kwargs)

    def penalty(self):
        total = jnp.zeros((), jnp.float32)
        for name, regularizer in self.regularized:
            total = total + jnp.asarray(regularizer(self.weights[name][...].astype(jnp.float32)), jnp.float32)
        return total


def _training_argument(layer, training: bool) -> dict:
    parameters = inspect.signature(layer.call).parameters
    return {"training": training} if "training" in parameters else {}


def _module_of(obj):
    module = getattr(obj, "_module", None)
    return module if isinstance(module, nnx.Module) else None


def sublayers(owner) -> list:
    """The layers (and models) an object holds in its attributes, lists, tuples and dicts, in order, once each."""
    from batchfit._shell import Shell
    found, seen = [], set()

    def visit(value, depth=0):
        if isinstance(value, (Layer, Shell)):
            if id(value) not in seen and value is not owner:
                seen.add(id(value))
                found.append(value)
        elif isinstance(value, (list, tuple)) and depth < 3:
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict) and depth < 3:
            for item in value.values():
                visit(item, depth + 1)

    for name, value in vars(owner).items():
        if not name.startswith("_") or name == "_layers":
            visit(value)
    return found


def add_weight(layer: Layer, shape, initializer, dtype, trainable, name, regularizer, constraint, extra) -> Variable:
    """Keras's `add_weight`: drawn now (from the model's random streams when it is being built)."""
    unknown = set(extra) - {"autocast", "aggregation", "synchronization", "use_resource"}
    if unknown:
        raise TypeError(f"add_weight() got unexpected keyword arguments {sorted(unknown)}.")
    if constraint is not None:
        raise ValueError(f"add_weight(constraint=...) is not supported by batchfit ({type(layer).__name__} "
                         f"'{layer.name}'); apply the constraint in call(), e.g. ops.clip on the weight.")
    shape = () if shape is None else tuple(int(d) for d in shape)
    dtype = _jax_dtype(np.dtype(dtype).name if dtype is not None else layer.variable_dtype)
    if initializer is None:
        initializer = "glorot_uniform" if jnp.issubdtype(dtype, jnp.floating) else "zeros"
    module, rngs = _under_construction[-1] if _under_construction and _under_construction[-1][0].layer is layer \
        else (None, _scope.build_rngs())
    value = initial_value(get_initializer(initializer), rngs.params(), shape, dtype)
    kind = nnx.Param if trainable else NonTrainable
    name = name or f"variable_{len(module.handle_names) if module is not None else len(layer._pending)}"
    handle = Variable(kind(value), name, f"{layer.name}/{name}", layer)
    regularizer = regularizers.get(regularizer)
    if module is not None:
        if name in module.weights:
            raise ValueError(f"{type(layer).__name__} '{layer.name}' already has a weight named '{name}'; give "
                             f"each add_weight() its own name.")
        module._keep(handle, regularizer)
    else:
        layer._pending.append((handle, regularizer))
    return handle


def _own_handles(layer: Layer) -> list:
    module = layer._module
    if isinstance(module, CustomModule):
        handles = list(layer._weight_handles)
        return [h for h in handles if h.trainable] + [h for h in handles if not h.trainable]
    if module is None:
        return [h for h, _ in layer._pending]
    cached = getattr(layer, "_handles", None)
    if cached is None or cached[0] is not module:
        from batchfit.layers.stack import keras_weight_variables
        handles = []
        for variable in keras_weight_variables(module):
            name = next((k for k in getattr(module, "keras_weights", ()) if getattr(module, k, None) is variable),
                        f"variable_{len(handles)}")
            handle = Variable(variable, name, f"{layer.name}/{name}", layer)
            handles.append(handle)
        layer._handles = cached = (module, handles)
    return cached[1]


def weight_handles(layer: Layer) -> list:
    """The layer's weights, Keras's order: its own (trainable, then not), then each sublayer's."""
    for owner in list(getattr(layer, "_owners", ())):
        owner._sync_module()
    return unique(_own_handles(layer) + [h for sub in _children(layer) for h in sub.weights])


def _children(layer: Layer) -> list:
    return sublayers(layer) if isinstance(layer._module, CustomModule) else []


def set_weights(handles: list, weights, owner: str) -> None:
    """Set the weights `handles` from arrays in their order; `owner` names the layer or model in errors.
    Nothing is set unless every array fits."""
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{owner}.set_weights() takes a list of arrays in get_weights() order; got "
                        f"{describe(weights)}.")
    expected, got = [h.shape for h in handles], [tuple(np.shape(w)) for w in weights]
    if expected != got:
        raise ValueError(f"{owner}.set_weights() expects {len(expected)} arrays with shapes {expected}; got "
                         f"{len(got)} with shapes {got}. Use the list get_weights() returns.")
    for handle, value in zip(handles, weights):
        handle._home[...] = jax.device_put(np.asarray(value, handle.dtype))    # a transfer, no compile
    _scope.note_edit()
