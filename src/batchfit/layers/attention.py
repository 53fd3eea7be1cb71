"""Attention layers as Keras 3 has them: MultiHeadAttention, Attention (Luong) and AdditiveAttention (Bahdanau).

Inputs are sequences [B, T, C] (query) and [B, S, C] (value, key). A boolean mask keeps a score where it is
True: masked scores become -1e9 before the softmax (-3e4 in float16) and 0 after it, as Keras's Softmax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import regularizers
from batchfit.layers.base import Layer, _autocast, _initial_weight, _jax_dtype, _positive_int, _real, _Regularized
from batchfit.layers.core import DropoutModule
from batchfit.layers.initializers import get_initializer

__all__ = ["MultiHeadAttention", "Attention", "AdditiveAttention"]


def _dropout_module(rate: float, seed, rngs) -> DropoutModule | None:
    """The dropout on the attention probabilities (None without dropout), with its own random stream."""
    if rate == 0.0:
        return None
    key = seed if seed is not None else (rngs.dropout() if "dropout" in rngs else rngs.params())
    return DropoutModule(rate, nnx.Rngs(dropout=key))


def _masked_softmax(scores, mask):
    """softmax over the last axis of `scores` [..., T, S] where `mask` (broadcastable, bool) is True; rows
    masked entirely give zeros (Keras's Softmax(mask=...))."""
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    large = -3e4 if scores.dtype == jnp.float16 else -1e9
    probabilities = jax.nn.softmax(jnp.where(mask, scores, jnp.asarray(large, scores.dtype)), axis=-1)
    return jnp.where(mask, probabilities, jnp.zeros((), scores.dtype))


def _causal_mask(query_length: int, value_length: int):
    """[1, T, S] bool: position t sees the positions s <= t."""
    return jnp.tril(jnp.ones((query_length, value_length), bool))[None]


def _dropped(dropout: DropoutModule | None, probabilities):
    return probabilities if dropout is None else dropout(probabilities)


def _sequence_shapes(layer, shapes: dict) -> None:
    """Refuse inputs other than sequences [B, T, C], and a key whose length differs from the value's."""
    for name, shape in shapes.items():
        if shape is not None and name != "attention_mask" and (len(shape) != 2 or None in shape):
            raise ValueError(f"{type(layer).__name__} '{layer.name}' takes sequences [B, T, C] for `{name}`; got "
                             f"per-sample shape {tuple(shape)}. Reshape to [B, T, C] (attention over one axis).")
    key = shapes.get("key")
    if key is not None and key[0] != shapes["value"][0]:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': `key` and `value` must have the same length; "
                         f"got per-sample shapes key {tuple(key)}, value {tuple(shapes['value'])}.")


