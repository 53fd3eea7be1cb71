"""Layers that wrap another layer: Bidirectional (a recurrent layer run both ways) and TimeDistributed
(a layer applied to every time step), with Keras's weights, outputs and masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from batchfit.errors import describe
from batchfit.layers.base import Layer, layer_from_config

__all__ = ["Bidirectional", "TimeDistributed"]

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _layer(value, owner: str, argument: str = "layer") -> Layer:
    """A batchfit layer, or the one a `get_config()` dict describes."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        return layer_from_config(value)
    if not isinstance(value, Layer):
        raise TypeError(f"{owner}: `{argument}` must be a batchfit layer (e.g. bf.layers.LSTM(8)) or its "
                        f"get_config(); got {type(value).__name__}.")
    return value


def _renamed(layer: Layer, prefix: str, **changes) -> Layer:
    """A fresh layer from `layer`'s config, named `prefix + name` as Keras names them, with `changes`."""
    config = layer.get_config()
    name = layer.name[len(prefix):] if layer.name.startswith(prefix) else layer.name
    return layer_from_config({**config, "config": {**config["config"], **changes, "name": prefix + name}})


def _adopted(layer: Layer, input_shape, rngs) -> nnx.Module:
    """`layer` built for per-sample `input_shape`: the wrapper's part is the layer's own module."""
    layer._build_inputs = jax.ShapeDtypeStruct((1, *input_shape), "float32")   # a custom layer's build runs on these
    layer._adopt(layer.make_module(tuple(input_shape), rngs))
    return layer._module


class _Wrapping(nnx.Module):
    """A module holding wrapped modules (attributes `wrapped`, each with a weight-name prefix): its Keras
    weights are theirs, in order, and read by name (`forward_kernel`) as keras_weight_variables expects."""

    wrapped: tuple = ()       # (attribute, prefix) pairs

    def _named_weights(self) -> dict:
        from batchfit.layers.stack import keras_weight_variables
        named = {}
        for attribute, prefix in self.__dict__.get("wrapped", ()):
            module = self.__dict__[attribute]
            names = [n for n in getattr(module, "keras_weights", ()) if getattr(module, n, None) is not None]
            for i, variable in enumerate(keras_weight_variables(module)):
                named[prefix + (names[i] if i < len(names) else f"variable_{i}")] = variable
        return named

    @property
    def keras_weights(self) -> tuple:
        return tuple(self._named_weights())

    def __getattr__(self, name):
        if not name.startswith("_"):
            named = self._named_weights()
            if name in named:
                return named[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


class BidirectionalModule(_Wrapping):
    """Built `Bidirectional`: the forward and backward recurrent modules on the same [B, T, C], merged."""

    takes_call_arguments = True     # initial_state=
    takes_mask = True

    def __init__(self, forward, backward, layer: "Bidirectional"):
        self.forward, self.backward = forward, backward
        self.wrapped = (("forward", "forward_"), ("backward", "backward_"))
        self.merge_mode = layer.merge_mode
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state

    def __call__(self, x, initial_state=None, mask=None):
        """[B, T, C] -> the merged outputs (a pair for merge_mode=None); with return_state, then the forward
        layer's final states and the backward layer's. The backward sequence is put back in time order."""
        half = None if initial_state is None else len(initial_state) // 2
        y = self.forward(x, None if half is None else initial_state[:half], mask)
        y_rev = self.backward(x, None if half is None else initial_state[half:], mask)
        states = ()
        if self.return_state:
            (y, *forward_states), (y_rev, *backward_states) = y, y_rev
            states = (*forward_states, *backward_states)
        if self.return_sequences:
            y_rev = jnp.flip(y_rev, axis=1)
        merged = {"concat": lambda: jnp.concatenate([y, y_rev], axis=-1), "sum": lambda: y + y_rev,
                  "ave": lambda: (y + y_rev) / 2, "mul": lambda: y * y_rev, None: lambda: (y, y_rev)}
        output = merged[self.merge_mode]()
        if not self.return_state:
            return output
        return (*output, *states) if self.merge_mode is None else (output, *states)

    def compute_mask(self, inputs, mask=None):
        """Keras's: the input mask for the sequence output(s) (return_sequences), None for the rest."""
        output = mask if self.return_sequences else None
        outputs = [output] if self.merge_mode is not None else [output, output]
        if self.return_state:
            outputs += [None] * (2 * self.forward.num_states)
        return outputs if len(outputs) > 1 else outputs[0]


class Bidirectional(Layer):
    """Runs a recurrent layer forward and a copy of it backward over [B, T, C], merging their outputs
    (`merge_mode` "concat", "sum", "mul", "ave", or None for both); weights: forward's, then backward's."""

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        super().__init__(**kwargs)
        layer = _layer(layer, "Bidirectional")
        if not hasattr(layer, "go_backwards") or not hasattr(layer, "return_sequences"):
            raise TypeError(f"Bidirectional: `layer` must be a recurrent layer (SimpleRNN, LSTM, GRU); got "
                            f"{type(layer).__name__}.")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"Bidirectional: `merge_mode` must be one of {_MERGE_MODES}; got "
                             f"merge_mode={merge_mode!r}.")
        if weights is not None:
            raise ValueError("Bidirectional: `weights=` is not supported; call set_weights() once it is built.")
        self.merge_mode = merge_mode
        self.forward_layer = _renamed(layer, "forward_")
        self.backward_layer = (_renamed(layer, "backward_", go_backwards=True) if backward_layer is None
                               else _layer(backward_layer, "Bidirectional", "backward_layer"))
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            raise ValueError(f"Bidirectional: the forward and backward layers need different `go_backwards`; both "
                             f"have go_backwards={self.forward_layer.go_backwards}.")
        for attribute in ("return_sequences", "return_state"):
            if getattr(self.forward_layer, attribute) != getattr(self.backward_layer, attribute):
                raise ValueError(f"Bidirectional: the forward and backward layers need the same `{attribute}`.")
        for part in (self.forward_layer, self.backward_layer):
            part.zero_output_for_mask = part.return_sequences          # as Keras forces it
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state

    def compute_output_shape(self, input_shape) -> tuple:
        """The merged output's per-sample shape (each direction's for merge_mode=None)."""
        shape = tuple(self.forward_layer.compute_output_shape(input_shape))
        return (*shape[:-1], 2 * shape[-1]) if self.merge_mode == "concat" else shape

    def make_module(self, input_shape, rngs) -> BidirectionalModule:
        return BidirectionalModule(_adopted(self.forward_layer, input_shape, rngs),
                                   _adopted(self.backward_layer, input_shape, rngs), self)

    def get_config(self) -> dict:
        config = super().get_config()
        config["config"].update(layer=self.forward_layer.get_config(),
                                backward_layer=self.backward_layer.get_config())
        return config


