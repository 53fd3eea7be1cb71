"""Preprocessing layers as Keras 3 has them: Normalization, Rescaling, CategoryEncoding, Discretization, Hashing.

They run inside the compiled step (jax.numpy only) and have no trainable weights. Statistics that `adapt(data)`
computes on the host (Normalization's mean and variance, Discretization's bin boundaries) are kept by the layer,
so a model built later starts from them; Normalization's are weights (non-trainable) that save with the model.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.errors import describe
from batchfit.layers import _scope
from batchfit.layers._hashing import fingerprint_bins
from batchfit.layers.base import _FLOAT_DTYPES, _INTEGER_DTYPES, Layer, _jax_dtype, _positive_int, _real

__all__ = ["Normalization", "Rescaling", "CategoryEncoding", "Discretization", "Hashing"]

_EPSILON = 1e-7           # Keras's backend.epsilon(): the smallest standard deviation Normalization divides by


def _batches(data, owner: str):
    """`data` as an iterator of NumPy batches [B, ...]: one array, or an iterable of batches (a bf.data.Dataset, a
    list, a generator), whose (x, y) tuples give their x, as Keras's adapt."""
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return iter([np.asarray(data)])
    if not hasattr(data, "__iter__") or isinstance(data, (str, bytes, dict)):
        raise TypeError(f"{owner}.adapt() takes a NumPy array, a bf.data.Dataset or an iterable of batches; got "
                        f"{describe(data)}. Pass e.g. layer.adapt(np.asarray(x)).")

    def arrays():
        for batch in data:
            batch = batch[0] if isinstance(batch, tuple) else batch
            if not hasattr(batch, "shape"):
                raise TypeError(f"{owner}.adapt() got an iterable whose batches are {type(batch).__name__}, not "
                                f"arrays. Pass one array (np.asarray(data)) or an iterable of array batches.")
            yield np.asarray(batch)
    return arrays()


# ----- Normalization ------------------------------------------------------------------------------

class NormalizationModule(nnx.Module):
    """Built `Normalization`: (x - mean) / max(sqrt(variance), 1e-7), or its inverse, with mean and variance over
    the kept axes (non-trainable weights mean, variance, count when adapted; constants when given)."""

    def __init__(self, layer: "Normalization", input_shape):
        kept = layer._kept_axes(len(input_shape) + 1)
        self.broadcast = (1, *(input_shape[a - 1] if a in kept else 1 for a in range(1, len(input_shape) + 1)))
        self.compute_dtype, dtype = _jax_dtype(layer.compute_dtype), _jax_dtype(layer.variable_dtype)
        self.invert = layer.invert
        if layer.input_mean is None:
            shape = tuple(input_shape[a - 1] for a in kept)
            mean, variance = layer._adapted if layer._adapted is not None and layer._adapted[0].shape == shape \
                else (np.zeros(shape), np.ones(shape))
            self.mean = nnx.BatchStat(jax.device_put(np.asarray(mean, dtype)))
            self.variance = nnx.BatchStat(jax.device_put(np.asarray(variance, dtype)))
            self.count = nnx.BatchStat(jax.device_put(np.zeros((), np.int32)))
            self.keras_weights = ("mean", "variance", "count")
        else:
            self.mean = nnx.BatchStat(jax.device_put(layer._given(layer.input_mean, kept, self.broadcast, dtype)))
            self.variance = nnx.BatchStat(jax.device_put(layer._given(layer.input_variance, kept, self.broadcast,
                                                                      dtype)))
            self.keras_weights = ()

    def __call__(self, x):
        x = jnp.asarray(x).astype(self.compute_dtype)          # integer features too, as Keras
        mean = self.mean[...].astype(self.compute_dtype).reshape(self.broadcast)
        deviation = jnp.maximum(jnp.sqrt(self.variance[...].astype(self.compute_dtype).reshape(self.broadcast)),
                                jnp.asarray(_EPSILON, self.compute_dtype))
        return mean + x * deviation if self.invert else (x - mean) / deviation


