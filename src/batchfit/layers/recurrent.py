"""Recurrent layers (SimpleRNN, LSTM, GRU) and Masking, computing as Keras 3 does.

Inputs [B, T, C]. Weights as Keras's: kernel [C, G * units], recurrent_kernel [units, G * units],
bias [G * units] (GRU with reset_after: [2, 3 * units], input bias then recurrent bias), the G gates
in Keras's order (LSTM i, f, c, o; GRU z, r, h). The time loop is a `jax.lax.scan` inside the module,
so it compiles into the model's step. A Keras mask [B, T] (from Embedding(mask_zero=True), Masking,
or `mask=`) makes a masked step keep the previous state and output, as Keras does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import activations, regularizers
from batchfit.errors import describe
from batchfit.layers.base import Layer, _autocast, _initial_weight, _jax_dtype, _positive_int, _real, _Regularized
from batchfit.layers.initializers import get_initializer

__all__ = ["SimpleRNN", "LSTM", "GRU", "Masking"]


def _dropout_masks(rngs, rate: float, count: int, shape: tuple, dtype):
    """[count, *shape] of 0 or 1/(1 - rate), as Keras draws once per call and keeps for every step."""
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, (count, *shape))
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


def _per_gate(x, masks):
    """`x` [B, D] dropped by `masks` [n, B, D]: `x` itself (no masks), one array (n = 1), or a list per gate."""
    if masks is None:
        return x
    return x * masks[0] if len(masks) == 1 else [x * m for m in masks]


def _matmul(xs, kernel, units: int):
    """`xs @ kernel` [B, G * units]; for a list of per-gate inputs, each gate's input with its own columns."""
    if not isinstance(xs, list):
        return xs @ kernel
    return jnp.concatenate([x @ kernel[:, g * units:(g + 1) * units] for g, x in enumerate(xs)], axis=-1)


def _gate(xs, g: int):
    return xs[g] if isinstance(xs, list) else xs


