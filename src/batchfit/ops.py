"""`keras.ops` for custom layers and losses: thin names over jax.numpy, jax.nn and jax.lax.

Each function has Keras 3's name, signature and defaults, and gives what `keras.ops` gives
on its JAX backend (`tests/test_ops.py` compares every name). Arguments may be NumPy or JAX
arrays, Python scalars and lists, or weight handles (objects with `__jax_array__`); results
are JAX arrays, so they trace inside a compiled step.

Where Keras differs from jax.numpy, the function says so: float32 by default for `zeros`,
`ones`, `full`, `eye` and `one_hot`; floats for `floor`, `ceil`, `mean` and `var` of integers;
`gelu` approximate by default; `top_k` returns (values, indices).

>>> from batchfit import ops
>>> float(ops.sum(ops.square([1.0, 2.0])))
5.0
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    # math
    "add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power", "mod",
    "negative", "abs", "absolute", "sign", "square", "sqrt", "rsqrt", "reciprocal",
    "exp", "expm1", "log", "log1p", "log2", "log10", "erf",
    "sin", "cos", "tan", "arctan", "arctan2", "sinh", "cosh",
    "maximum", "minimum", "clip", "round", "floor", "ceil", "nan_to_num",
    "matmul", "dot", "tensordot", "einsum", "outer",
    # reductions
    "sum", "mean", "max", "min", "prod", "std", "var", "argmax", "argmin", "any", "all",
    "logsumexp", "cumsum", "cumprod", "norm",
    # shapes and creation
    "shape", "size", "ndim", "reshape", "expand_dims", "squeeze", "transpose", "moveaxis",
    "swapaxes", "concatenate", "stack", "unstack", "vstack", "hstack", "split", "tile",
    "repeat", "flip", "broadcast_to", "pad", "diag", "diagonal", "triu", "tril",
    "cast", "convert_to_tensor", "convert_to_numpy", "is_tensor", "stop_gradient",
    "zeros", "ones", "zeros_like", "ones_like", "full", "full_like", "arange", "linspace",
    "eye", "identity", "meshgrid",
    # comparisons and logic
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
    "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isfinite", "isinf",
    "where",
    # indexing and sorting
    "take", "take_along_axis", "slice", "one_hot", "top_k", "argsort", "sort",
    # activations
    "relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "softplus", "softsign",
    "silu", "swish", "gelu", "elu", "selu", "leaky_relu", "hard_sigmoid", "hard_silu",
    "hard_swish", "log_sigmoid",
    # nn helpers
    "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
    "normalize",
]

EPSILON = 1e-7          # Keras's backend.epsilon(): the clip of probabilities in crossentropies
_array = jnp.asarray    # lists, NumPy arrays and weight handles (`__jax_array__`) to JAX arrays


def _floating(x):
    """`x` as an array of a floating dtype: integers and bools become float32, as in Keras."""
    x = _array(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


# ----- math ----------------------------------------------------------------------------------

def add(x1, x2):
    return jnp.add(_array(x1), _array(x2))


def subtract(x1, x2):
    return jnp.subtract(_array(x1), _array(x2))


def multiply(x1, x2):
    return jnp.multiply(_array(x1), _array(x2))


def divide(x1, x2):
    return jnp.divide(_array(x1), _array(x2))


def true_divide(x1, x2):
    return divide(x1, x2)


def floor_divide(x1, x2):
    return jnp.floor_divide(_array(x1), _array(x2))


def power(x1, x2):
    return jnp.power(_array(x1), _array(x2))


def mod(x1, x2):
    return jnp.mod(_array(x1), _array(x2))


def negative(x):
    return jnp.negative(_array(x))


def absolute(x):
    return jnp.absolute(_array(x))


abs = absolute


def sign(x):
    return jnp.sign(_array(x))


def square(x):
    return jnp.square(_array(x))


def sqrt(x):
    return jnp.sqrt(_array(x))


def rsqrt(x):
    return jax.lax.rsqrt(_floating(x))


def reciprocal(x):
    return jnp.reciprocal(_array(x))


def exp(x):
    return jnp.exp(_floating(x))


def expm1(x):
    return jnp.expm1(_floating(x))


def log(x):
    return jnp.log(_array(x))


def log1p(x):
    return jnp.log1p(_array(x))


def log2(x):
    return jnp.log2(_array(x))


def log10(x):
    return jnp.log10(_array(x))


def erf(x):
    return jax.lax.erf(_floating(x))


def sin(x):
    return jnp.sin(_floating(x))


def cos(x):
    return jnp.cos(_floating(x))


def tan(x):
    return jnp.tan(_floating(x))


def arctan(x):
    return jnp.arctan(_floating(x))


def arctan2(x1, x2):
    return jnp.arctan2(_array(x1), _array(x2))


def sinh(x):
    return jnp.sinh(_floating(x))


def cosh(x):
    return jnp.cosh(_floating(x))


def maximum(x1, x2):
    return jnp.maximum(_array(x1), _array(x2))


def minimum(x1, x2):
    return jnp.minimum(_array(x1), _array(x2))


def clip(x, x_min, x_max):
    """`x` limited to [x_min, x_max]; booleans are clipped as int32 (Keras)."""
    x = _array(x)
    return jnp.clip(x.astype(jnp.int32) if x.dtype == jnp.bool_ else x, x_min, x_max)


def round(x, decimals=0):
    """Round half to even; integers with `decimals < 0` round to tens, hundreds... (Keras)."""
    x = _array(x)
    if decimals < 0 and jnp.issubdtype(x.dtype, jnp.integer):
        factor = 10.0 ** decimals
        return jnp.divide(jnp.round(x.astype(jnp.float32) * factor), factor).astype(x.dtype)
    return jnp.round(x, decimals)


def floor(x):
    return jnp.floor(_floating(x))


def ceil(x):
    return jnp.ceil(_floating(x))


def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    return jnp.nan_to_num(_array(x), nan=nan, posinf=posinf, neginf=neginf)


def matmul(x1, x2):
    return jnp.matmul(_array(x1), _array(x2))


def dot(x1, x2):
    return jnp.dot(_array(x1), _array(x2))


def tensordot(x1, x2, axes=2):
    return jnp.tensordot(_array(x1), _array(x2), axes=axes)


def einsum(subscripts, *operands, **kwargs):
    return jnp.einsum(subscripts, *(_array(x) for x in operands), **kwargs)


def outer(x1, x2):
    return jnp.outer(_array(x1), _array(x2))


# ----- reductions ----------------------------------------------------------------------------

def sum(x, axis=None, keepdims=False):
    return jnp.sum(_array(x), axis=axis, keepdims=keepdims)


def _wide_reduction(reduce, x, axis, keepdims):
    """Keras's mean and var: computed in float32 (or wider), returned in the floating dtype of
    `x` (float32 for integers and bools), so that float16 sums do not overflow."""
    x = _array(x)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    result = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else compute
    return reduce(x, axis=axis, keepdims=keepdims, dtype=compute).astype(result)


def mean(x, axis=None, keepdims=False):
    return _wide_reduction(jnp.mean, x, axis, keepdims)


def var(x, axis=None, keepdims=False):
    return _wide_reduction(jnp.var, x, axis, keepdims)


def std(x, axis=None, keepdims=False):
    return jnp.std(_array(x), axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False, initial=None):
    return jnp.max(_array(x), axis=axis, keepdims=keepdims, initial=initial)


def min(x, axis=None, keepdims=False, initial=None):
    return jnp.min(_array(x), axis=axis, keepdims=keepdims, initial=initial)


def prod(x, axis=None, keepdims=False, dtype=None):
    return jnp.prod(_array(x), axis=axis, keepdims=keepdims, dtype=dtype)


def argmax(x, axis=None, keepdims=False):
    return jnp.argmax(_array(x), axis=axis, keepdims=keepdims)


def argmin(x, axis=None, keepdims=False):
    return jnp.argmin(_array(x), axis=axis, keepdims=keepdims)


def any(x, axis=None, keepdims=False):
    return jnp.any(_array(x), axis=axis, keepdims=keepdims)


def all(x, axis=None, keepdims=False):
    return jnp.all(_array(x), axis=axis, keepdims=keepdims)


def logsumexp(x, axis=None, keepdims=False):
    return jax.scipy.special.logsumexp(_array(x), axis=axis, keepdims=keepdims)


def cumsum(x, axis=None, dtype=None):
    return jnp.cumsum(_array(x), axis=axis, dtype=dtype)


def cumprod(x, axis=None, dtype=None):
    return jnp.cumprod(_array(x), axis=axis, dtype=dtype)


def norm(x, ord=None, axis=None, keepdims=False):
    """The vector or matrix norm of `x` (jnp.linalg.norm), of integers as float32."""
    return jnp.linalg.norm(_floating(x), ord=ord, axis=axis, keepdims=keepdims)


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

def equal(x1, x2):
    return jnp.equal(_array(x1), _array(x2))


def not_equal(x1, x2):
    return jnp.not_equal(_array(x1), _array(x2))


def greater(x1, x2):
    return jnp.greater(_array(x1), _array(x2))


def greater_equal(x1, x2):
    return jnp.greater_equal(_array(x1), _array(x2))


def less(x1, x2):
    return jnp.less(_array(x1), _array(x2))


def less_equal(x1, x2):
    return jnp.less_equal(_array(x1), _array(x2))


def logical_and(x1, x2):
    return jnp.logical_and(_array(x1), _array(x2))


def logical_or(x1, x2):
    return jnp.logical_or(_array(x1), _array(x2))


def logical_xor(x1, x2):
    return jnp.logical_xor(_array(x1), _array(x2))


def logical_not(x):
    return jnp.logical_not(_array(x))


def isnan(x):
    return jnp.isnan(_array(x))


def isfinite(x):
    return jnp.isfinite(_array(x))


def isinf(x):
    return jnp.isinf(_array(x))


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


# ----- activations ---------------------------------------------------------------------------

def relu(x):
    return jax.nn.relu(_array(x))


def relu6(x):
    return jax.nn.relu6(_array(x))


def sigmoid(x):
    return jax.nn.sigmoid(_array(x))


def tanh(x):
    return jnp.tanh(_array(x))


def softmax(x, axis=-1):
    return jax.nn.softmax(_array(x), axis=axis)


def log_softmax(x, axis=-1):
    return jax.nn.log_softmax(_array(x), axis=axis)


def softplus(x):
    return jax.nn.softplus(_array(x))


def softsign(x):
    return jax.nn.soft_sign(_array(x))


def silu(x):
    return jax.nn.silu(_array(x))


swish = silu


def gelu(x, approximate=True):
    """GELU; Keras's default is the tanh approximation (`approximate=True`), as jax.nn.gelu's."""
    return jax.nn.gelu(_array(x), approximate)


def elu(x, alpha=1.0):
    return jax.nn.elu(_array(x), alpha=alpha)


def selu(x):
    return jax.nn.selu(_array(x))


def leaky_relu(x, negative_slope=0.2):
    """x for x >= 0, else negative_slope * x; Keras's default slope is 0.2 (jax.nn's is 0.01)."""
    return jax.nn.leaky_relu(_array(x), negative_slope=negative_slope)


def hard_sigmoid(x):
    """relu6(x + 3) / 6."""
    return jax.nn.hard_sigmoid(_array(x))


def hard_silu(x):
    return jax.nn.hard_silu(_array(x))


hard_swish = hard_silu


def log_sigmoid(x):
    return jax.nn.log_sigmoid(_array(x))


# ----- nn helpers ----------------------------------------------------------------------------

def _same_shape(name: str, target, output):
    if target.shape != output.shape:
        raise ValueError(f"{name}: `target` and `output` must have the same shape; got target "
                         f"{target.dtype}{list(target.shape)}, output {output.dtype}{list(output.shape)}.")


def _log_probabilities(output, from_logits: bool, axis):
    if from_logits:
        return jax.nn.log_softmax(output, axis=axis)
    output = output / jnp.sum(output, axis, keepdims=True)
    return jnp.log(jnp.clip(output, EPSILON, 1.0 - EPSILON))


def binary_crossentropy(target, output, from_logits=False):
    """Elementwise binary crossentropy [...] (no mean); probabilities are clipped to
    [1e-7, 1 - 1e-7], logits use log-sigmoid (exact at saturation)."""
    target, output = _array(target), _array(output)
    _same_shape("binary_crossentropy", target, output)
    if from_logits:
        return -target * jax.nn.log_sigmoid(output) - (1.0 - target) * jax.nn.log_sigmoid(-output)
    output = jnp.clip(output, EPSILON, 1.0 - EPSILON)
    return -(target * jnp.log(output) + (1.0 - target) * jnp.log(1.0 - output))


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy of one-hot (or soft) `target` [..., C] and `output` [..., C] -> [...].
    Probabilities are renormalized to sum to 1 and clipped to [1e-7, 1 - 1e-7], as in Keras."""
    target, output = _array(target), _array(output)
    _same_shape("categorical_crossentropy", target, output)
    if target.ndim < 1:
        raise ValueError("categorical_crossentropy: `target` and `output` must have rank >= 1; got scalars.")
    return -jnp.sum(target * _log_probabilities(output, from_logits, axis), axis=axis)


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Crossentropy of integer labels `target` [...] (or [..., 1]) and `output` [..., C] -> [...]."""
    target, output = _array(target).astype(jnp.int32), _array(output)
    if target.ndim == output.ndim and target.shape[-1] == 1:
        target = jnp.squeeze(target, axis=-1)
    if output.ndim < 1 or target.shape != output.shape[:-1]:
        raise ValueError(f"sparse_categorical_crossentropy: `target` must have the shape of `output` without "
                         f"its last axis; got target {target.dtype}{list(target.shape)}, output "
                         f"{output.dtype}{list(output.shape)}. Pass integer labels [...] for outputs [..., C].")
    labels = jax.nn.one_hot(target, output.shape[axis], axis=axis)
    return -jnp.sum(labels * _log_probabilities(output, from_logits, axis), axis=axis)


def normalize(x, axis=-1, order=2, epsilon=None):
    """`x` divided by its `order`-norm along `axis` (at least `epsilon`, default 1e-7)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"normalize: `order` must be an int >= 1; got order={order!r}. Pass e.g. order=2.")
    x = _array(x)
    x = x[None] if x.ndim == 0 else x
    epsilon = EPSILON if epsilon is None else epsilon
    if order == 2:      # Keras: x * rsqrt(sum of squares), the rsqrt capped at 1 / epsilon
        inverse = jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
        return x * jnp.minimum(inverse, 1.0 / epsilon)
    return x / jnp.maximum(norm(x, ord=order, axis=axis, keepdims=True), epsilon)


from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
