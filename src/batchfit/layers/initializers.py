"""Keras weight initializers by name (glorot_uniform, he_normal, zeros, ...)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from batchfit.registry import Registry

__all__ = ["INITIALIZERS", "get_initializer"]

INITIALIZERS = Registry("initializer")


def _fans(shape) -> tuple[float, float]:
    if len(shape) < 2:  # Keras: a vector counts its length as both fans
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale: float, mode: str, distribution: str):
    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = _fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        stddev = math.sqrt(variance) / 0.87962566103423978  # std of N(0, 1) cut at +-2
        return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return init


for _names, _init in {
    ("glorot_uniform",): _variance_scaling(1.0, "fan_avg", "uniform"),
    ("glorot_normal",): _variance_scaling(1.0, "fan_avg", "normal"),
    ("he_uniform",): _variance_scaling(2.0, "fan_in", "uniform"),
    ("he_normal",): _variance_scaling(2.0, "fan_in", "normal"),
    ("lecun_uniform",): _variance_scaling(1.0, "fan_in", "uniform"),
    ("lecun_normal",): _variance_scaling(1.0, "fan_in", "normal"),
    ("zeros",): lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype),
    ("ones",): lambda key, shape, dtype=jnp.float32: jnp.ones(shape, dtype),
    ("uniform", "random_uniform"):
        lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -0.05, 0.05),
    ("normal", "random_normal"):
        lambda key, shape, dtype=jnp.float32: 0.05 * jax.random.normal(key, shape, dtype),
}.items():
    INITIALIZERS.register(*_names)(_init)


def get_initializer(identifier):
    """The Keras initializer `init(key, shape, dtype)` for a name; callables pass through.

    >>> float(get_initializer("ones")(None, (2, 3)).sum())
    6.0
    """
    if isinstance(identifier, str):
        return INITIALIZERS.get(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(f"An initializer must be a name or a callable (key, shape, dtype); got "
                    f"{type(identifier).__name__}. Pass e.g. 'glorot_uniform'.")