class _RecurrentModule(_Regularized):
    """Built recurrent layer: weights, the Keras options, and the scan over time; subclasses give the cell."""

    keras_weights = ("kernel", "recurrent_kernel", "bias")
    takes_call_arguments = True     # initial_state=
    takes_mask = True

    def __init__(self, layer: "_Recurrent", input_dim: int, rngs):
        dtype, width = _jax_dtype(layer.variable_dtype), layer.num_gates * layer.units
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        self.kernel = nnx.Param(_initial_weight(layer.kernel_initializer, rngs.params(), (input_dim, width), dtype))
        self.recurrent_kernel = nnx.Param(_initial_weight(layer.recurrent_initializer, rngs.params(),
                                                          (layer.units, width), dtype))
        self.bias = nnx.Param(self._initial_bias(layer, rngs, dtype)) if layer.use_bias else None
        self.keras_weights = type(self).keras_weights[:3 if layer.use_bias else 2]
        named = {"kernel": layer.kernel_regularizer, "recurrent_kernel": layer.recurrent_regularizer,
                 "bias": layer.bias_regularizer if layer.use_bias else None}
        self.weight_regularizers = tuple((k, r) for k, r in named.items() if r is not None)
        self.units, self.gates = layer.units, layer.num_gates
        self.activation, self.recurrent_activation = layer.activation, layer.recurrent_activation
        for option in ("dropout", "recurrent_dropout", "return_sequences", "return_state", "go_backwards",
                       "unroll", "zero_output_for_mask"):
            setattr(self, option, getattr(layer, option))
        self.deterministic = True
        self.rngs = None if not 0 < max(self.dropout, self.recurrent_dropout) < 1 else nnx.Rngs(
            dropout=layer.seed if layer.seed is not None else
            rngs.dropout() if "dropout" in rngs else rngs.params())

    def _initial_bias(self, layer, rngs, dtype):
        return _initial_weight(layer.bias_initializer, rngs.params(), (layer.num_gates * layer.units,), dtype)

    @property
    def num_states(self) -> int:
        return 1

    def _bias(self):
        return None if self.bias is None else self.bias[...].astype(self.compute_dtype)

    def _masks(self, rate: float, shape: tuple, dtype):
        """Keras's dropout masks [n, B, D] for one call (training only): one per gate when recurrent
        dropout is on (Keras's implementation 1), else one."""
        if self.deterministic or not 0 < rate < 1:
            return None
        count = self.gates if self.recurrent_dropout > 0 else 1
        return _dropout_masks(self.rngs, rate, count, shape, dtype)

    def __call__(self, x, initial_state=None, mask=None):
        """[B, T, C] -> [B, units] (the last output), [B, T, units] with return_sequences; with return_state,
        a tuple (output, *final states). `mask` [B, T]: False steps are skipped."""
        x = _autocast(x, self.compute_dtype)
        if x.ndim != 3 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"{type(self).__name__[:-6]} built for inputs [B, T, {self.kernel.shape[0]}] got "
                             f"{describe(x)}. Give sequences [batch, timesteps, features].")
        states = self._initial_states(initial_state, x.shape[0], x.dtype)
        input_masks = self._masks(self.dropout, (x.shape[0], x.shape[-1]), x.dtype)
        recurrent_masks = self._masks(self.recurrent_dropout, (x.shape[0], self.units), x.dtype)
        projected = jnp.swapaxes(self._project(x, input_masks), 0, 1)            # [T, B, G * units]
        steps = None if mask is None else jnp.swapaxes(jnp.asarray(mask).astype(bool), 0, 1)[..., None]
        keep_outputs = self.return_sequences or self.zero_output_for_mask

        def step(carry, inputs):
            projected_t, mask_t = inputs
            output, new = self._cell(projected_t, carry, recurrent_masks)
            if mask_t is not None:
                previous = jnp.zeros_like(output) if self.zero_output_for_mask else carry[0]
                output = jnp.where(mask_t, output, previous)
                new = tuple(jnp.where(mask_t, n, c) for n, c in zip(new, carry))
            return new, output if keep_outputs else None

        states, outputs = jax.lax.scan(step, states, (projected, steps), reverse=self.go_backwards,
                                       unroll=bool(self.unroll))
        if keep_outputs:
            outputs = jnp.swapaxes(jnp.flip(outputs, 0) if self.go_backwards else outputs, 0, 1)
            output = outputs if self.return_sequences else outputs[:, -1]
        else:
            output = states[0]       # the last output is the last state's output: a masked step keeps both
        return (output, *states) if self.return_state else output

    def _initial_states(self, initial_state, batch: int, dtype) -> tuple:
        if initial_state is None:
            return tuple(jnp.zeros((batch, self.units), dtype) for _ in range(self.num_states))
        states = tuple(initial_state) if isinstance(initial_state, (list, tuple)) else (initial_state,)
        if len(states) != self.num_states or any(jnp.shape(s) != (batch, self.units) for s in states):
            raise ValueError(f"`initial_state` must be {self.num_states} array(s) [batch, {self.units}]; got "
                             f"{describe(initial_state)}.")
        return tuple(jnp.asarray(s).astype(dtype) for s in states)

    def compute_mask(self, inputs, mask=None):
        """Keras's: the input mask for the sequence output (return_sequences), else None; None for the states."""
        output_mask = mask if self.return_sequences else None
        return [output_mask] + [None] * self.num_states if self.return_state else output_mask

    def _project(self, x, masks):
        """The input part of every gate at every step, [B, T, G * units], computed before the loop."""
        kernel = self.kernel[...].astype(self.compute_dtype)
        xs = _per_gate(x, None if masks is None else masks[:, :, None, :])
        projected = _matmul(xs, kernel, self.units)
        return projected if self._input_bias() is None else projected + self._input_bias()

    def _input_bias(self):
        return self._bias()


class SimpleRNNModule(_RecurrentModule):
    """Built `SimpleRNN`: h = activation(x @ kernel + bias + h_prev @ recurrent_kernel)."""

    def _cell(self, projected, states, recurrent_masks):
        h = _per_gate(states[0], recurrent_masks)
        output = self.activation(projected + h @ self.recurrent_kernel[...].astype(self.compute_dtype))
        return output, (output,)


