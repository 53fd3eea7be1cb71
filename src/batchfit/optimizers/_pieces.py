"""The optax pieces of Keras's common optimizer steps: lr scaling, gradient clipping, weight decay.

Each casts its hyperparameters to every leaf's dtype, as Keras casts them to each variable's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from batchfit._keras_adam import cast as _cast

__all__ = ["scale_by_learning_rate", "clip_by_norm", "clip_by_global_norm", "decoupled_weight_decay"]

_tree_map = jax.tree_util.tree_map


def scale_by_learning_rate(learning_rate) -> optax.GradientTransformation:
    """``-lr * g`` with lr cast to each leaf's dtype."""
    # Keras casts lr to each variable's dtype; optax.scale_by_learning_rate multiplies by the
    # float32 array, which turns bfloat16 updates (and a momentum trace after it) into float32.
    return optax.stateless_with_tree_map(lambda g, _: g * -_cast(learning_rate, g))


def clip_by_norm(g, clipnorm):
    """One gradient leaf clipped to L2 norm `clipnorm` (Keras's `clipnorm`)."""
    # Per leaf, which optax lacks (clip_by_block_rms divides by the RMS, not the L2 norm).
    # Keras: g * c / max(||g||, c); the `where` keeps a zero gradient exact.
    l2sum = jnp.sum(jnp.square(g))
    l2norm = jnp.where(l2sum > 0, jnp.sqrt(jnp.where(l2sum > 0, l2sum, 1.0)), l2sum)
    return g * _cast(clipnorm, g) / jnp.maximum(l2norm, _cast(clipnorm, g))


def clip_by_global_norm(grads, clipnorm):
    """All gradients scaled together to global L2 norm at most `clipnorm` (Keras's `global_clipnorm`)."""
    # optax.clip_by_global_norm zeroes the finite leaves when the norm is inf; Keras adds
    # (norm - norm) so that every leaf turns NaN, which TerminateOnNaN and users can see.
    norm = optax.tree.norm(grads)
    factor = clipnorm * jnp.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)
    return _tree_map(lambda g: g * _cast(factor, g), grads)


def decoupled_weight_decay(weight_decay, learning_rate, owner) -> optax.GradientTransformation:
    """Add ``-var * weight_decay * lr`` to the updates: Keras's decoupled weight decay."""
    # optax.add_decayed_weights scales by one float32 array, which makes bfloat16 updates
    # float32; Keras casts weight_decay and lr to each variable's dtype.
    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}(weight_decay={weight_decay}) needs the parameters; got "
                             f"params=None. Call `tx.update(grads, state, params)`.")
        return _tree_map(lambda u, p: u - p * _cast(weight_decay, p) * _cast(learning_rate, p),
                         updates, params), state
    return optax.GradientTransformation(optax.init_empty_state, update_fn)