class MultiHeadAttentionModule(_Regularized):
    """Built `MultiHeadAttention`: projections [C, N, H] to N heads, scaled dot-product attention per head,
    output projection [N, H_value, *output_shape]; dropout on the attention probabilities in training."""

    takes_call_arguments = True

    def __init__(self, layer: "MultiHeadAttention", shapes: dict, rngs: nnx.Rngs):
        _sequence_shapes(layer, shapes)
        self.compute_dtype = _jax_dtype(layer.compute_dtype)
        dtype, heads = _jax_dtype(layer.variable_dtype), layer.num_heads
        key_shape = shapes["value"] if shapes.get("key") is None else shapes["key"]
        output_shape = layer._projection_shape or (shapes["query"][-1],)
        parts = (("query", (shapes["query"][-1], heads, layer.key_dim)),
                 ("key", (key_shape[-1], heads, layer.key_dim)),
                 ("value", (shapes["value"][-1], heads, layer.value_dim)),
                 ("output", (heads, layer.value_dim, *output_shape)))
        names = []
        for part, shape in parts:      # Keras's order: query, key, value, output; kernel then bias
            setattr(self, f"{part}_kernel", nnx.Param(_initial_weight(layer.kernel_initializer, rngs.params(),
                                                                      shape, dtype)))
            names.append(f"{part}_kernel")
            if layer.use_bias:
                bias_shape = shape[1:] if part != "output" else tuple(output_shape)
                setattr(self, f"{part}_bias", nnx.Param(_initial_weight(layer.bias_initializer, rngs.params(),
                                                                        bias_shape, dtype)))
                names.append(f"{part}_bias")
        self.keras_weights = tuple(names)
        self.weight_regularizers = tuple(
            (name, layer.kernel_regularizer if name.endswith("kernel") else layer.bias_regularizer)
            for name in names if (layer.kernel_regularizer if name.endswith("kernel") else layer.bias_regularizer))
        self.scale = 1.0 / math.sqrt(layer.key_dim)
        self.dropout = _dropout_module(layer.dropout, layer.seed, rngs)

    def _project(self, part: str, x, axes: int = 1):
        y = jnp.tensordot(x, getattr(self, f"{part}_kernel")[...].astype(self.compute_dtype), axes=axes)
        bias = getattr(self, f"{part}_bias", None)
        return y if bias is None else y + bias[...].astype(self.compute_dtype)

    def __call__(self, inputs: dict, return_attention_scores=False, use_causal_mask=False):
        """`inputs`: {"query": [B, T, C], "value": [B, S, C'], "key": [B, S, C''] or None, "attention_mask":
        [B, T, S] (or broadcastable) or None} -> [B, T, *output_shape] (and the scores [B, N, T, S])."""
        query, value = (_autocast(inputs[k], self.compute_dtype) for k in ("query", "value"))
        key = value if inputs.get("key") is None else _autocast(inputs["key"], self.compute_dtype)
        mask = inputs.get("attention_mask")
        mask = None if mask is None else jnp.asarray(mask).astype(bool)
        if use_causal_mask:
            causal = _causal_mask(query.shape[1], value.shape[1])
            mask = causal if mask is None else mask & causal
        while mask is not None and mask.ndim < 4:              # [B, T, S] -> [B, 1 (heads), T, S]
            mask = jnp.expand_dims(mask, -3)
        q = self._project("query", query) * jnp.asarray(self.scale, self.compute_dtype)     # [B, T, N, H]
        k, v = self._project("key", key), self._project("value", value)                     # [B, S, N, H]
        scores = _masked_softmax(jnp.einsum("bsnh,btnh->bnts", k, q), mask)                 # [B, N, T, S]
        heads = jnp.einsum("bnts,bsnh->btnh", _dropped(self.dropout, scores), v)         # [B, T, N, H]
        output = self._project("output", heads, axes=2)
        return (output, scores) if return_attention_scores else output


def _pack(query, value, key, attention_mask) -> dict:
    """The call's tensors in one input: a functional model records and feeds a layer's first argument."""
    if isinstance(query, dict) and value is None:        # a saved functional config calls with the dict itself
        return {"query": query["query"], "value": query["value"], "key": query.get("key"),
                "attention_mask": query.get("attention_mask")}
    if value is None:
        raise TypeError("MultiHeadAttention is called as mha(query, value, key=None, attention_mask=None, ...); "
                        "`value` is missing. For self-attention pass the same tensor twice: mha(x, x).")
    return {"query": query, "value": value, "key": key, "attention_mask": attention_mask}


