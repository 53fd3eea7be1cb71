"""ops: the helpers every ops module shares, math and reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPSILON = 1e-7          # Keras's backend.epsilon(): the clip of probabilities in crossentropies
_array = jnp.asarray    # lists, NumPy arrays and weight handles (`__jax_array__`) to JAX arrays


def _floating(x):
    """`x` as an array of a floating dtype: integers and bools become float32, as in Keras."""
    x = _array(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def _unary(name: str, fn, convert=None):
    """ops.<name>(x): `fn` on x as an array (`convert`: _floating where Keras computes in floats)."""
    convert = convert or _array

    def op(x):
        return fn(convert(x))
    op.__name__ = op.__qualname__ = name
    return op


def _binary(name: str, fn):
    """ops.<name>(x1, x2): `fn` on both as arrays."""
    def op(x1, x2):
        return fn(_array(x1), _array(x2))
    op.__name__ = op.__qualname__ = name
    return op


# ----- math ----------------------------------------------------------------------------------

add = _binary("add", jnp.add)
subtract = _binary("subtract", jnp.subtract)
multiply = _binary("multiply", jnp.multiply)
divide = _binary("divide", jnp.divide)
true_divide = _binary("true_divide", jnp.divide)
floor_divide = _binary("floor_divide", jnp.floor_divide)
power = _binary("power", jnp.power)
mod = _binary("mod", jnp.mod)
negative = _unary("negative", jnp.negative)
absolute = _unary("absolute", jnp.absolute)
abs = absolute
sign = _unary("sign", jnp.sign)
square = _unary("square", jnp.square)
sqrt = _unary("sqrt", jnp.sqrt)
rsqrt = _unary("rsqrt", jax.lax.rsqrt, _floating)
reciprocal = _unary("reciprocal", jnp.reciprocal)
exp = _unary("exp", jnp.exp, _floating)
expm1 = _unary("expm1", jnp.expm1, _floating)
log = _unary("log", jnp.log)
log1p = _unary("log1p", jnp.log1p)
log2 = _unary("log2", jnp.log2)
log10 = _unary("log10", jnp.log10)
erf = _unary("erf", jax.lax.erf, _floating)
sin = _unary("sin", jnp.sin, _floating)
cos = _unary("cos", jnp.cos, _floating)
tan = _unary("tan", jnp.tan, _floating)
arctan = _unary("arctan", jnp.arctan, _floating)
arctan2 = _binary("arctan2", jnp.arctan2)
sinh = _unary("sinh", jnp.sinh, _floating)
cosh = _unary("cosh", jnp.cosh, _floating)
maximum = _binary("maximum", jnp.maximum)
minimum = _binary("minimum", jnp.minimum)


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


floor = _unary("floor", jnp.floor, _floating)
ceil = _unary("ceil", jnp.ceil, _floating)


def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    return jnp.nan_to_num(_array(x), nan=nan, posinf=posinf, neginf=neginf)


matmul = _binary("matmul", jnp.matmul)
dot = _binary("dot", jnp.dot)


def tensordot(x1, x2, axes=2):
    return jnp.tensordot(_array(x1), _array(x2), axes=axes)


def einsum(subscripts, *operands, **kwargs):
    return jnp.einsum(subscripts, *(_array(x) for x in operands), **kwargs)


outer = _binary("outer", jnp.outer)


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