class TimeDistributedModule(_Wrapping):
    """Built `TimeDistributed`: the wrapped module on each of the T steps of [B, T, ...]."""

    passes_mask = True

    def __init__(self, inner):
        self.layer, self.wrapped = inner, (("layer", ""),)
        # Batch statistics are per step in Keras (one call per step); other layers run once on [B * T, ...].
        self.per_step = any(isinstance(v, nnx.BatchStat) for _, v in nnx.iter_graph(inner))

    def __call__(self, x):
        if jnp.ndim(x) < 3:
            raise ValueError(f"TimeDistributed takes inputs [B, T, ...] (at least 3 axes); got {describe(x)}.")
        if self.per_step:
            return jnp.stack([self.layer(x[:, t]) for t in range(x.shape[1])], axis=1)
        b, t = x.shape[:2]
        y = self.layer(jnp.reshape(x, (b * t, *x.shape[2:])))
        return jnp.reshape(y, (b, t, *y.shape[1:]))


class TimeDistributed(Layer):
    """Applies `layer` to every time step of [B, T, ...] with the same weights (Keras's TimeDistributed)."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = _layer(layer, "TimeDistributed")

    def compute_output_shape(self, input_shape) -> tuple:
        if len(input_shape) < 2:
            self._fail(input_shape, "inputs [B, T, ...] with at least 3 axes")
        step = tuple(input_shape[1:])
        if type(self.layer).call is not Layer.call and self.layer.built:     # a custom layer: run it on a spec
            return (input_shape[0], *jax.eval_shape(self.layer, jax.ShapeDtypeStruct((1, *step), "float32")).shape[1:])
        return (input_shape[0], *self.layer.compute_output_shape(step))

    def make_module(self, input_shape, rngs) -> TimeDistributedModule:
        self.compute_output_shape(input_shape)
        return TimeDistributedModule(_adopted(self.layer, input_shape[1:], rngs))

    def get_config(self) -> dict:
        config = super().get_config()
        config["config"]["layer"] = self.layer.get_config()
        return config
