"""Keras's dynamic loss scaling (`LossScaleOptimizer`) as an optax transformation.

The train step multiplies the loss by the scale held in the optimizer state (`scale_of`), so the
float16 gradients of small losses do not underflow; the update divides the gradients by that scale
again. A step whose gradients hold an inf or a NaN is skipped (weights and the inner optimizer's
state unchanged) and the scale halved; after `dynamic_growth_steps` finite steps in a row it doubles.
The scale and the count of finite steps are optimizer state: they are part of the training state,
cross the fused loop as its carry and are saved with checkpoints.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from batchfit.optimizers import Optimizer, get

__all__ = ["LossScaleOptimizer", "LossScaleState", "loss_scale", "scale_of", "all_finite"]


class LossScaleState(NamedTuple):
    """The optimizer state of a loss-scaled optimizer (Keras's variable names).

    inner_state: the wrapped optimizer's state; dynamic_scale: float32 [], what the loss is
    multiplied by; step_counter: int32 [], finite steps since the scale last changed.
    """

    inner_state: Any
    dynamic_scale: jax.Array
    step_counter: jax.Array


class _LossScaled(optax.GradientTransformationExtraArgs):
    """An optax transformation whose state is a LossScaleState (a marker: already loss-scaled)."""

    __slots__ = ()
    loss_scaled = True


def all_finite(tree) -> jax.Array:
    """bool []: whether every element of every array in `tree` is finite."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])) if leaves else jnp.bool_(True)


def scale_of(opt_state) -> jax.Array | None:
    """The loss scale in `opt_state` (float32 []), or None when the optimizer does not scale the loss."""
    return opt_state.dynamic_scale if isinstance(opt_state, LossScaleState) else None


def loss_scale(inner: optax.GradientTransformation, initial_scale: float = 2.0**15,
               dynamic_growth_steps: int = 2000) -> optax.GradientTransformationExtraArgs:
    """`inner` behind Keras's dynamic loss scaling; its `update` takes the gradients of the scaled loss.

    >>> tx = loss_scale(optax.sgd(1.0), initial_scale=4.0, dynamic_growth_steps=2)
    >>> state = tx.init(jnp.zeros(()))
    >>> updates, state = tx.update(jnp.array(8.0), state)          # gradient 8 / scale 4 = 2
    >>> float(updates), float(state.dynamic_scale), int(state.step_counter)
    (-2.0, 4.0, 1)
    >>> updates, state = tx.update(jnp.array(jnp.inf), state)      # skipped, scale halved
    >>> float(updates), float(state.dynamic_scale), int(state.step_counter)
    (0.0, 2.0, 0)
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return LossScaleState(inner.init(params), jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32))

    def update(grads, state: LossScaleState, params=None, **extra):
        finite = all_finite(grads)
        scale = state.dynamic_scale
        unscaled = jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)
        updates, inner_state = inner.update(unscaled, state.inner_state, params, **extra)
        grow = state.step_counter >= dynamic_growth_steps - 1
        new_scale = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), scale * 0.5)
        counter = jnp.where(finite & ~grow, state.step_counter + 1, 0).astype(jnp.int32)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state, state.inner_state)
        return updates, LossScaleState(inner_state, new_scale, counter)

    return _LossScaled(init, update)


class LossScaleOptimizer(Optimizer):
    """An optimizer that scales the loss dynamically, as `keras.optimizers.LossScaleOptimizer`.

    Args:
      inner_optimizer: what `compile(optimizer=...)` takes: a name, a batchfit optimizer or an
        optax transformation; it makes the updates from the unscaled gradients.
      initial_scale: the first loss scale (a float > 0; Keras's 2**15).
      dynamic_growth_steps: the scale doubles after this many finite steps in a row (an int >= 1).
    """

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000, name=None, **kwargs):
        if not kwargs.pop("dynamic", True):
            raise ValueError("LossScaleOptimizer(dynamic=False) is not supported (nor in Keras 3): the scale is "
                             "always dynamic. For a fixed scale, multiply the loss yourself.")
        if kwargs:
            raise TypeError(f"LossScaleOptimizer got unexpected arguments {sorted(kwargs)}; it takes "
                            f"inner_optimizer, initial_scale, dynamic_growth_steps and name. Set clipping, "
                            f"weight decay and the like on the inner optimizer.")
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise TypeError("LossScaleOptimizer got another LossScaleOptimizer as `inner_optimizer`; "
                            "the gradients would be unscaled twice. Pass the inner optimizer itself.")
        get(inner_optimizer)                                  # a bad optimizer fails here, not at fit
        if (isinstance(initial_scale, bool) or not isinstance(initial_scale, numbers.Real)
                or not math.isfinite(initial_scale) or initial_scale <= 0):
            raise ValueError(f"`initial_scale` must be a finite float > 0; got {initial_scale!r}. "
                             f"Pass e.g. initial_scale=2.0**15 (Keras's default).")
        if (isinstance(dynamic_growth_steps, bool) or not isinstance(dynamic_growth_steps, numbers.Integral)
                or dynamic_growth_steps < 1):
            raise ValueError(f"`dynamic_growth_steps` must be an int >= 1; got {dynamic_growth_steps!r}. "
                             f"Pass e.g. dynamic_growth_steps=2000 (Keras's default).")
        self.inner_optimizer, self.name = inner_optimizer, name or "loss_scale_optimizer"
        self.initial_scale, self.dynamic_growth_steps = float(initial_scale), int(dynamic_growth_steps)

    @property
    def learning_rate(self):
        """The inner optimizer's learning rate (a float or a schedule), as Keras's property."""
        return getattr(self.inner_optimizer, "learning_rate", None)

    def to_optax(self) -> optax.GradientTransformationExtraArgs:
        """The inner optimizer's transformation behind dynamic loss scaling (`loss_scale`)."""
        return loss_scale(get(self.inner_optimizer), self.initial_scale, self.dynamic_growth_steps)

    def get_config(self) -> dict:
        """Keras's layout: the inner optimizer as {"class_name", "config"} when it has a config."""
        inner = self.inner_optimizer
        if isinstance(inner, Optimizer):
            inner = {"class_name": type(inner).__name__, "config": inner.get_config()}
        return {"name": self.name, "inner_optimizer": inner, "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        config = dict(config)
        inner = config.pop("inner_optimizer")
        if isinstance(inner, dict):
            from batchfit.optimizers import OPTIMIZERS
            inner = OPTIMIZERS.get(inner["class_name"]).from_config(inner["config"], custom_objects)
        return cls(inner, **config)

    def __repr__(self) -> str:
        return (f"LossScaleOptimizer({self.inner_optimizer!r}, initial_scale={self.initial_scale!r}, "
                f"dynamic_growth_steps={self.dynamic_growth_steps!r})")
