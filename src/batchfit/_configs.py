"""The configs of models and layers (Keras's layout): what get_config, from_config, to_json and the
.keras file hold. batchfit/models.py describes the formats and has the public functions."""

from __future__ import annotations

import inspect
import json


from batchfit import saving
from batchfit.errors import describe
from batchfit.functional import Functional, _tensors
from batchfit.layers._symbolic import Input, KerasTensor
from batchfit.layers.base import LAYERS
from batchfit.model import Model
from batchfit.sequential import Sequential


# ----- layers ---------------------------------------------------------------------------------

def _takes(cls, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def layer_entry(layer) -> dict:
    """{"module", "class_name", "config", "name"} of a layer (a model used as a layer: its model entry)."""
    if isinstance(layer, Model):
        return {**model_entry(layer), "name": layer.name}
    config = layer.get_config()
    if "class_name" in config and isinstance(config.get("config"), dict):   # batchfit's base get_config,
        extra = {k: v for k, v in config.items() if k not in ("class_name", "config")}   # perhaps .update()d
        config = {**config["config"], **extra}
    if _takes(type(layer), "name"):
        config["name"] = layer.name
    config = saving.to_json(config, f"The config of {type(layer).__name__} '{layer.name}'")
    return {"module": type(layer).__module__, "class_name": type(layer).__name__, "config": config,
            "name": layer.name}


def layer_from_entry(entry: dict, custom_objects: dict | None = None):
    """The layer (or model) `layer_entry` described; `custom_objects` {class name: class} come first."""
    name = entry["class_name"]
    cls = (custom_objects or {}).get(name)
    if cls is None and name in LAYERS:
        cls = LAYERS.get(name)
    if cls is None and (name in saving.MODELS or name in ("Functional", "Sequential")):
        return model_from_entry(entry, custom_objects)
    if cls is None:
        raise ValueError(f"Unknown layer class '{name}' in the saved config. Define or import it before "
                         f"loading (bf.layers.Layer subclasses register themselves by class name), or pass "
                         f"custom_objects={{'{name}': {name}}}.")
    if isinstance(cls, type) and issubclass(cls, Model):
        return model_from_entry(entry, custom_objects)
    config = entry["config"]
    if not _takes(cls, "name"):
        config = {k: v for k, v in config.items() if k != "name"}
    return cls.from_config(config) if hasattr(cls, "from_config") else cls(**config)


# ----- Sequential -----------------------------------------------------------------------------

def sequential_config(model: Sequential) -> dict:
    shape = [None, *model.module.input_shape] if model.built else None
    return {"name": model.name, "trainable": True, "seed": model.seed,
            "layers": [layer_entry(layer) for layer in model._layers], "build_input_shape": shape}


def sequential_from_config(cls, config: dict, custom_objects=None) -> Sequential:
    layers = [layer_from_entry(entry, custom_objects) for entry in config["layers"]]
    model = cls(layers, seed=config.get("seed"), name=config.get("name"))
    if config.get("build_input_shape") is not None:
        model.build(tuple(config["build_input_shape"]))
    return model


# ----- Functional -----------------------------------------------------------------------------

def functional_config(model: Functional) -> dict:
    graph = model._spec
    in_graph = {id(node) for node in graph.nodes}
    own_nodes = {id(layer): [n for n in layer._nodes if id(n) in in_graph] for layer in graph.layers}
    index = {id(n): i for nodes in own_nodes.values() for i, n in enumerate(nodes)}

    def history(tensor):
        return [tensor.node.layer.name, index[id(tensor.node)], tensor.index]

    def tensors_as_json(value, io=False):
        if isinstance(value, KerasTensor):
            return history(value) if io else {"class_name": "__keras_tensor__", "config": {
                "shape": list(value.shape), "dtype": value.dtype, "keras_history": history(value)}}
        if isinstance(value, (list, tuple)):
            return [tensors_as_json(v, io) for v in value]
        if isinstance(value, dict):
            return {k: tensors_as_json(v, io) for k, v in value.items()}
        return value

    layers = []
    for layer in graph.layers:
        entry = layer_entry(layer)
        entry["inbound_nodes"] = [{"args": tensors_as_json([node.inputs, *node.args]),
                                   "kwargs": tensors_as_json(node.kwargs)}
                                  for node in own_nodes[id(layer)] if node.inputs is not None]
        layers.append(entry)
    return saving.to_json({"name": model.name, "trainable": True, "layers": layers,
                           "input_layers": tensors_as_json(graph.inputs, io=True),
                           "output_layers": tensors_as_json(graph.outputs, io=True)},
                          f"The config of the functional model '{model.name}'")


def _is_history(value) -> bool:
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(i, int) for i in value[1:]))


