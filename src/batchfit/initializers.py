"""Keras's weight initializers (`keras.initializers`): classes with Keras's names, arguments,
distributions and configs, drawn on the host with NumPy.

An initializer is called Keras-style, `init(shape, dtype=None)` -> a JAX array, and like Keras's
it returns the same values on every call: a seeded one from its seed, an unseeded one from a
seed drawn once when it is made (`batchfit._random.next_seed()`, which
`bf.utils.set_random_seed` makes repeatable). Given to a layer (`kernel_initializer=`), an
unseeded initializer draws from the model's random streams, so the model's seed decides the
weights; a seeded one draws from its own seed, as in Keras.

>>> init = GlorotUniform(seed=0)
>>> bool((init((2, 3)) == init((2, 3))).all())
True
>>> get("ones")((2,)).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from batchfit._random import next_seed
from batchfit.registry import Registry

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "Identity", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal",
    "LecunUniform", "LecunNormal", "Orthogonal", "INITIALIZERS", "get", "serialize", "deserialize",
]

INITIALIZERS = Registry("initializer")
TRUNCATED_STDDEV = 0.87962566103423978    # the std of N(0, 1) cut at +-2: Keras divides by it


class Initializer:
    """Base class: `init(shape, dtype=None)` -> a JAX array [shape] of `dtype` (float32 by default).

    Built-ins define `draw(rng, shape, dtype)`, the NumPy values from a np.random.Generator. A
    user's subclass may define `__call__(shape, dtype=None)` instead, as in Keras.
    """

    def __call__(self, shape, dtype=None):
        if type(self).draw is Initializer.draw:
            raise NotImplementedError(f"{type(self).__name__} must define __call__(shape, dtype=None) "
                                      f"(or draw(rng, shape, dtype)).")
        dtype = jnp.dtype(dtype or "float32")
        wide = jnp.promote_types(dtype, jnp.float32)      # drawn at float32 or wider, then rounded
        value = self.draw(self._generator(None), tuple(shape), wide)
        return jax.device_put(np.asarray(value).astype(dtype))

    def draw(self, rng: np.random.Generator | None, shape: tuple, dtype) -> np.ndarray:
        """The initial values [shape] of `dtype` as a NumPy array, drawn from `rng`."""
        return np.asarray(self(shape, dtype))

    def _generator(self, rng):
        """The generator a draw uses: the model's `rng` (None when called on its own)."""
        return rng

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def clone(self):
        return type(self).from_config(self.get_config())

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


def _register(*aliases: str):
    """Register a class under its name, its snake_case name (Keras's spellings) and `aliases`."""
    def add(cls):
        snake = "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(cls.__name__))
        return INITIALIZERS.register(cls.__name__, snake, *aliases)(cls)
    return add


def _float(value, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}: `{name}` must be a number; got {name}={value!r}.")
    return float(value)


# ----- constants ------------------------------------------------------------------------------

@_register("zero")
class Zeros(Initializer):
    """All zeros."""

    def draw(self, rng, shape, dtype):
        return np.zeros(shape, dtype)


@_register("one")
class Ones(Initializer):
    """All ones."""

    def draw(self, rng, shape, dtype):
        return np.ones(shape, dtype)


@_register()
class Constant(Initializer):
    """Every entry `value` (a scalar)."""

    def __init__(self, value=0.0):
        self.value = value

    def draw(self, rng, shape, dtype):
        return np.full(shape, self.value, dtype)

    def get_config(self):
        return {"value": self.value}


