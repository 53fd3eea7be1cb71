"""Keras's Adam direction as an optax transformation (optax.scale_by_adam places epsilon elsewhere)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["AdamState", "scale_by_keras_adam", "cast"]

_tree_map = jax.tree_util.tree_map


def cast(value, like):
    """`value` as an array of `like`'s dtype (Keras casts hyperparameters to each variable's dtype)."""
    return jnp.asarray(value, dtype=jnp.result_type(like))


class AdamState(NamedTuple):
    """Keras Adam state: count (int32), first and second moments, max second moment (amsgrad)."""
    count: jax.Array
    momentum: Any
    velocity: Any
    velocity_hat: Any


def scale_by_keras_adam(beta_1, beta_2, epsilon, amsgrad) -> optax.GradientTransformation:
    """Keras's Adam direction, lr excluded: ``sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)``."""
    # optax.scale_by_adam adds epsilon to sqrt(v_hat) after bias correction; Keras adds it
    # to sqrt(v) and folds the correction into the step size, which differs for small v.
    def init_fn(params):
        zeros = optax.tree.zeros_like
        velocity_hat = zeros(params) if amsgrad else None
        return AdamState(jnp.zeros([], jnp.int32), zeros(params), zeros(params), velocity_hat)

    def update_fn(updates, state, params=None):
        m = _tree_map(lambda g, m: m + (g - m) * cast(1 - beta_1, m), updates, state.momentum)
        v = _tree_map(lambda g, v: v + (g * g - v) * cast(1 - beta_2, v), updates, state.velocity)
        v_hat = _tree_map(jnp.maximum, state.velocity_hat, v) if amsgrad else None
        count = optax.safe_increment(state.count)
        def leaf(m, v):
            t = cast(count, m)
            correction = jnp.sqrt(1 - cast(beta_2, m) ** t) / (1 - cast(beta_1, m) ** t)
            return m * correction / (jnp.sqrt(v) + cast(epsilon, v))
        direction = _tree_map(leaf, m, v_hat if amsgrad else v)
        return direction, AdamState(count, m, v, v_hat)
    return optax.GradientTransformation(init_fn, update_fn)
