"""How layers draw their weights: on the host, from the model's random streams.

The initializers themselves (names, classes, distributions) are batchfit/initializers.py's;
here they become host functions `init(rng, shape, dtype)` fed by `HostRngs`.
"""

from __future__ import annotations

import inspect

import jax
import numpy as np

from batchfit import initializers
from batchfit.initializers import INITIALIZERS, Initializer

__all__ = ["INITIALIZERS", "HostRngs", "get_initializer", "initial_value"]


class _OnHost:
    """A Keras-style initializer as the layers draw it: `init(rng, shape, dtype)` -> NumPy array.

    An Initializer without a seed of its own draws from `rng` (the model's stream for this
    weight); a seeded one from its seed; a plain function(shape, dtype) is called as it is.
    """

    on_host = True

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, rng, shape, dtype=np.float32):
        init = self.initializer
        if isinstance(init, Initializer):
            return np.asarray(init.draw(init._generator(rng), tuple(shape), dtype))
        return np.asarray(init(tuple(shape), dtype))

    def __repr__(self) -> str:
        return f"on_host({self.initializer!r})"


def _keras_style(function) -> bool:
    """Whether a callable takes (shape, dtype=None), as Keras's do, rather than jax.nn's (key, shape, dtype)."""
    try:
        first = next(iter(inspect.signature(function).parameters), None)
    except (TypeError, ValueError):
        return False
    return first == "shape"


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
    """The host initializer `init(rng, shape, dtype)` the layers draw a weight with.

    Names ("glorot_uniform", "HeNormal", "orthogonal", ...), config dicts, bf.initializers objects
    and Keras-style functions(shape, dtype=None) become host initializers; host ones
    (`.on_host`) and JAX-style callables(key, shape, dtype) such as jax.nn.initializers pass through.

    >>> float(get_initializer("ones")(None, (2, 3)).sum())
    6.0
    """
    if getattr(identifier, "on_host", False):
        return identifier
    if isinstance(identifier, (str, dict, Initializer)) or (isinstance(identifier, type)
                                                             and issubclass(identifier, Initializer)):
        return _OnHost(initializers.get(identifier))
    if callable(identifier):
        return _OnHost(identifier) if _keras_style(identifier) else identifier
    raise TypeError(f"An initializer must be a name, a bf.initializers object or a callable (shape, dtype) "
                    f"or (key, shape, dtype); got {type(identifier).__name__}. Pass e.g. 'glorot_uniform'.")
