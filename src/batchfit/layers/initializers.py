"""Keras weight initializers by name (glorot_uniform, he_normal, zeros, ...)."""

from __future__ import annotations

import math

import jax
import numpy as np

from batchfit.registry import Registry

__all__ = ["INITIALIZERS", "HostRngs", "get_initializer", "initial_value"]

INITIALIZERS = Registry("initializer")


def _fans(shape) -> tuple[float, float]:
    if len(shape) < 2:  # Keras: a vector counts its length as both fans
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal values cut at +-2 (Keras's truncated normal): out-of-range draws are drawn again."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values


def _variance_scaling(scale: float, mode: str, distribution: str):
    def init(rng, shape, dtype=np.float32):
        fan_in, fan_out = _fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape).astype(dtype)
        stddev = math.sqrt(variance) / 0.87962566103423978  # std of N(0, 1) cut at +-2
        return (stddev * _truncated_normal(rng, shape)).astype(dtype)
    return init


# The built-in initializers draw on the host, with NumPy: `init(rng, shape, dtype)` takes a
# np.random.Generator and returns a NumPy array. Drawing with jax.random inside a compiled
# program would cost a fresh process a threefry compile per weight shape before the first step.
for _names, _init in {
    ("glorot_uniform",): _variance_scaling(1.0, "fan_avg", "uniform"),
    ("glorot_normal",): _variance_scaling(1.0, "fan_avg", "normal"),
    ("he_uniform",): _variance_scaling(2.0, "fan_in", "uniform"),
    ("he_normal",): _variance_scaling(2.0, "fan_in", "normal"),
    ("lecun_uniform",): _variance_scaling(1.0, "fan_in", "uniform"),
    ("lecun_normal",): _variance_scaling(1.0, "fan_in", "normal"),
    ("zeros",): lambda rng, shape, dtype=np.float32: np.zeros(shape, dtype),
    ("ones",): lambda rng, shape, dtype=np.float32: np.ones(shape, dtype),
    ("uniform", "random_uniform"): lambda rng, shape, dtype=np.float32: rng.uniform(-0.05, 0.05, shape).astype(dtype),
    ("normal", "random_normal"): lambda rng, shape, dtype=np.float32: (0.05 * rng.standard_normal(shape)).astype(dtype),
}.items():
    _init.on_host = True
    INITIALIZERS.register(*_names)(_init)


class HostRngs:
    """The random streams a model's layers are built from, on the host: `params()` hands each
    weight its own np.random.Generator, `dropout()` each Dropout layer its own seed; both follow
    from the model's seed and the order of the calls, so the same seed builds the same model."""

    def __init__(self, seed: int):
        self._params, self._dropout = (np.random.SeedSequence([int(seed), stream]) for stream in (0, 1))

    def params(self) -> np.random.Generator:
        return np.random.default_rng(self._params.spawn(1)[0])

    def dropout(self) -> int:
        return int(self._dropout.spawn(1)[0].generate_state(1)[0] >> 1)

    def __contains__(self, stream: str) -> bool:
        return stream in ("params", "dropout")


def initial_value(initializer, rng: np.random.Generator, shape, dtype):
    """The initial weight [shape] as a JAX array of `dtype`: drawn at float32 (or wider) and rounded
    to `dtype`, so a half-precision layer starts from the float32 weights, rounded. A user's
    initializer that is not a host one gets a JAX key drawn from `rng`, as jax.nn.initializers expect."""
    wide = np.promote_types(np.dtype(dtype), np.float32)
    if getattr(initializer, "on_host", False):
        value = np.asarray(initializer(rng, tuple(shape), wide))
    else:
        value = initializer(jax.random.key(int(rng.integers(2**31))), tuple(shape), wide)
    return jax.device_put(np.asarray(value).astype(dtype))      # a transfer; jnp.asarray would compile one


def get_initializer(identifier):
    """The Keras initializer for a name (a host one: `init(rng, shape, dtype)`); callables pass through.

    >>> float(get_initializer("ones")(None, (2, 3)).sum())
    6.0
    """
    if isinstance(identifier, str):
        return INITIALIZERS.get(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(f"An initializer must be a name or a callable (key, shape, dtype); got "
                    f"{type(identifier).__name__}. Pass e.g. 'glorot_uniform'.")
