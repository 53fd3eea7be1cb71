"""ops: shapes and creation, comparisons and logic, indexing and sorting."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from batchfit.ops._core import _array, _binary, _unary


# ----- shapes and creation -------------------------------------------------------------------

def shape(x) -> tuple:
    """The static shape of `x`, a tuple of ints."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def size(x) -> int:
    return math.prod(shape(x))


def ndim(x) -> int:
    return len(shape(x))


def reshape(x, newshape):
    return jnp.reshape(_array(x), newshape)


def expand_dims(x, axis):
    return jnp.expand_dims(_array(x), axis)


def squeeze(x, axis=None):
    return jnp.squeeze(_array(x), axis=axis)


def transpose(x, axes=None):
    return jnp.transpose(_array(x), axes)


def moveaxis(x, source, destination):
    return jnp.moveaxis(_array(x), source, destination)


def swapaxes(x, axis1, axis2):
    return jnp.swapaxes(_array(x), axis1, axis2)


def concatenate(xs, axis=0):
    return jnp.concatenate([_array(x) for x in xs], axis=axis)


def stack(x, axis=0):
    return jnp.stack([_array(t) for t in x], axis=axis)


def unstack(x, num=None, axis=0) -> list:
    """The slices of `x` along `axis`, a list of `x.shape[axis]` arrays (`num` is not needed)."""
    x = _array(x)
    return [jax.lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]


def vstack(xs):
    return jnp.vstack([_array(x) for x in xs])


def hstack(xs):
    return jnp.hstack([_array(x) for x in xs])


def split(x, indices_or_sections, axis=0) -> list:
    return jnp.split(_array(x), indices_or_sections, axis=axis)


def tile(x, repeats):
    return jnp.tile(_array(x), repeats)


def repeat(x, repeats, axis=None):
    return jnp.repeat(_array(x), repeats, axis=axis)


def flip(x, axis=None):
    return jnp.flip(_array(x), axis=axis)


def broadcast_to(x, shape):
    return jnp.broadcast_to(_array(x), shape)


def pad(x, pad_width, mode="constant", constant_values=None):
    if constant_values is None:
        return jnp.pad(_array(x), pad_width, mode=mode)
    if mode != "constant":
        raise ValueError(f"pad: `constant_values` needs mode='constant'; got mode={mode!r}. "
                         f"Drop `constant_values` or use mode='constant'.")
    return jnp.pad(_array(x), pad_width, mode=mode, constant_values=constant_values)


def diag(x, k=0):
    return jnp.diag(_array(x), k=k)


def diagonal(x, offset=0, axis1=0, axis2=1):
    return jnp.diagonal(_array(x), offset=offset, axis1=axis1, axis2=axis2)


def triu(x, k=0):
    return jnp.triu(_array(x), k=k)


def tril(x, k=0):
    return jnp.tril(_array(x), k=k)


def cast(x, dtype):
    return _array(x).astype(dtype)


def convert_to_tensor(x, dtype=None, sparse=None, ragged=None):
    """`x` as a JAX array (of `dtype` when given). Sparse and ragged tensors are not supported."""
    if sparse or ragged:
        raise ValueError(f"convert_to_tensor: batchfit has dense JAX arrays only; got "
                         f"sparse={sparse!r}, ragged={ragged!r}. Leave both unset.")
    x = _array(x)
    return x if dtype is None else x.astype(dtype)


def convert_to_numpy(x) -> np.ndarray:
    """`x` as a NumPy array (a copy); NumPy inputs keep their dtype, float64 included."""
    return np.array(x.__jax_array__() if hasattr(x, "__jax_array__") else x)


def is_tensor(x) -> bool:
    return isinstance(x, jax.Array)


def stop_gradient(variable):
    return jax.lax.stop_gradient(_array(variable))


def zeros(shape, dtype=None):
    return jnp.zeros(shape, dtype=dtype or jnp.float32)


def ones(shape, dtype=None):
    return jnp.ones(shape, dtype=dtype or jnp.float32)