def functional_from_config(cls, config: dict, custom_objects=None) -> Functional:
    """The functional model of `config`: each layer from its config, called on the rebuilt tensors."""
    tensors, layers, pending = {}, {}, []
    for entry in config["layers"]:
        name = entry["name"]
        if entry["class_name"] == "InputLayer" and not entry.get("inbound_nodes"):
            c = entry["config"]
            shape = c.get("shape") or c.get("input_shape") or (c.get("batch_shape") or [None])[1:]
            tensors[(name, 0, 0)] = Input(shape=tuple(shape), dtype=c.get("dtype"), name=name)
            continue
        layers[name] = layer_from_entry(entry, custom_objects)
        pending += [(name, i, node) for i, node in enumerate(entry.get("inbound_nodes", []))]

    def rebuilt(value, io=False):
        if io and _is_history(value) or isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return tensors[tuple(value if io else value["config"]["keras_history"])]
        if isinstance(value, list):
            return [rebuilt(v, io) for v in value]
        if isinstance(value, dict):
            return {k: rebuilt(v, io) for k, v in value.items()}
        return value

    done = {}
    while pending:
        ready = [item for item in pending if done.get(item[0], 0) == item[1]]
        progressed = False
        for item in ready:
            name, i, node = item
            try:
                args, kwargs = rebuilt(node["args"]), rebuilt(node["kwargs"])
            except KeyError:              # an input made by a node not rebuilt yet
                continue
            out = layers[name](*args, **kwargs)
            tensors.update({(name, i, k): t for k, t in enumerate(_tensors(out))})
            done[name], progressed = i + 1, True
            pending.remove(item)
        if not progressed:
            raise ValueError(f"The functional config cannot be rebuilt: the nodes of {sorted({p[0] for p in pending})} "
                             f"use tensors that no layer in the config makes.")
    return cls(rebuilt(config["input_layers"], io=True), rebuilt(config["output_layers"], io=True),
               name=config.get("name"))


# ----- any model: get_config / from_config / entries ------------------------------------------

def get_config(model) -> dict:
    """Model.get_config() for Sequential, functional and subclassed models (JSON types)."""
    if isinstance(model, Sequential):
        return saving.to_json(sequential_config(model), f"The config of '{model.name}'")
    if isinstance(model, Functional):
        return functional_config(model)
    if not model._subclassed():
        raise TypeError(f"get_config() describes a model by its layers; bf.Model(module) wraps an NNX module "
                        f"({describe(model._module)}), which has no config. Keep the module's code, and save "
                        f"its weights with model.save_weights('w.weights.h5').")
    return {"name": model.name, "trainable": True}


def from_config(cls, config: dict, custom_objects=None):
    """Model.from_config: a functional config for Model / Functional, a Sequential's for Sequential, and a
    subclass's own config (its constructor's arguments) for a subclass."""
    if isinstance(config, dict) and "input_layers" in config and "layers" in config and (
            cls is Model or issubclass(cls, Functional)):
        return functional_from_config(Functional if cls is Model else cls, config, custom_objects)
    if issubclass(cls, Sequential):
        return sequential_from_config(cls, config, custom_objects)
    if cls is Model or cls is Functional:
        raise ValueError(f"{cls.__name__}.from_config() takes a functional model's config (with 'layers', "
                         f"'input_layers' and 'output_layers'); got keys {sorted(config)}.")
    parameters = inspect.signature(cls.__init__).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        config = {k: v for k, v in config.items() if k in {p.name for p in parameters}}
    try:
        return cls(**config)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}.from_config() could not call {cls.__name__}(**config) with the config "
                        f"keys {sorted(config)}: {e}. Define {cls.__name__}.get_config() returning its "
                        f"constructor's arguments (start from super().get_config()), as in Keras.") from e


def model_entry(model) -> dict:
    """{"module", "class_name", "config", "build_config"}: what to_json() writes."""
    entry = {"module": type(model).__module__, "class_name": type(model).__name__, "config": model.get_config()}
    built_on = getattr(model, "_built_on", None)
    if built_on is not None and not isinstance(model, (Sequential, Functional)):
        entry["build_config"] = {"input_spec": built_on}
    return entry


def _model_class(name: str, custom_objects):
    found = (custom_objects or {}).get(name) or {"Functional": Functional, "Sequential": Sequential}.get(name)
    if found is None and name in saving.MODELS:
        found = saving.MODELS.get(name)
    if found is None:
        raise ValueError(f"Unknown model class '{name}': the saved model is a subclass of bf.Model that is not "
                         f"defined in this program. Import or define {name} before loading (bf.Model subclasses "
                         f"register themselves by class name), or pass custom_objects={{'{name}': {name}}}.")
    return found


def model_from_entry(entry: dict, custom_objects=None):
    """The model a model entry describes, built (fresh weights) when the entry says on what."""
    cls = _model_class(entry["class_name"], custom_objects)
    if getattr(cls.from_config, "__func__", None) is Model.from_config.__func__:
        model = cls.from_config(entry["config"], custom_objects)
    else:                                     # the user's own from_config(config)
        model = cls.from_config(entry["config"])
    spec = (entry.get("build_config") or {}).get("input_spec")
    if spec is not None and not model.built:
        model._executables(saving.zeros_like_spec(spec))
    return model


def model_from_json(json_string: str, custom_objects=None):
    """The model `model.to_json()` described, with fresh weights, not compiled (Keras's model_from_json)."""
    return model_from_entry(json.loads(json_string), custom_objects)


def clone_model(model, input_tensors=None, clone_function=None, call_function=None, recursive=False, **kwargs):
    """A model of the same architecture with fresh weights (drawn from a new seed), not compiled."""
    if input_tensors is not None or clone_function is not None or call_function is not None or kwargs:
        raise ValueError("clone_model() in batchfit takes only the model: input_tensors, clone_function and "
                         "call_function are not supported. Build the new model yourself for those.")
    entry = model_entry(model)
    if isinstance(model, Sequential):
        entry["config"] = {**entry["config"], "seed": None}
    return model_from_entry(entry)