class LSTMModule(_RecurrentModule):
    """Built `LSTM`: gates i, f, c, o; c = f * c_prev + i * activation(c~), h = o * activation(c)."""

    @property
    def num_states(self) -> int:
        return 2

    def _initial_bias(self, layer, rngs, dtype):
        if not layer.unit_forget_bias:
            return super()._initial_bias(layer, rngs, dtype)
        parts = [_initial_weight(layer.bias_initializer, rngs.params(), (layer.units,), dtype),
                 np.ones((layer.units,), dtype),
                 _initial_weight(layer.bias_initializer, rngs.params(), (2 * layer.units,), dtype)]
        return jax.device_put(np.concatenate([np.asarray(p) for p in parts]))

    def _input_bias(self):
        # Keras adds the bias after the recurrent part, but in the input part with recurrent dropout.
        return self._bias() if self.recurrent_dropout > 0 else None

    def _cell(self, projected, states, recurrent_masks):
        h, c = states
        z = projected + _matmul(_per_gate(h, recurrent_masks), self.recurrent_kernel[...].astype(self.compute_dtype),
                                self.units)
        if self.bias is not None and self.recurrent_dropout == 0:
            z = z + self._bias()
        i, f, candidate, o = jnp.split(z, 4, axis=-1)
        c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(candidate)
        h = self.recurrent_activation(o) * self.activation(c)
        return h, (h, c)


class GRUModule(_RecurrentModule):
    """Built `GRU`: gates z, r, h; h = z * h_prev + (1 - z) * activation(h~). With reset_after (Keras's
    default), r multiplies the recurrent part after its matmul, and bias is [2, 3 * units]."""

    def __init__(self, layer: "GRU", input_dim: int, rngs):
        self.reset_after = layer.reset_after
        super().__init__(layer, input_dim, rngs)

    def _initial_bias(self, layer, rngs, dtype):
        shape = (2, 3 * layer.units) if layer.reset_after else (3 * layer.units,)
        return _initial_weight(layer.bias_initializer, rngs.params(), shape, dtype)

    def _input_bias(self):
        bias = self._bias()
        return bias[0] if bias is not None and self.reset_after else bias

    def _cell(self, projected, states, recurrent_masks):
        h, units = states[0], self.units
        kernel = self.recurrent_kernel[...].astype(self.compute_dtype)
        hs = _per_gate(h, recurrent_masks)
        x_z, x_r, x_h = jnp.split(projected, 3, axis=-1)
        if self.reset_after:
            inner = _matmul(hs, kernel, units)
            inner = inner if self.bias is None else inner + self._bias()[1]
        else:
            inner = _matmul(hs[:2] if isinstance(hs, list) else hs, kernel[:, :2 * units], units)
        z = self.recurrent_activation(x_z + inner[:, :units])
        r = self.recurrent_activation(x_r + inner[:, units:2 * units])
        if self.reset_after:
            recurrent_h = r * inner[:, 2 * units:]
        else:
            recurrent_h = (r * _gate(hs, 2)) @ kernel[:, 2 * units:]
        h = z * h + (1 - z) * self.activation(x_h + recurrent_h)
        return h, (h,)


def _rate(value, name: str, owner: str) -> float:
    return _real(value, name, owner, "a number in [0, 1], the fraction of units to drop", lambda r: 0 <= r <= 1, 0.2)


def _refuse(owner: str, **unsupported) -> None:
    for name, value in unsupported.items():
        if value is not None:
            raise ValueError(f"{owner}: `{name}` is not supported by batchfit; got {name}={value!r}. Leave it None "
                             f"(a constraint can be applied with a callback that sets the weights).")


