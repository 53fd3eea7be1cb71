"""Keras's stateless optimizer protocol (`stateless_apply`, `variables`) on optax transformations.

A custom `train_step` (Keras's JAX protocol) updates weights with
`optimizer.stateless_apply(optimizer_variables, grads, trainable_variables)`. The model's own
optimizer gets its state from the step's `state`; any other optimizer the model holds (a GAN's
`d_optimizer`) has its state in the training state too: while the step is traced, `variables`
reads it and `stateless_apply` writes it back (`binding`), as a weight handle reads the step's copy.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["KerasStateless", "StateLeaf", "binding", "variables", "stateless_apply", "loss_scale"]

_BOUND: list[dict] = []      # while a custom step is traced: {id(optimizer): its state's leaves}


class StateLeaf:
    """One array of an optimizer's state, read as Keras reads a variable (`.value`, `.numpy()`)."""

    def __init__(self, value):
        self.value = value

    @property
    def shape(self) -> tuple:
        return tuple(jnp.shape(self.value))

    def numpy(self) -> np.ndarray:
        return np.asarray(self.value)


@contextlib.contextmanager
def binding(states: dict):
    """Within the block, the optimizers keyed (by id) in `states` read and write their state there;
    `states["shapes"][id]` records the shapes of the variables each one updated."""
    _BOUND.append(states)
    try:
        yield states
    finally:
        _BOUND.pop()


def loss_scale():
    """Inside a custom step: the model optimizer's loss scale (float32 []), or None when it has none."""
    return _BOUND[-1].get("loss_scale") if _BOUND else None


def variables(optimizer) -> list:
    return [StateLeaf(leaf) for leaf in (_BOUND[-1].get(id(optimizer), []) if _BOUND else [])]


def _values(items) -> list:
    return [jnp.asarray(getattr(v, "value", v)) for v in items]


def stateless_apply(optimizer, tx: optax.GradientTransformation, optimizer_variables, grads, trainable_variables):
    """`tx`'s update of lists of arrays: (new trainable values, new state leaves).

    optimizer_variables: the state's leaves, a list; empty: the state `tx.init` gives (a first step).
    grads, trainable_variables: lists of arrays, one per variable updated, in the same order.
    """
    grads, params = list(grads), _values(trainable_variables)
    if len(grads) != len(params):
        raise ValueError(f"stateless_apply(): got {len(grads)} gradients for {len(params)} trainable variables. "
                         f"Pass one gradient per variable, in the order of the variables.")
    leaves = _values(optimizer_variables)
    if leaves:
        layout = jax.tree.structure(jax.eval_shape(tx.init, params))
        if layout.num_leaves != len(leaves):
            raise ValueError(f"stateless_apply(): `optimizer_variables` has {len(leaves)} arrays; this optimizer's "
                             f"state for these {len(params)} variables has {layout.num_leaves}. Pass the state "
                             f"`optimizer.variables` (or the step's `optimizer_variables`) holds.")
        state = jax.tree.unflatten(layout, leaves)
    else:
        state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new_leaves = jax.tree.leaves(state)
    if _BOUND:
        _BOUND[-1][id(optimizer)] = new_leaves
        _BOUND[-1].setdefault("shapes", {})[id(optimizer)] = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params]
    return optax.apply_updates(params, updates), new_leaves


class KerasStateless:
    """Keras's stateless optimizer API, mixed into batchfit.optimizers.Optimizer (which gives `to_optax`)."""

    def build(self, variables) -> None:
        """Keras's `build`: a no-op (a custom train_step starts the state from the variables' shapes)."""

    @property
    def variables(self) -> list:
        """Inside a model's custom `train_step`: this optimizer's state in the training state (`.value`
        handles, Keras's `optimizer.variables`); [] outside one."""
        return variables(self)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """One pure update -> (new trainable values, new state leaves), as Keras's.

        >>> from batchfit.optimizers import SGD
        >>> new, state = SGD(0.1).stateless_apply([], [jnp.array(2.0)], [jnp.array(1.0)])
        >>> round(float(new[0]), 6)   # 1 - 0.1 * 2
        0.8
        """
        return stateless_apply(self, self.to_optax(), optimizer_variables, grads, trainable_variables)