class MultiHeadAttention(Layer):
    """Keras's multi-head attention (Vaswani et al., 2017) over the sequence axis of [B, T, C] inputs.

    Call: `mha(query, value, key=None, attention_mask=None, return_attention_scores=False,
    use_causal_mask=False, training=None)`. Weights in Keras's order: query, key, value kernels [C, N, key_dim]
    (value: value_dim) and biases [N, key_dim], then the output kernel [N, value_dim, C_out] and bias [C_out].
    """

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 attention_axes=None, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        owner = "MultiHeadAttention"
        self.num_heads = _positive_int(num_heads, "num_heads", owner)
        self.key_dim = _positive_int(key_dim, "key_dim", owner)
        self.value_dim = self.key_dim if value_dim is None else _positive_int(value_dim, "value_dim", owner)
        self.dropout = _real(dropout, "dropout", owner, "a number in [0, 1), the fraction of attention "
                             "probabilities to drop", lambda r: 0 <= r < 1, 0.1)
        self.use_bias = bool(use_bias)
        self._projection_shape = None if output_shape is None else _output_shape(output_shape)
        axes = (attention_axes,) if isinstance(attention_axes, int) else attention_axes
        if axes is not None and (not isinstance(axes, (list, tuple)) or tuple(axes) not in ((1,), (-2,))):
            raise ValueError(f"{owner}: only attention over the sequence axis is supported (attention_axes=None, "
                             f"1 or -2 for inputs [B, T, C]); got attention_axes={attention_axes!r}. Reshape the "
                             "inputs to [B, T, C] and pass attention_axes=None.")
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.seed = seed

    def __call__(self, query, value=None, key=None, attention_mask=None, **kwargs):
        return super().__call__(_pack(query, value, key, attention_mask), **kwargs)

    def compute_output_shape(self, input_shape) -> tuple:
        query = tuple(input_shape["query"] if isinstance(input_shape, dict) else input_shape[0])
        return query[:-1] + (self._projection_shape or query[-1:])

    def make_module(self, input_shape, rngs) -> MultiHeadAttentionModule:
        if not isinstance(input_shape, dict):
            raise TypeError(f"MultiHeadAttention '{self.name}' is called as mha(query, value); got one input "
                            f"of per-sample shape {input_shape}.")
        return MultiHeadAttentionModule(self, input_shape, rngs)


def _output_shape(value) -> tuple:
    shape = (value,) if isinstance(value, (int, np.integer)) else value
    if not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"MultiHeadAttention: `output_shape` must be a positive int or a tuple of them (the "
                         f"output's shape after [B, T]); got output_shape={value!r}. Pass e.g. output_shape=64.")
    return tuple(int(d) for d in shape)


