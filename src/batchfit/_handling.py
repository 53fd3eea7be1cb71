"""What Keras code does with a model besides training it: call it, list its layers and weights, count its
parameters, print its summary, read and set its optimizer's learning rate."""

from __future__ import annotations

import jax
import numpy as np

from batchfit import optimizers as optimizers_lib
from batchfit.layers import _scope, _symbolic
from batchfit.layers.base import run_module
from batchfit.layers.variable import WeightLists

__all__ = ["Handling", "OptimizerView"]


class Handling(WeightLists):
    """Keras's model methods that read the model; mixed into bf.Model."""

    # ----- the boundary: Keras's structures <-> the module's (functional models override) ------------

    def _structure_x(self, x):
        return x

    def _structure_y(self, y):
        return y

    def _present(self, out):
        return out

    def _structure_pair(self, data):
        """validation_data=(x, y[, w]) with x and y in the module's structure; other data as it is."""
        if isinstance(data, tuple) and len(data) in (2, 3):
            return (self._structure_x(data[0]), self._structure_y(data[1]), *data[2:])
        return data

    def __call__(self, x, training=None, **kwargs):
        """The model's output on `x` (arrays: computed now, compiled; symbolic tensors: a node of a
        functional model; inside another model's call: that model's copy of this one)."""
        if _symbolic.is_symbolic(x):
            return _symbolic.call_layer(self, x, (), {} if training is None else {"training": training})
        bound = _scope.lookup(self)
        if bound is not None:
            return self._present(run_module(bound, self._structure_x(x), (), {"training": training, **kwargs}))
        x = self._structure_x(x)
        if training:
            return self._present(run_module(self.module, x, (), {"training": True}))
        return self._present(self._executables(x).predict_batch(self._slot.leaves, x))

    def _module_for(self, specs):
        """As a layer of a functional model: the module, built for inputs like `specs`."""
        self._executables(specs if not self.built else None)
        return self._module

    def _module_for_graph(self):
        return self._module

    # ----- layers and weights ------------------------------------------------------------------------

    @property
    def layers(self) -> list:
        return list(self._weight_layers())

    def get_layer(self, name=None, index=None):
        """The layer called `name` (or at `index` in `layers`)."""
        layers = self.layers
        if index is not None:
            if not isinstance(index, int) or not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer(index={index!r}): this model has {len(layers)} layers.")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No layer named {name!r} in model '{self.name}'; its layers are "
                         f"{[layer.name for layer in layers]}.")

    @property
    def weights(self) -> list:
        """The weights as bf.Variable handles, in get_weights() order."""
        if not self.built:
            return []
        self._sync_module()
        return self._weight_handles()

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"Model '{self.name}' is not built yet: call it on data (or build(input_shape)) first.")
        return super().count_params()

    # ----- the optimizer ------------------------------------------------------------------------------

    @property
    def optimizer(self):
        """The compiled optimizer: its `learning_rate` is read and set between calls, without recompiling."""
        return None if self._settings is None else OptimizerView(self)

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """Print Keras's table of layers (name and type, output shape, parameters) and the totals."""
        from batchfit._summary import print_summary
        print_summary(self, line_length, positions, print_fn)


class OptimizerView:
    """`model.optimizer`: the learning rate and update count held in the model's training state."""

    def __init__(self, model):
        self._model = model

    def _state(self):
        self._model._executables()
        return self._model._slot.state

    @property
    def learning_rate(self) -> float:
        """Keras's `optimizer.learning_rate`: the rate of the next update (a schedule's value at the
        number of updates done so far); set a float between calls, without recompiling."""
        opt_state = self._state().opt_state
        schedule = getattr(self._model._settings.arguments.get("optimizer"), "learning_rate", None)
        step = optimizers_lib.schedule_step(opt_state)
        if callable(schedule) and step is not None:
            return float(np.asarray(schedule(step)))
        # A float learning rate, or a schedule inside a raw optax transformation: the rate last used.
        return float(np.asarray(optimizers_lib.get_learning_rate(opt_state)))

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        state = self._state()
        self._model._slot.put(state._replace(opt_state=optimizers_lib.set_learning_rate(state.opt_state, value)))

    @property
    def iterations(self) -> int:
        """The number of updates applied so far (one per k batches with fit(..., accumulate_steps=k))."""
        return int(np.asarray(self._state().step))

    @property
    def variables(self) -> list:
        """The optimizer's state arrays (as Keras counts them in summary())."""
        return [leaf for leaf in jax.tree.leaves(self._state().opt_state) if hasattr(leaf, "shape")]

    def __repr__(self):
        return f"<optimizer of model '{self._model.name}': learning_rate={self.learning_rate:g}>"
