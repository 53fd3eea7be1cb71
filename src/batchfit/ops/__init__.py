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

from batchfit.ops._arrays import *  # noqa: F401,F403
from batchfit.ops._core import *  # noqa: F401,F403
from batchfit.ops._nn import *  # noqa: F401,F403

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

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
