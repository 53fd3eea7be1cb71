"""Lambda: a JAX-traceable function as a layer, inside the compiled step.

A Lambda's config names its function (module and qualified name) and finds it again, when
loaded, in a module that is already imported. A Python lambda or a nested function has no such
name: batchfit writes configs as JSON and never serializes bytecode, so `get_config()` refuses
it with an error that says what to do instead.
"""

from __future__ import annotations

import functools
import inspect
import sys

import jax
from flax import nnx

from batchfit.layers.base import Layer, _autocast, _jax_dtype, _shape

__all__ = ["Lambda"]


def _is_shape(value) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) for d in value)


class LambdaModule(nnx.Module):
    """Built `Lambda`: `function(inputs, **arguments)`, given `training=` when its signature asks for it."""

    keras_weights = ()

    def __init__(self, function, takes: frozenset, compute_dtype="float32"):
        self.function, self.takes, self.deterministic = function, takes, True
        self.takes_mask = "mask" in takes
        self.compute_dtype = _jax_dtype(compute_dtype)

    def __call__(self, inputs, mask=None):
        inputs = jax.tree.map(lambda x: _autocast(x, self.compute_dtype), inputs)
        extra = {"training": not self.deterministic, "mask": mask}
        return self.function(inputs, **{k: v for k, v in extra.items() if k in self.takes})

    def compute_mask(self, inputs, mask=None):
        """No mask goes past a Lambda, as in Keras (its `mask` argument is not supported)."""
        return None


def _reference(function, owner: str, what: str) -> dict:
    """`function` as {"module", "class_name": "function", "config": qualified name}, when it has that name."""
    name, module = getattr(function, "__qualname__", None), getattr(function, "__module__", None)
    if not isinstance(name, str) or "<" in name or not module or _resolve_name(module, name) is not function:
        kind = "a Python lambda" if name and "<lambda>" in name else f"{function!r}, which has no importable name"
        raise ValueError(f"{owner}: its `{what}` is {kind}, and cannot be saved: batchfit writes configs as JSON "
                         f"and does not serialize Python bytecode. Define the function with `def` at the top "
                         f"level of a module (it is saved by name and found again once that module is imported), "
                         f"or write a Layer subclass with call(self, inputs).")
    return {"module": module, "class_name": "function", "config": name}


def _resolve_name(module: str, name: str):
    found = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    return found


def _resolved(value, what: str):
    """A callable as given, or the one a saved reference names (in an already imported module)."""
    if not isinstance(value, dict):
        return value
    if value.get("class_name") == "__lambda__":
        raise ValueError(f"Lambda: this `{what}` was saved by Keras as Python bytecode, which batchfit does not "
                         f"load. Define the function with `def` and build the layer with it.")
    found = _resolve_name(str(value.get("module")), str(value.get("config")))
    if not callable(found):
        raise ValueError(f"Lambda: the saved `{what}` {value.get('config')!r} of module {value.get('module')!r} "
                         f"is not found: import that module (or define the function) before loading.")
    return found


class Lambda(Layer):
    """Wraps `function(inputs, **arguments)` (JAX-traceable: jnp, jax.nn, bf.ops) as a layer; the
    output shape is inferred with jax.eval_shape. `output_shape` (per sample, or a function of the
    full input shape), when given, is checked against it. `mask` is not supported."""

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        self.function = _resolved(function, "function")
        if not callable(self.function):
            raise TypeError(f"Lambda: `function` must be callable; got {type(function).__name__}. "
                            f"Pass e.g. Lambda(lambda x: x ** 2).")
        if mask is not None:
            raise ValueError("Lambda: `mask` is not supported by batchfit, which has no masks; drop mask=.")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"Lambda: `arguments` must be a dict of keyword arguments for the function, or None; "
                            f"got {type(arguments).__name__}. Pass e.g. arguments={{'alpha': 0.5}}.")
        self.arguments = dict(arguments or {})
        output_shape = _resolved(output_shape, "output_shape")
        self._declared_shape = output_shape if output_shape is None or callable(output_shape) else _shape(
            output_shape, "output_shape", "Lambda")
        try:
            self._takes = frozenset(inspect.signature(self.function).parameters) & {"training", "mask"}
        except (TypeError, ValueError):      # some builtins have no signature
            self._takes = frozenset()

    def _bound(self):
        return functools.partial(self.function, **self.arguments) if self.arguments else self.function

    def compute_output_shape(self, input_shape):
        """Per-sample output shape(s), from jax.eval_shape of the function on inputs [2, *input_shape]."""
        specs = jax.tree.map(lambda s: jax.ShapeDtypeStruct((2, *s), self.compute_dtype), input_shape,
                             is_leaf=_is_shape)
        module = LambdaModule(self._bound(), self._takes, self.compute_dtype)
        try:
            out = jax.eval_shape(module, specs)
        except Exception as e:  # noqa: BLE001 - re-raised with the layer named
            raise ValueError(f"Lambda '{self.name}' could not run its function on inputs of per-sample shape "
                             f"{input_shape}: {type(e).__name__}: {e}. The function must be JAX-traceable "
                             f"(jnp, jax.nn, bf.ops on the values; no NumPy or float() of them).") from e
        shapes = jax.tree.map(lambda o: tuple(o.shape[1:]), out)
        self._check_declared(input_shape, shapes)
        return shapes

    def _check_declared(self, input_shape, shapes) -> None:
        declared = self._declared_shape
        if callable(declared):
            full = jax.tree.map(lambda s: (None, *s), input_shape, is_leaf=_is_shape)
            declared = tuple(declared(full))[1:]
        if declared is not None and _is_shape(shapes) and (len(declared) != len(shapes) or any(
                d is not None and d != s for d, s in zip(declared, shapes))):
            raise ValueError(f"Lambda '{self.name}': output_shape={declared} (per sample) differs from the shape "
                             f"its function gives, {shapes}. Fix output_shape, or drop it to infer the shape.")

    def make_module(self, input_shape, rngs: nnx.Rngs) -> LambdaModule:
        self.compute_output_shape(input_shape)
        return LambdaModule(self._bound(), self._takes, self.compute_dtype)

    def get_config(self) -> dict:
        """The config, with `function` (and a callable `output_shape`) as references by name; a Python
        lambda or nested function raises ValueError (it cannot be written as JSON)."""
        config = super().get_config()
        owner = f"Lambda '{self.name}'"
        config["config"]["function"] = _reference(self.function, owner, "function")
        if callable(self._declared_shape):
            config["config"]["output_shape"] = _reference(self._declared_shape, owner, "output_shape")
        return config