def zeros_like(x, dtype=None):
    return jnp.zeros_like(_array(x), dtype=dtype)


def ones_like(x, dtype=None):
    return jnp.ones_like(_array(x), dtype=dtype)


def full(shape, fill_value, dtype=None):
    """An array [shape] of `fill_value`, float32 unless `dtype` says otherwise (Keras)."""
    return jnp.full(shape, fill_value, dtype=dtype or jnp.float32)


def full_like(x, fill_value, dtype=None):
    return jnp.full_like(_array(x), fill_value, dtype=dtype)


def arange(start, stop=None, step=None, dtype=None):
    return jnp.arange(start, stop, step, dtype=dtype)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    return jnp.linspace(start, stop, num=num, endpoint=endpoint, retstep=retstep, dtype=dtype, axis=axis)


def eye(N, M=None, k=0, dtype=None):
    return jnp.eye(N, M=M, k=k, dtype=dtype or jnp.float32)


def identity(n, dtype=None):
    return jnp.identity(n, dtype=dtype or jnp.float32)


def meshgrid(*x, indexing="xy") -> list:
    return jnp.meshgrid(*(_array(t) for t in x), indexing=indexing)


# ----- comparisons and logic -----------------------------------------------------------------

equal = _binary("equal", jnp.equal)
not_equal = _binary("not_equal", jnp.not_equal)
greater = _binary("greater", jnp.greater)
greater_equal = _binary("greater_equal", jnp.greater_equal)
less = _binary("less", jnp.less)
less_equal = _binary("less_equal", jnp.less_equal)
logical_and = _binary("logical_and", jnp.logical_and)
logical_or = _binary("logical_or", jnp.logical_or)
logical_xor = _binary("logical_xor", jnp.logical_xor)
logical_not = _unary("logical_not", jnp.logical_not)
isnan = _unary("isnan", jnp.isnan)
isfinite = _unary("isfinite", jnp.isfinite)
isinf = _unary("isinf", jnp.isinf)


def where(condition, x1=None, x2=None):
    """`x1` where `condition` holds, else `x2`; with neither, the indices where it holds (a tuple)."""
    if (x1 is None) != (x2 is None):
        raise ValueError(f"where: `x1` and `x2` must both be given or both be None; got "
                         f"x1={'None' if x1 is None else 'an array'}, x2={'None' if x2 is None else 'an array'}.")
    if x1 is None:
        return jnp.where(_array(condition))
    return jnp.where(_array(condition), _array(x1), _array(x2))


# ----- indexing and sorting ------------------------------------------------------------------

def take(x, indices, axis=None):
    return jnp.take(_array(x), _array(indices), axis=axis)


def take_along_axis(x, indices, axis=None):
    return jnp.take_along_axis(_array(x), _array(indices), axis=axis)


def slice(inputs, start_indices, shape):
    """The block of `inputs` of size `shape` from `start_indices`; a -1 size takes the rest of that axis."""
    inputs = _array(inputs)
    sizes = tuple(inputs.shape[i] - start_indices[i] if s == -1 else s for i, s in enumerate(shape))
    return jax.lax.dynamic_slice(inputs, start_indices, sizes)


def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    """Integer labels [...] as one-hot vectors [..., num_classes] (on `axis`), float32 by default."""
    if sparse:
        raise ValueError("one_hot: batchfit has dense arrays only; got sparse=True. Leave `sparse` unset.")
    return jax.nn.one_hot(_array(x), num_classes, axis=axis, dtype=dtype or jnp.float32)


def top_k(x, k, sorted=True) -> tuple:
    """(values, indices) of the `k` largest entries along the last axis, largest first."""
    return jax.lax.top_k(_array(x), k)


def argsort(x, axis=-1):
    x = _array(x)
    return jnp.argsort(x, axis=None if x.ndim == 0 else axis)


def sort(x, axis=-1):
    return jnp.sort(_array(x), axis=axis)