class AttentionModule(nnx.Module):
    """Built `Attention` / `AdditiveAttention`: scores [B, T, S] from query and key, softmax, dropout in
    training, weighted sum of value [B, S, C] -> [B, T, C]."""

    takes_call_arguments = True

    def __init__(self, layer: "Attention", input_shape, rngs: nnx.Rngs):
        _sequence_shapes(layer, dict(zip(("query", "value", "key"), input_shape)))
        self.compute_dtype, dtype = _jax_dtype(layer.compute_dtype), _jax_dtype(layer.variable_dtype)
        self.additive = isinstance(layer, AdditiveAttention)
        shape = (input_shape[0][-1],) if self.additive else ()
        initializer = get_initializer("glorot_uniform" if self.additive else "ones")
        self.scale = nnx.Param(_initial_weight(initializer, rngs.params(), shape, dtype)) if layer.use_scale else None
        self.concat_score_weight = (nnx.Param(_initial_weight(get_initializer("ones"), rngs.params(), (), dtype))
                                    if layer.score_mode == "concat" else None)
        self.keras_weights = tuple(n for n in ("scale", "concat_score_weight") if getattr(self, n) is not None)
        self.dropout = _dropout_module(layer.dropout, layer.seed, rngs)

    def _scores(self, query, key):
        scale = None if self.scale is None else self.scale[...].astype(self.compute_dtype)
        if self.additive:              # sum(scale * tanh(q + k)) over the features
            return jnp.sum((1.0 if scale is None else scale) * jnp.tanh(query[:, :, None] + key[:, None]), -1)
        if self.concat_score_weight is None:
            scores = jnp.einsum("btc,bsc->bts", query, key)
            return scores if scale is None else scores * scale
        mixed = query[:, :, None] + key[:, None]
        mixed = mixed if scale is None else scale * mixed
        return self.concat_score_weight[...].astype(self.compute_dtype) * jnp.sum(jnp.tanh(mixed), -1)

    def __call__(self, inputs, return_attention_scores=False, use_causal_mask=False):
        """`inputs`: [query, value] or [query, value, key], or {"inputs": that list, "mask": [query_mask [B, T],
        value_mask [B, S]]} -> [B, T, C] (and the attention probabilities [B, T, S])."""
        listed, masks = (inputs["inputs"], inputs["mask"]) if isinstance(inputs, dict) else (inputs, [None, None])
        tensors = [_autocast(x, self.compute_dtype) for x in listed]
        query, value = tensors[0], tensors[1]
        scores = self._scores(query, tensors[2] if len(tensors) > 2 else value)
        keep = None if masks[1] is None else jnp.asarray(masks[1]).astype(bool)[:, None, :]
        if use_causal_mask:
            causal = _causal_mask(scores.shape[-2], scores.shape[-1])
            keep = causal if keep is None else keep & causal
        if keep is not None:          # Keras subtracts (not replaces): a fully masked row stays a softmax
            large = 65504.0 if scores.dtype == jnp.float16 else 1e9
            scores = jnp.where(keep, scores, scores - jnp.asarray(large, scores.dtype))
        probabilities = jax.nn.softmax(scores, axis=-1)
        output = jnp.einsum("bts,bsc->btc", _dropped(self.dropout, probabilities), value)
        if masks[0] is not None:
            output = jnp.where(jnp.asarray(masks[0]).astype(bool)[..., None], output, jnp.zeros((), output.dtype))
        return (output, probabilities) if return_attention_scores else output


class Attention(Layer):
    """Dot-product (Luong-style) attention, Keras's `Attention`: called on [query, value] or [query, value,
    key] ([B, T, C], [B, S, C]), with `mask=[query_mask, value_mask]`, `return_attention_scores`,
    `use_causal_mask`. `use_scale` adds a learned scalar `scale`; score_mode="concat" scores
    concat_score_weight * sum(tanh(scale * (q + k)))."""

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{owner}: `score_mode` must be 'dot' or 'concat'; got score_mode={score_mode!r}.")
        self.use_scale, self.score_mode, self.seed = bool(use_scale), score_mode, seed
        self.dropout = _real(dropout, "dropout", owner, "a number in [0, 1), the fraction of attention "
                             "probabilities to drop", lambda r: 0 <= r < 1, 0.1)

    def __call__(self, inputs, mask=None, **kwargs):
        if not isinstance(inputs, dict):
            if not isinstance(inputs, (list, tuple)) or not 2 <= len(inputs) <= 3:
                raise ValueError(f"{type(self).__name__} '{self.name}' is called on a list [query, value] or "
                                 f"[query, value, key]; got {type(inputs).__name__}.")
            inputs = list(inputs) if mask is None else {"inputs": list(inputs), "mask": list(mask)}
        return super().__call__(inputs, **kwargs)

    def compute_output_shape(self, input_shape) -> tuple:
        shapes = input_shape["inputs"] if isinstance(input_shape, dict) else input_shape
        return (*shapes[0][:-1], shapes[1][-1])

    def make_module(self, input_shape, rngs) -> AttentionModule:
        return AttentionModule(self, input_shape["inputs"] if isinstance(input_shape, dict) else input_shape, rngs)


class AdditiveAttention(Attention):
    """Additive (Bahdanau-style) attention, Keras's `AdditiveAttention`: scores sum(scale * tanh(q + k)),
    `scale` [C] learned (glorot_uniform) when use_scale=True."""

    def __init__(self, use_scale=True, dropout=0.0, seed=None, **kwargs):
        super().__init__(use_scale=use_scale, dropout=dropout, seed=seed, **kwargs)