class _Recurrent(Layer):
    """Shared config of SimpleRNN, LSTM and GRU (Keras's RNN arguments); `num_gates` weight blocks."""

    num_gates = 1
    module_type = SimpleRNNModule

    def __init__(self, units, activation, recurrent_activation, use_bias, kernel_initializer, recurrent_initializer,
                 bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, unsupported: dict,
                 dropout, recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful, unroll,
                 **kwargs):
        owner = type(self).__name__
        self.zero_output_for_mask = bool(kwargs.pop("zero_output_for_mask", False))
        kwargs.pop("implementation", None)            # Keras's choice of kernel; the same numbers here
        super().__init__(**kwargs)
        _refuse(owner, **unsupported)
        if stateful:
            raise ValueError(f"{owner}: stateful=True is not supported by batchfit: each batch starts from zero "
                             f"states. Pass the states yourself with initial_state=, or use stateful=False.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{owner}: `seed` must be an int or None; got seed={seed!r}.")
        self.units = _positive_int(units, "units", owner)
        self.activation = activations.get(activation)
        self.recurrent_activation = None if recurrent_activation is None else activations.get(recurrent_activation)
        self.use_bias, self.seed = bool(use_bias), seed
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.recurrent_initializer = get_initializer(recurrent_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dropout = _rate(dropout, "dropout", owner)
        self.recurrent_dropout = _rate(recurrent_dropout, "recurrent_dropout", owner)
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.stateful, self.unroll = bool(go_backwards), False, bool(unroll)

    def compute_output_shape(self, input_shape) -> tuple:
        """[T, units] with return_sequences, else [units] (the first output; the states are [units] each)."""
        if len(input_shape) != 2 or input_shape[-1] is None:
            self._fail(input_shape, "sequences [B, timesteps, features]")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def make_module(self, input_shape, rngs) -> _RecurrentModule:
        self.compute_output_shape(input_shape)
        return self.module_type(self, int(input_shape[-1]), rngs)


def _use_cudnn(value, owner: str):
    if value not in ("auto", True, False):
        raise ValueError(f"{owner}: `use_cudnn` must be 'auto', True or False; got use_cudnn={value!r}. "
                         f"batchfit compiles the same loop either way.")
    return value


class SimpleRNN(_Recurrent):
    """Fully-connected RNN: h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel), Keras defaults."""

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False, unroll=False,
                 seed=None, **kwargs):
        unsupported = dict(activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                           recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint)
        super().__init__(units, activation, None, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, unsupported,
                         dropout, recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful,
                         unroll, **kwargs)


class LSTM(_Recurrent):
    """Long Short-Term Memory (Hochreiter 1997), Keras defaults: gates i, f, c, o; unit_forget_bias starts the
    forget gate's bias at 1."""

    num_gates, module_type = 4, LSTMModule

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, use_cudnn="auto", **kwargs):
        self.unit_forget_bias, self.use_cudnn = bool(unit_forget_bias), _use_cudnn(use_cudnn, "LSTM")
        unsupported = dict(activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                           recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint)
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, unsupported,
                         dropout, recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful,
                         unroll, **kwargs)


class GRU(_Recurrent):
    """Gated Recurrent Unit (Cho et al. 2014), Keras defaults: gates z, r, h; reset_after=True (bias [2, 3 * units])."""

    num_gates, module_type = 3, GRUModule

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, reset_after=True, use_cudnn="auto", **kwargs):
        self.reset_after, self.use_cudnn = bool(reset_after), _use_cudnn(use_cudnn, "GRU")
        unsupported = dict(activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                           recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint)
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, unsupported,
                         dropout, recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful,
                         unroll, **kwargs)


class MaskingModule(nnx.Module):
    """Built `Masking`: zeroes the steps whose features all equal `mask_value`, and masks them."""

    keras_weights = ()

    def __init__(self, mask_value: float, compute_dtype):
        self.mask_value, self.compute_dtype = mask_value, _jax_dtype(compute_dtype)

    def compute_mask(self, x, mask=None):
        """[B, T] bool: True where some feature differs from `mask_value`."""
        return jnp.any(jnp.asarray(x) != self.mask_value, axis=-1)

    def __call__(self, x):
        x = _autocast(x, self.compute_dtype)
        return jnp.where(self.compute_mask(x)[..., None], x, jnp.zeros((), x.dtype))


class Masking(Layer):
    """Masks the time steps [B, T, C] whose C features all equal `mask_value` (and zeroes them): the
    recurrent layers that follow skip those steps."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = _real(mask_value, "mask_value", "Masking", "a number, the value of padded steps",
                                lambda v: True, 0.0)

    def make_module(self, input_shape, rngs) -> MaskingModule:
        return MaskingModule(self.mask_value, self.compute_dtype)