class Normalization(Layer):
    """Shifts and scales features to mean 0, variance 1 with statistics from `mean`/`variance` or `adapt(data)`.

    `axis` (Keras's): the axes that keep their own statistics (default -1, the features); None for one mean and
    variance over everything. `invert=True` undoes the normalization. Adapted statistics are the non-trainable
    weights mean, variance (over the kept axes) and count (0, kept for Keras's layout).
    """

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        self.axis = () if axis is None else (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in self.axis):
            raise ValueError(f"Normalization: `axis` must be an int, a tuple of ints or None; got axis={axis!r}. "
                             "Pass axis=-1 to normalize each feature of the last axis.")
        if (mean is None) != (variance is None):
            raise ValueError(f"Normalization: give both `mean` and `variance` or neither (then call adapt); got "
                             f"mean={describe(mean)}, variance={describe(variance)}.")
        if mean is not None and (np.shape(mean) != np.shape(variance) or np.ndim(mean) > len(self.axis)):
            raise ValueError(f"Normalization: `mean` and `variance` must have one shape, of rank at most "
                             f"len(axis)={len(self.axis)}; got mean {describe(mean)}, variance {describe(variance)}.")
        self.input_mean, self.input_variance, self.invert = mean, variance, bool(invert)
        self._adapted = None

    def _kept_axes(self, rank: int) -> tuple:
        if any(not -rank <= a < rank for a in self.axis) or any(a % rank == 0 for a in self.axis):
            raise ValueError(f"Normalization '{self.name}': axis={self.axis} must name non-batch axes of inputs of "
                             f"rank {rank}, e.g. axis=-1.")
        return tuple(sorted({a % rank for a in self.axis}))

    @staticmethod
    def _given(value, kept: tuple, broadcast: tuple, dtype):
        """A given mean or variance as [1, ...] `broadcast`: its axes line up with the kept axes from the right."""
        value = np.asarray(value, np.float64)
        aligned = [1] * len(broadcast)
        for i in range(1, value.ndim + 1):
            aligned[kept[-i]] = value.shape[-i]
        return np.broadcast_to(value.reshape(aligned), broadcast).astype(dtype)

    def make_module(self, input_shape, rngs) -> NormalizationModule:
        return NormalizationModule(self, tuple(input_shape))

    def adapt(self, data) -> None:
        """Sets mean and variance to the statistics of `data` (a NumPy array, a bf.data.Dataset or an iterable of
        batches [B, ...]) over every axis but the kept ones, combining batches as Keras does."""
        if self.input_mean is not None:
            raise ValueError(f"Normalization '{self.name}' was given `mean` and `variance`; adapt() would replace "
                             "them. Build the layer without them to adapt it.")
        batches = _batches(data, "Normalization")
        first = next(batches, None)
        if first is None:
            raise ValueError("Normalization.adapt() got no batches. Pass at least one array of samples.")
        kept = self._kept_axes(first.ndim)
        reduce = tuple(a for a in range(first.ndim) if a not in kept)
        mean, variance, count = 0.0, 0.0, 0
        for batch in itertools.chain([first], batches):
            if batch.ndim != first.ndim or any(batch.shape[a] != first.shape[a] for a in kept):
                raise ValueError(f"Normalization.adapt() got batches of different shapes: {first.shape} and "
                                 f"{batch.shape}; the kept axes {kept} must agree.")
            batch = batch.astype(np.float64)
            batch_mean, batch_variance = batch.mean(axis=reduce), batch.var(axis=reduce)
            batch_count = math.prod(batch.shape[a] for a in reduce)
            count += batch_count
            weight = batch_count / count                        # Keras's running (lack-of-fit) combination
            new_mean = mean * (1 - weight) + batch_mean * weight
            variance = ((variance + (mean - new_mean) ** 2) * (1 - weight)
                        + (batch_variance + (batch_mean - new_mean) ** 2) * weight)
            mean = new_mean
        self._adapt_to(np.asarray(mean), np.asarray(variance), first.shape[1:])

    def _adapt_to(self, mean, variance, per_sample_shape) -> None:
        self._adapted = (mean, variance)
        if self._module is None:
            self._adopt(self.make_module(tuple(per_sample_shape), _scope.build_rngs()))
        elif self._module.mean.shape != mean.shape:
            raise ValueError(f"Normalization '{self.name}' was built for statistics of shape "
                             f"{self._module.mean.shape}; adapt() got data giving {mean.shape}.")
        self.set_weights([mean, variance, np.zeros((), np.int32)])


