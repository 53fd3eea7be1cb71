"""Sequential: a stack of Keras-style layers, and bf.load_model (batchfit/models.py has the .keras logic)."""

from __future__ import annotations

import json
import os
import warnings

from batchfit import activations as activations_lib
from batchfit import layers as layers_lib
from batchfit import saving
from batchfit.errors import describe
from batchfit.layers._symbolic import KerasTensor
from batchfit.model import Model

__all__ = ["Sequential", "load_model"]


class Sequential(Model):
    """A stack of Keras-style layers: `Sequential([Dense(16, activation="relu", input_shape=(10,)), ...])`.

    Built when the input shape is known: from the first layer's `input_shape`, or from the
    first batch it sees. `seed` fixes the initial weights and the dropout masks.
    """

    def __init__(self, layers=None, seed: int | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, seed=seed, **kwargs)
        self._layers = []
        for layer in layers or []:
            self.add(layer)
        self.built                  # as Keras does: built now when the first layer declares its input shape

    @property
    def layers(self) -> list:
        """The layers, as Keras lists them (an InputLayer is not one)."""
        return [layer for layer in self._layers if not isinstance(layer, layers_lib.InputLayer)]

    def _weight_layers(self) -> list:
        return self.layers

    def add(self, layer):
        """Append a layer (or a bf.Input, which declares the input shape). A model that has run keeps the
        weights of its layers; its compiled programs and optimizer state start again."""
        if isinstance(layer, KerasTensor):
            layer = layer.input_layer
            if layer is None or self._layers:
                raise ValueError("Sequential takes a bf.Input only as its first entry.")
        if not isinstance(layer, layers_lib.Layer):
            raise TypeError(f"Sequential takes batchfit layers (bf.layers.Dense, ...); got {describe(layer)}. "
                            f"Wrap an NNX module with bf.Model(module) instead.")
        self._layers.append(layer)
        self._changed()

    def pop(self):
        """Remove the last layer and return it."""
        if not self.layers:
            raise TypeError("There are no layers in the model to pop.")
        layer = self._layers.pop()
        self._changed()
        return layer

    def _changed(self):
        self._sync_module()
        self._module = self._graph = self._exe = self._slot = None     # built again, keeping built layers
        self._outputs, self._layouts = {}, {}

    @property
    def built(self) -> bool:
        if self._module is None and self._layers and self._layers[0].input_shape is not None:
            self._build_for(self._layers[0].input_shape)
        return self._module is not None

    def build(self, input_shape=None):
        """Create the weights for inputs of `input_shape`: Keras's batch shape, `(None, 10)`, or
        the per-sample shape, `(10,)`. A model built already keeps its weights."""
        if input_shape is None:
            if not self.built:
                raise ValueError("build() needs input_shape: this Sequential does not declare one.")
            return
        shape = tuple(input_shape)
        if shape and shape[0] is None:             # Keras: the batch axis first, left open
            shape = shape[1:]
        if self._module is not None:
            if shape != tuple(self._module.input_shape):
                raise ValueError(f"This Sequential is built for per-sample inputs of shape "
                                 f"{tuple(self._module.input_shape)}; build({tuple(input_shape)}) asks for "
                                 f"{shape}. Build a new Sequential for other inputs.")
            return
        self._build_for(shape)

    def _build_for(self, shape):
        if not self._layers:
            raise ValueError("Sequential has no layers; add at least one before using it.")
        self._module = layers_lib.build_stack(self._layers, tuple(shape), self.seed)

    def _check_x(self, x):
        if isinstance(x, dict):
            raise ValueError(f"`x` must be a single array for a Sequential; got {describe(x)}. Pass one array, "
                             f"or build a bf.Model around an NNX module that takes a dict.")

    def _build_from(self, x):
        if x is None:
            raise ValueError("This Sequential has no input_shape yet; pass data or set input_shape.")
        self._check_x(x)
        self._build_for(x.shape[1:])

    def _compile_defaults(self):
        """train_on_batch before compile(): Keras's default optimizer, a loss read off the output layer.

        Keras raises here; the articles users learn from call train_on_batch on uncompiled
        Sequential models, so batchfit compiles them as Keras would by default, and says so.
        """
        loss = _default_loss(self._layers)
        warnings.warn(f"train_on_batch() before compile(): compiling with optimizer='rmsprop' (Keras's "
                      f"default) and loss='{loss}' (from the output layer). Call compile() to choose.",
                      UserWarning, stacklevel=3)
        self.compile(optimizer="rmsprop", loss=loss)

    def _save_folder(self, path) -> str:
        """batchfit's earlier format, which `save(path)` writes for a path without an extension: a folder
        (JSON and .npz, no pickle) with the layers, the weights, and the compile settings when given by
        name; not the optimizer's state. `save("m.keras")` writes Keras's one file. See batchfit/saving.py.
        """
        if not self.built:
            raise ValueError("save() needs a built model: give the first layer input_shape=..., or run it on "
                             "data first.")
        config = {"format": saving.FORMAT, "version": saving.VERSION, "class_name": "Sequential",
                  "seed": self.seed, "input_shape": list(self.module.input_shape),
                  "layers": [layer.get_config() for layer in self._layers],
                  "compile": _by_name(self._settings)}
        try:
            config = json.loads(json.dumps(config))
        except TypeError as e:
            raise TypeError(f"save() writes layer configs as JSON, and one of them holds a Python object ({e}). "
                            f"Give activations, initializers and regularizers by name (e.g. activation='relu') "
                            f"to save the model, or save the arrays of get_weights() yourself.") from e
        return saving.write_model(path, config, self.get_weights())


def load_model(filepath, custom_objects=None, compile: bool = True, safe_mode: bool = True):
    """The model `model.save(filepath)` wrote (Keras's `keras.models.load_model`).

    A `.keras` file: the model (Sequential, functional or subclassed; classes not defined here come
    from `custom_objects`, {class name: class}), its weights and, with `compile=True`, its compile
    settings and optimizer state, so that it trains on exactly. A folder: batchfit's earlier
    Sequential format. Nothing is unpickled, so `safe_mode` has nothing to refuse.
    """
    path = os.fspath(filepath)
    if path.endswith(".keras") or (os.path.isfile(path) and not path.endswith(".h5")):
        from batchfit import models
        return models.load_archive(path, custom_objects, compile)
    if path.endswith(".h5"):
        raise ValueError(f"batchfit does not read Keras's HDF5 files; load a `.keras` file that model.save() wrote. "
                         f"Received: filepath={path}")
    config, weights = saving.read_model(path)
    model = Sequential([layers_lib.layer_from_config(c) for c in config["layers"]], seed=config["seed"])
    model.build(tuple(config["input_shape"]))
    model.set_weights(weights)
    if compile and config.get("compile"):
        model.compile(**config["compile"])
    return model


def _default_loss(layers) -> str:
    activation = getattr(layers[-1], "activation", None) if layers else None
    for name, loss in (("sigmoid", "binary_crossentropy"), ("softmax", "categorical_crossentropy")):
        if activation is activations_lib.get(name):
            return loss
    return "mse"


def _by_name(settings) -> dict | None:
    """compile()'s arguments when every one was given by name (all the folder format can keep), else None."""
    if settings is None:
        return None
    arguments = dict(settings.arguments)
    metrics = arguments["metrics"]
    arguments["metrics"] = [] if metrics is None else list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    named = [arguments["optimizer"], arguments["loss"], *arguments["metrics"]]
    return arguments if all(isinstance(v, str) for v in named) and "loss_weights" not in arguments else None