@_register("IdentityInitializer")
class Identity(Initializer):
    """`gain` times the identity matrix [rows, columns] (ones on the main diagonal); 2-D shapes only."""

    def __init__(self, gain=1.0):
        self.gain = gain

    def draw(self, rng, shape, dtype):
        if len(shape) != 2:
            raise ValueError(f"Identity initializes matrices only; got shape {shape} of rank {len(shape)}. "
                             f"Use it for a 2-D weight such as a Dense kernel.")
        return (self.gain * np.eye(*shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain}


# ----- random ---------------------------------------------------------------------------------

class _RandomInitializer(Initializer):
    """Draws from `seed`: given, or drawn once now from the global seed (as Keras's are)."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{type(self).__name__}: `seed` must be a non-negative int or None; got "
                             f"seed={seed!r}. Pass e.g. seed=42.")
        self._init_seed = None if seed is None else int(seed)
        self.seed = next_seed() if seed is None else int(seed)

    def _generator(self, rng):
        """The initializer's own seed when it was given one (or when called on its own), else the model's `rng`."""
        return np.random.default_rng(self.seed) if self._init_seed is not None or rng is None else rng

    def get_config(self):
        return {"seed": self._init_seed}


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal values cut at +-2 (Keras's truncated normal): out-of-range draws are drawn again."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values


@_register("normal")
class RandomNormal(_RandomInitializer):
    """Normal values: mean `mean`, standard deviation `stddev`."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def draw(self, rng, shape, dtype):
        return (self.mean + self.stddev * rng.standard_normal(shape)).astype(dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


@_register("uniform")
class RandomUniform(_RandomInitializer):
    """Uniform values in [minval, maxval)."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval = minval, maxval
        super().__init__(seed)

    def draw(self, rng, shape, dtype):
        return rng.uniform(self.minval, self.maxval, shape).astype(dtype)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


@_register()
class TruncatedNormal(_RandomInitializer):
    """Normal values (mean `mean`, standard deviation `stddev` before the cut) within 2 `stddev` of the mean."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def draw(self, rng, shape, dtype):
        return (self.mean + self.stddev * _truncated_normal(rng, shape)).astype(dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


def compute_fans(shape: tuple, input_axes=None, output_axes=None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight, as Keras counts them: [in, out] matrices, [..., in, out]
    convolution kernels (times the receptive field), a vector's length as both, 1 for scalars."""
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
    if len(shape) < 2:
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@_register()
class VarianceScaling(_RandomInitializer):
    """Values of variance `scale / n`, n the fan_in, fan_out or their mean (`mode`).

    `distribution`: "truncated_normal" (or "normal"): normal values cut at 2 standard deviations,
    the standard deviation raised by 1 / 0.8796 so that the cut values have that variance;
    "untruncated_normal"; or "uniform" in [-limit, limit], limit = sqrt(3 * scale / n).
    """

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        owner = type(self).__name__
        if _float(scale, "scale", owner) <= 0.0:
            raise ValueError(f"{owner}: `scale` must be a positive number; got scale={scale!r}.")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"{owner}: `mode` must be 'fan_in', 'fan_out' or 'fan_avg'; got mode={mode!r}.")
        distribution = str(distribution).lower()
        distribution = "truncated_normal" if distribution == "normal" else distribution
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(f"{owner}: `distribution` must be 'truncated_normal' (or 'normal'), "
                             f"'untruncated_normal' or 'uniform'; got distribution={distribution!r}.")
        self.scale, self.mode, self.distribution = scale, mode, distribution
        self.input_axes, self.output_axes = input_axes, output_axes
        super().__init__(seed)

    def draw(self, rng, shape, dtype):
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape).astype(dtype)
        if self.distribution == "untruncated_normal":
            return (math.sqrt(variance) * rng.standard_normal(shape)).astype(dtype)
        return (math.sqrt(variance) / TRUNCATED_STDDEV * _truncated_normal(rng, shape)).astype(dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode,
                "distribution": self.distribution, "input_axes": self.input_axes, "output_axes": self.output_axes}


class _Preset(VarianceScaling):
    """A named VarianceScaling: its config is the seed and the axes only (as Keras's)."""

    preset: tuple = ()

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        scale, mode, distribution = self.preset
        super().__init__(scale, mode, distribution, seed, input_axes, output_axes)

    def get_config(self):
        return {"seed": self._init_seed, "input_axes": self.input_axes, "output_axes": self.output_axes}


@_register()
class GlorotUniform(_Preset):
    """Uniform in [-limit, limit], limit = sqrt(6 / (fan_in + fan_out)): Keras's default kernel."""
    preset = (1.0, "fan_avg", "uniform")


@_register()
class GlorotNormal(_Preset):
    """Truncated normal, standard deviation sqrt(2 / (fan_in + fan_out)) after the cut."""
    preset = (1.0, "fan_avg", "truncated_normal")


@_register()
class HeUniform(_Preset):
    """Uniform in [-limit, limit], limit = sqrt(6 / fan_in)."""
    preset = (2.0, "fan_in", "uniform")


@_register()
class HeNormal(_Preset):
    """Truncated normal, standard deviation sqrt(2 / fan_in) after the cut."""
    preset = (2.0, "fan_in", "truncated_normal")


@_register()
class LecunUniform(_Preset):
    """Uniform in [-limit, limit], limit = sqrt(3 / fan_in)."""
    preset = (1.0, "fan_in", "uniform")


@_register()
class LecunNormal(_Preset):
    """Truncated normal, standard deviation sqrt(1 / fan_in) after the cut."""
    preset = (1.0, "fan_in", "truncated_normal")


@_register("OrthogonalInitializer")
class Orthogonal(_RandomInitializer):
    """`gain` times a random orthogonal matrix: the Q of the QR decomposition of a normal matrix,
    its columns' signs fixed by R's diagonal (so Q is uniform over orthogonal matrices).

    A shape [..., n] is made as a [prod(...), n] matrix and reshaped; with fewer rows than columns,
    the rows are orthonormal, otherwise the columns.
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = gain
        super().__init__(seed)

    def draw(self, rng, shape, dtype):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal initializes tensors of rank 2 or more; got shape {shape} of rank "
                             f"{len(shape)}. Use it for kernels, not biases.")
        rows, columns = math.prod(shape[:-1]), shape[-1]
        q, r = np.linalg.qr(rng.standard_normal((max(rows, columns), min(rows, columns))))
        q *= np.sign(np.diag(r))
        if rows < columns:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dtype)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


# ----- lookup ---------------------------------------------------------------------------------

def get(identifier):
    """An initializer for a name ("glorot_uniform", "GlorotUniform", any case), a config dict
    ({"class_name": ..., "config": ...}) or an Initializer class; callables pass through; None gives None.

    >>> get("he_normal")
    HeNormal(seed=None, input_axes=None, output_axes=None)
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return INITIALIZERS.get(identifier)()
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError(f"An initializer config needs 'class_name' (and 'config'); got keys "
                             f"{sorted(identifier)}. Pass e.g. {{'class_name': 'HeNormal', 'config': {{'seed': 1}}}}.")
        return INITIALIZERS.get(identifier["class_name"]).from_config(dict(identifier.get("config") or {}))
    if isinstance(identifier, type):
        return identifier()
    if callable(identifier):
        return identifier
    raise TypeError(f"An initializer must be a name, a config dict, an Initializer or a callable(shape, "
                    f"dtype=None); got {type(identifier).__name__}. Pass e.g. 'glorot_uniform'.")


def serialize(initializer: Initializer) -> dict:
    """{"class_name": ..., "config": ...}, which `get` / `deserialize` turn back into the initializer."""
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def deserialize(config: dict) -> Initializer:
    return get(config)

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