# ----- Rescaling ----------------------------------------------------------------------------------

class RescalingModule(nnx.Module):
    """Built `Rescaling`: x * scale + offset in the compute dtype."""

    keras_weights = ()

    def __init__(self, scale, offset, compute_dtype):
        self.scale, self.offset, self.compute_dtype = scale, offset, _jax_dtype(compute_dtype)

    def __call__(self, x):
        dtype = self.compute_dtype
        return jnp.asarray(x).astype(dtype) * jnp.asarray(self.scale, dtype) + jnp.asarray(self.offset, dtype)


def _number_or_numbers(value, name: str):
    """A float, or a tuple of floats (per-channel, broadcast against the last axes)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(float(_real(v, name, "Rescaling", "a finite number", lambda _: True, 1.0))
                     for v in np.ravel(value))
    return _real(value, name, "Rescaling", "a finite number (or a list of them, per channel)", lambda _: True,
                 1.0 / 255)


class Rescaling(Layer):
    """Multiplies by `scale` and adds `offset` (Keras's Rescaling), e.g. scale=1/255 for pixels in [0, 1]."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = _number_or_numbers(scale, "scale"), _number_or_numbers(offset, "offset")

    def make_module(self, input_shape, rngs) -> RescalingModule:
        return RescalingModule(self.scale, self.offset, self.compute_dtype)


# ----- CategoryEncoding, Discretization, Hashing ----------------------------------------------------

def encode(ids, output_mode: str, depth: int, dtype):
    """Keras's encode_categorical_inputs: int ids -> "int" (as they are), "one_hot" [..., depth] (a last axis of 1
    replaced), "multi_hot"/"count" [B, depth] (axis 1 reduced; a rank-1 input reduces axis 0). Ids outside
    [0, depth) count nowhere."""
    if output_mode == "int":
        return ids.astype(dtype)
    ids = jnp.atleast_1d(ids).astype(jnp.int32)
    if output_mode == "one_hot":
        ids = ids.reshape(ids.shape[:-1]) if ids.ndim > 1 and ids.shape[-1] == 1 else ids
        return jax.nn.one_hot(ids, depth, dtype=dtype)
    hot = jax.nn.one_hot(ids, depth, dtype=dtype)
    axis = 1 if ids.ndim > 1 else 0
    return jnp.max(hot, axis=axis) if output_mode == "multi_hot" else jnp.sum(hot, axis=axis)


def _encoded_shape(input_shape, output_mode: str, depth: int) -> tuple:
    """`encode`'s per-sample output shape for per-sample `input_shape` (without the batch axis)."""
    shape = tuple(input_shape)
    if output_mode == "int":
        return shape
    if output_mode == "one_hot":
        return (*shape[:-1], depth) if shape and shape[-1] == 1 else (*shape, depth)
    return (*shape[1:], depth)


def _output_mode(value, owner: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{owner}: `output_mode` must be one of {', '.join(map(repr, allowed))}; got "
                         f"output_mode={value!r}.")
    return value


def _dense_only(sparse, owner: str) -> None:
    if sparse:
        raise ValueError(f"{owner}: sparse=True is not supported by batchfit (outputs are dense); pass sparse=False.")


class EncodeModule(nnx.Module):
    """Built `CategoryEncoding`: `ids(x)` (x itself), then `encode` them; Discretization and Hashing override `ids`."""

    keras_weights = ()

    def __init__(self, output_mode: str, depth: int, dtype):
        self.output_mode, self.depth, self.dtype = output_mode, depth, _jax_dtype(dtype)

    def ids(self, x):
        return x

    def __call__(self, x):
        return encode(self.ids(jnp.asarray(x)), self.output_mode, self.depth, self.dtype)


class _Encoding(Layer):
    """Shared by the layers that encode integer ids."""

    def _depth(self) -> int:
        raise NotImplementedError

    def compute_output_shape(self, input_shape) -> tuple:
        return _encoded_shape(input_shape, self.output_mode, self._depth())


class CategoryEncoding(_Encoding):
    """Integer ids in [0, num_tokens) -> "multi_hot" (default), "one_hot" or "count" vectors [B, num_tokens]."""

    def __init__(self, num_tokens=None, output_mode="multi_hot", sparse=False, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = _positive_int(num_tokens, "num_tokens", "CategoryEncoding")
        output_mode = "multi_hot" if output_mode == "binary" else output_mode
        self.output_mode = _output_mode(output_mode, "CategoryEncoding", ("multi_hot", "one_hot", "count"))
        _dense_only(sparse, "CategoryEncoding")

    def _depth(self) -> int:
        return self.num_tokens

    def make_module(self, input_shape, rngs) -> EncodeModule:
        return EncodeModule(self.output_mode, self.num_tokens, self.compute_dtype)


def _summarize(values, epsilon: float):
    """Keras's quantile summary of `values`: [2, n] (sorted values at even steps, their weights)."""
    values = np.sort(np.reshape(values, [-1]))
    step = max(np.size(values) / (1.0 / epsilon), 1)
    boundaries = values[int(step - 1)::int(step)]
    return np.stack([boundaries, np.ones_like(boundaries) * step])


def _compress(summary, epsilon: float):
    """Keras's compress_summary: the summary re-binned at `epsilon` steps of cumulative weight."""
    if summary.shape[1] * epsilon < 1:
        return summary
    percents = epsilon + np.arange(0.0, 1.0, epsilon)
    cumulative = summary[1].cumsum()
    fractions = cumulative / cumulative[-1]
    new_bins = np.interp(percents, fractions, summary[0])
    cumulative = np.interp(percents, fractions, cumulative)
    weights = cumulative - np.concatenate((np.array([0]), cumulative[:-1]))
    return np.stack((new_bins, weights)).astype("float32")


class DiscretizationModule(EncodeModule):
    """Built `Discretization`: the bin of each value, i for boundaries[i - 1] <= x < boundaries[i]."""

    def __init__(self, boundaries: tuple, output_mode: str, dtype):
        super().__init__(output_mode, len(boundaries) + 1, dtype)
        self.boundaries = boundaries

    def ids(self, x):
        return jnp.digitize(x.astype(jnp.float32), jnp.asarray(self.boundaries, jnp.float32)).astype(jnp.int32)


class Discretization(_Encoding):
    """Buckets continuous values by `bin_boundaries`, or by `num_bins` quantiles that `adapt(data)` estimates
    (Keras's summaries with error `epsilon`). output_mode "int" (bin ids, int32), "one_hot", "multi_hot", "count".
    Adapt before building a model on the layer: the boundaries are constants of the compiled step."""

    def __init__(self, bin_boundaries=None, num_bins=None, epsilon=0.01, output_mode="int", sparse=False, **kwargs):
        super().__init__(**kwargs)
        owner = "Discretization"
        self.num_bins = None if num_bins is None else _positive_int(num_bins, "num_bins", owner)
        self.bin_boundaries = None if bin_boundaries is None else [float(b) for b in bin_boundaries]
        if (self.num_bins is None) == (self.bin_boundaries is None) and not (
                self.num_bins is not None and len(self.bin_boundaries) < self.num_bins):   # an adapted layer's config
            raise ValueError(f"{owner}: give exactly one of `bin_boundaries` (e.g. [0.0, 1.0]) and `num_bins` (then "
                             f"call adapt); got bin_boundaries={bin_boundaries!r}, num_bins={num_bins!r}.")
        if self.bin_boundaries is not None and list(np.sort(self.bin_boundaries)) != self.bin_boundaries:
            raise ValueError(f"{owner}: `bin_boundaries` must be sorted; got {bin_boundaries!r}.")
        self.epsilon = _real(epsilon, "epsilon", owner, "in (0, 1), the quantile error", lambda e: 0 < e < 1, 0.01)
        self.output_mode = _output_mode(output_mode, owner, ("int", "one_hot", "multi_hot", "count"))
        _dense_only(sparse, owner)

    def _depth(self) -> int:
        return len(self.bin_boundaries) + 1 if self.bin_boundaries is not None else self.num_bins

    def adapt(self, data) -> None:
        """Sets the bin boundaries to `num_bins` quantiles of `data` (an array or an iterable of batches)."""
        if self.num_bins is None:
            raise ValueError(f"Discretization '{self.name}' was given bin_boundaries; build it with num_bins=... "
                             "to adapt it.")
        summary = np.array([[], []], dtype="float32")
        for batch in _batches(data, "Discretization"):
            merged = np.concatenate((_summarize(batch.astype("float32"), self.epsilon), summary), axis=1)
            summary = _compress(np.take(merged, np.argsort(merged[0]), axis=1), self.epsilon)
        self.bin_boundaries = _compress(summary, 1.0 / self.num_bins)[0, :-1].tolist()
        self._arguments["bin_boundaries"] = self.bin_boundaries          # get_config carries them, as Keras's
        if self._module is not None:
            self._adopt(self.make_module(None, None))

    def make_module(self, input_shape, rngs) -> DiscretizationModule:
        if self.bin_boundaries is None:
            raise ValueError(f"Discretization '{self.name}' has no bin boundaries yet: call adapt(data) before using "
                             "it, or pass bin_boundaries=[...].")
        dtype = "int32" if self.output_mode == "int" else self.compute_dtype
        return DiscretizationModule(tuple(self.bin_boundaries), self.output_mode, dtype)


class HashingModule(EncodeModule):
    """Built `Hashing`: bin = FarmHash Fingerprint64(decimal string of x) % bins, bin 0 kept for `mask_value`."""

    def __init__(self, layer: "Hashing"):
        super().__init__(layer.output_mode, layer.num_bins, layer.compute_dtype if layer.output_mode != "int"
                         else _jax_dtype(layer.variable_dtype))
        self.mask_value = layer.mask_value

    def ids(self, x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            x = x.astype(jnp.int32)                     # Keras casts floats to integers, then hashes their digits
        masked = self.mask_value is not None and self.depth > 1
        bins = fingerprint_bins(x, self.depth - 1 if masked else self.depth)
        return jnp.where(x == self.mask_value, 0, bins + 1) if masked else bins


class Hashing(_Encoding):
    """Hashes integer features into `num_bins` bins as Keras's Hashing: FarmHash Fingerprint64 of the value's
    decimal string, modulo num_bins (modulo num_bins - 1, plus 1, when `mask_value` is set: its bin is 0).

    Integer (or float, truncated) inputs of up to 16 characters (int32 always); strings are not arrays here.
    salt= (SipHash) is not supported. Output dtype for "int": int32 (int64 with jax_enable_x64), as `dtype`.
    """

    _accepted_dtypes = _FLOAT_DTYPES + _INTEGER_DTYPES

    def __init__(self, num_bins, mask_value=None, salt=None, output_mode="int", sparse=False, **kwargs):
        if output_mode == "int" and kwargs.get("dtype") is None:
            kwargs["dtype"] = "int64"
        super().__init__(**kwargs)
        self.num_bins = _positive_int(num_bins, "num_bins", "Hashing")
        self.output_mode = _output_mode(output_mode, "Hashing", ("int", "one_hot", "multi_hot", "count"))
        if output_mode == "int" and self.compute_dtype not in ("int32", "int64"):
            raise ValueError(f"Hashing: output_mode='int' needs dtype 'int32' or 'int64'; got dtype={self.dtype!r}.")
        if salt is not None:
            raise ValueError("Hashing: salt= (Keras's SipHash) is not supported by batchfit; pass salt=None for "
                             "the FarmHash fingerprint.")
        if mask_value is not None and (isinstance(mask_value, bool) or not isinstance(mask_value, (int, np.integer))):
            raise ValueError(f"Hashing: `mask_value` must be an int (inputs are integer arrays); got "
                             f"mask_value={mask_value!r}.")
        self.mask_value, self.salt = mask_value, salt
        _dense_only(sparse, "Hashing")

    def _depth(self) -> int:
        return self.num_bins

    def make_module(self, input_shape, rngs) -> HashingModule:
        return HashingModule(self)
