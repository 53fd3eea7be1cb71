"""TrainState and the (sum, count) accumulators: the named pytrees carried through every step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["TrainState", "Batch", "Accumulator", "ModelGraph", "split_module", "zero_totals"]


class Batch(NamedTuple):
    """One batch: inputs `x` (array or dict) [B, ...], targets `y` [B, ...], weights `w` [B] float32."""

    x: Any
    y: Any
    w: jax.Array


class Accumulator(NamedTuple):
    """A running weighted mean kept as (sum, count); `result` divides only when read."""

    total: jax.Array
    count: jax.Array

    @staticmethod
    def zero() -> "Accumulator":
        return Accumulator(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def add(self, total, count) -> "Accumulator":
        return Accumulator(self.total + total, self.count + count)

    def result(self):
        return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1e-30), 0.0)


class TrainState(NamedTuple):
    """Everything one training step reads and writes, as plain dicts of arrays.

    params: the trainable nnx.Param values (a pure nested dict, so optax masks see names);
    model_state: every other variable (batch statistics, RNG keys and counts);
    opt_state: the optax state; step: the number of updates done (int32).
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array


class ModelGraph(NamedTuple):
    """The static half of a split NNX module: one graphdef per mode plus the state layouts."""

    train: Any
    eval: Any
    params_def: Any
    model_state_def: Any

    def merge(self, params, model_state, training: bool):
        """Rebuild the module inside traced code from pure-dict params and model state."""
        graph = self.train if training else self.eval
        p = jax.tree.unflatten(self.params_def, jax.tree.leaves(params))
        s = jax.tree.unflatten(self.model_state_def, jax.tree.leaves(model_state))
        return nnx.merge(graph, p, s, copy=True)

    def split(self, module):
        """The pure-dict (params, model_state) of a module built by `merge`."""
        _, p, s = nnx.split(module, nnx.Param, ...)
        return nnx.to_pure_dict(p), nnx.to_pure_dict(s)


def split_module(module: nnx.Module):
    """Split `module` once: (ModelGraph, params, model_state) with params and state as pure dicts."""
    module.train()
    train_graph, params, model_state = nnx.split(module, nnx.Param, ...)
    module.eval()
    eval_graph, _, _ = nnx.split(module, nnx.Param, ...)
    graph = ModelGraph(train_graph, eval_graph, jax.tree.structure(params), jax.tree.structure(model_state))
    return graph, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


def zero_totals(metric_names) -> dict:
    """Fresh accumulators for the loss and each metric, keyed by log name."""
    return {name: Accumulator.zero() for name in ("loss", *metric_names)}
