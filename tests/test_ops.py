"""batchfit.ops against keras.ops (JAX backend): every public name, on the same seeded inputs."""

import inspect
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchfit import ops

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("the comparison needs KERAS_BACKEND=jax", allow_module_level=True)

rng = np.random.default_rng(0)
A = rng.normal(size=(3, 4)).astype(np.float32)
B = rng.normal(size=(3, 4)).astype(np.float32)
C = rng.normal(size=(2, 3, 4)).astype(np.float32)
M = rng.normal(size=(4, 5)).astype(np.float32)
V = rng.normal(size=(4,)).astype(np.float32)
P = rng.uniform(0.1, 3.0, size=(3, 4)).astype(np.float32)              # positive
I = rng.integers(-5, 6, size=(3, 4)).astype(np.int32)
J = rng.integers(1, 6, size=(3, 4)).astype(np.int32)                   # positive ints
T = A > 0
U = B > 0
H = np.array([[np.nan, 1.0, np.inf], [-np.inf, 0.5, -2.0]], np.float32)
LABELS = rng.integers(0, 4, size=(3,)).astype(np.int32)
PROBS = np.asarray(jax.nn.softmax(A, axis=-1))
TARGETS = np.eye(4, dtype=np.float32)[LABELS]


def c(*args, **kwargs):
    return args, kwargs


UNARY = ["negative", "abs", "absolute", "sign", "square", "exp", "expm1", "sin", "cos", "tan",
         "arctan", "sinh", "cosh", "floor", "ceil", "isnan", "isfinite", "isinf"]
UNARY_POSITIVE = ["sqrt", "reciprocal", "log", "log1p", "log2", "log10"]
ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "softplus", "softsign", "silu", "swish", "selu",
               "hard_sigmoid", "hard_silu", "hard_swish", "log_sigmoid", "erf"]
BINARY = ["add", "subtract", "multiply", "divide", "true_divide", "maximum", "minimum", "arctan2",
          "equal", "not_equal", "greater", "greater_equal", "less", "less_equal"]
LOGICAL = ["logical_and", "logical_or", "logical_xor"]
REDUCTIONS = ["sum", "mean", "max", "min", "prod", "std", "var", "argmax", "argmin", "any", "all",
              "logsumexp"]

CASES = {
    **{name: [c(A), c(C), c(I), c(np.float32(1.5))] for name in UNARY},
    **{name: [c(P), c(J)] for name in UNARY_POSITIVE},
    **{name: [c(A * 4), c(C)] for name in ACTIVATIONS},
    **{name: [c(A, B), c(A, 2.0), c(I, 3), c(I, 1.5), c(C, V), c(J, I)] for name in BINARY},
    **{name: [c(T, U), c(T, True)] for name in LOGICAL},
    **{name: [c(C), c(C, axis=1), c(C, axis=-1, keepdims=True), c(C, axis=(0, 2)), c(I, axis=0)]
       for name in REDUCTIONS if name not in ("argmax", "argmin")},
    "argmax": [c(C), c(C, axis=1), c(C, axis=-1, keepdims=True), c(I, axis=0)],
    "argmin": [c(C), c(C, axis=1), c(C, axis=-1, keepdims=True), c(I, axis=0)],
    "rsqrt": [c(P), c(C * C + 0.5)],                  # Keras refuses integers here
    "round": [c(A * 10), c(A * 10, 1), c(I * 7, decimals=-1), c(P, decimals=2)],
    "floor_divide": [c(A, B), c(I, J), c(P, 0.3)],
    "power": [c(P, B), c(J, 2), c(P, 0.5)],
    "mod": [c(A, P), c(I, J), c(P, 0.7)],
    "clip": [c(A, -0.5, 0.5), c(I, -1, 2), c(T, 0, 1)],
    "nan_to_num": [c(H), c(H, nan=1.0, posinf=9.0, neginf=-9.0)],
    "logical_not": [c(T), c(I)],
    "matmul": [c(A, M), c(C, M), c(V, M)],
    "dot": [c(A, M), c(V, V), c(A, 2.0)],
    "tensordot": [c(A, M, axes=1), c(C, C, axes=([1, 2], [1, 2])), c(A, A, 2)],
    "einsum": [c("ij,jk->ik", A, M), c("bij->bji", C), c("i,i", V, V)],
    "outer": [c(V, V), c(A, V)],
    "cumsum": [c(C), c(C, axis=1), c(I, axis=0), c(I, axis=1, dtype="float32")],
    "cumprod": [c(P), c(P, axis=1), c(J, axis=0)],
    "norm": [c(A), c(C, axis=-1), c(A, ord=1, axis=0, keepdims=True), c(A, ord="fro"), c(I)],
    "shape": [c(C), c(V)],
    "size": [c(C), c(V)],
    "ndim": [c(C), c(V)],
    "reshape": [c(C, (4, 6)), c(C, (-1, 2)), c(A, newshape=(12,))],
    "expand_dims": [c(A, 0), c(A, -1), c(A, axis=(0, 2))],
    "squeeze": [c(A[None, :, None]), c(A[None, :, None], axis=0), c(A[None, :, None], axis=(0, 2))],
    "transpose": [c(C), c(C, (1, 0, 2)), c(A, axes=(1, 0))],
    "moveaxis": [c(C, 0, -1), c(C, [0, 1], [2, 0])],
    "swapaxes": [c(C, 0, 2), c(A, 1, 0)],
    "concatenate": [c([A, B]), c([A, B], axis=1), c((C, C), axis=-1)],
    "stack": [c([A, B]), c([A, B], axis=1), c((V, V, V), axis=-1)],
    "unstack": [c(C), c(C, axis=1), c(C, num=4, axis=-1)],
    "vstack": [c([A, B]), c([V, V])],
    "hstack": [c([A, B]), c([V, V])],
    "split": [c(C, 2), c(M, [1, 3], axis=0), c(A, 4, axis=1)],
    "tile": [c(A, 2), c(A, (2, 1)), c(V, (2, 3))],
    "repeat": [c(A, 2), c(A, 3, axis=0), c(V, np.array([1, 2, 0, 1]))],
    "flip": [c(C), c(C, axis=1), c(C, axis=(0, 2))],
    "broadcast_to": [c(V, (3, 4)), c(A[:, :1], (3, 5))],
    "pad": [c(A, 1), c(A, ((1, 0), (2, 1))), c(A, 2, constant_values=3.0), c(A, 1, mode="reflect")],
    "diag": [c(V), c(V, k=1), c(A), c(A, k=-1)],
    "diagonal": [c(A), c(C, offset=1, axis1=1, axis2=2)],
    "triu": [c(A), c(A, k=1)],
    "tril": [c(A), c(A, k=-1)],
    "cast": [c(A, "int32"), c(I, "float32"), c(A, "bfloat16"), c(T, "float32")],
    "convert_to_tensor": [c(A), c(I, dtype="float32"), c([[1.0, 2.0]]), c(3)],
    "convert_to_numpy": [c(A), c(jnp.asarray(I)), c(np.float64(2.5))],
    "is_tensor": [c(A), c(jnp.asarray(A)), c(2.0)],
    "stop_gradient": [c(A), c(I)],
    "zeros": [c((2, 3)), c(4, dtype="int32")],
    "ones": [c((2, 3)), c((2,), "bool")],
    "zeros_like": [c(A), c(I, dtype="float32")],
    "ones_like": [c(A), c(I), c(A, "int32")],
    "full": [c((2, 3), 7), c((2,), 1.5, dtype="float32"), c(3, 2, "int32")],
    "full_like": [c(A, 2), c(I, 1.5), c(A, 3, dtype="int32")],
    "arange": [c(5), c(1, 7, 2), c(0.0, 1.0, 0.25), c(3, dtype="float32")],
    "linspace": [c(0.0, 1.0), c(0, 10, num=7, endpoint=False), c(-1.0, 1.0, 5, dtype="float32")],
    "eye": [c(3), c(3, 4), c(4, k=1, dtype="int32")],
    "identity": [c(3), c(2, dtype="int32")],
    "meshgrid": [c(V, V[:3]), c(V, V[:3], indexing="ij")],
    "where": [c(T, A, B), c(T, A, 0.0), c(T)],
    "take": [c(A, [0, 2]), c(C, np.array([1, 0, 2]), axis=1), c(A, np.array([[0, 3], [1, 2]]), axis=-1)],
    "take_along_axis": [c(A, np.argsort(A, axis=1), axis=1), c(C, np.argsort(C, axis=0)[:1], axis=0)],
    "slice": [c(C, (0, 1, 1), (2, 2, 3)), c(A, [1, 0], [-1, 2])],
    "one_hot": [c(LABELS, 4), c(LABELS, 5, axis=0), c(LABELS.reshape(1, 3), 4, dtype="int32")],
    "top_k": [c(A, 2), c(C, 3), c(V, 1, sorted=True)],
    "argsort": [c(A), c(C, axis=0), c(np.float32(2.0))],
    "sort": [c(A), c(C, axis=1), c(I, axis=0)],
    "softmax": [c(A), c(C, axis=1), c(C, axis=(1, 2))],
    "log_softmax": [c(A), c(C, axis=0)],
    "gelu": [c(A * 3), c(A * 3, approximate=False), c(C, False)],
    "elu": [c(A * 3), c(A * 3, alpha=0.5)],
    "leaky_relu": [c(A), c(A, negative_slope=0.01)],
    "binary_crossentropy": [c(T.astype(np.float32), 1 / (1 + np.exp(-A))),
                            c(T.astype(np.float32), A * 5, from_logits=True),
                            c(np.float32([[0.0, 1.0]]), np.float32([[0.0, 1.0]]))],      # clipped at 1e-7
    "categorical_crossentropy": [c(TARGETS, PROBS), c(TARGETS, A, from_logits=True), c(TARGETS, P),
                                 c(TARGETS.T, A.T, axis=0, from_logits=True)],
    "sparse_categorical_crossentropy": [c(LABELS, PROBS), c(LABELS, A, from_logits=True),
                                        c(LABELS[:, None], A, True)],
    "normalize": [c(A), c(C, axis=1), c(A, order=1), c(np.zeros((2, 3), np.float32)), c(A, epsilon=1e-3)],
}

CASE_LIST = [(name, i, case) for name in sorted(CASES) for i, case in enumerate(CASES[name])]


def assert_same(ours, theirs, where):
    if isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs), where
        for a, b in zip(ours, theirs):
            assert_same(a, b, where)
        return
    if isinstance(theirs, (bool, int)) and not isinstance(theirs, np.generic):
        assert ours == theirs and type(ours) is type(theirs), where
        return
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, \
        f"{where}: ours {ours.dtype}{list(ours.shape)}, keras {theirs.dtype}{list(theirs.shape)}"
    if ours.dtype.kind in "fc" or ours.dtype.name == "bfloat16":
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=1e-6, atol=1e-7,
                                   err_msg=where)
    else:
        np.testing.assert_array_equal(ours, theirs, err_msg=where)


def test_every_public_name_is_a_keras_op_and_has_cases():
    assert len(ops.__all__) == len(set(ops.__all__))
    assert [name for name in ops.__all__ if not hasattr(keras.ops, name)] == []
    assert sorted(CASES) == sorted(ops.__all__)


@pytest.mark.parametrize("name", ops.__all__)
def test_signature_accepts_keras_arguments(name):
    """Keras's parameters in Keras's order; every argument with a default has Keras's name and default."""
    ours = list(inspect.signature(getattr(ops, name)).parameters.values())
    theirs = list(inspect.signature(getattr(keras.ops, name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs]


@pytest.mark.parametrize("name, i, case", CASE_LIST, ids=[f"{n}-{i}" for n, i, _ in CASE_LIST])
def test_same_result_as_keras_ops(name, i, case):
    args, kwargs = case
    theirs = getattr(keras.ops, name)(*args, **kwargs)
    ours = getattr(ops, name)(*args, **kwargs)
    assert_same(ours, theirs, f"{name} case {i}")


class Handle:
    """A weight handle as custom layers see one: an object that becomes an array on demand."""

    def __init__(self, value):
        self.value = jnp.asarray(value)
        self.shape, self.dtype = self.value.shape, self.value.dtype

    def __jax_array__(self):
        return self.value


def test_weight_handles_lists_and_scalars_are_accepted():
    w = Handle(M)
    np.testing.assert_allclose(ops.matmul(A, w), A @ M, rtol=1e-5)
    assert float(ops.sum(w)) == pytest.approx(float(M.sum()), rel=1e-5)
    assert ops.shape(w) == (4, 5) and ops.ndim(w) == 2 and ops.size(w) == 20
    np.testing.assert_array_equal(ops.convert_to_numpy(w), M)
    np.testing.assert_array_equal(ops.concatenate([w, w], axis=0), np.concatenate([M, M]))
    assert float(ops.mean([1, 2, 3, 4])) == 2.5                       # (1+2+3+4)/4, a float32 of ints
    assert ops.mean([1, 2]).dtype == jnp.float32
    assert float(ops.add(2, 3.5)) == 5.5
    grad = jax.grad(lambda v: ops.sum(ops.stop_gradient(v) * v))(jnp.float32(3.0))
    assert float(grad) == 3.0                                         # d/dv (sg(v) * v) = sg(v)


def test_ops_trace_inside_jit():
    @jax.jit
    def f(x):
        values, indices = ops.top_k(ops.softmax(x), 2)
        return ops.sum(values) + ops.cast(ops.sum(indices), "float32") + ops.sum(ops.slice(x, (0, 1), (2, 2)))
    expected = keras.ops.sum(keras.ops.top_k(keras.ops.softmax(A), 2)[0]) + float(
        np.sum(np.asarray(keras.ops.top_k(keras.ops.softmax(A), 2)[1]))) + float(A[:2, 1:3].sum())
    assert float(f(A)) == pytest.approx(float(expected), rel=1e-6)


def test_errors_say_what_was_given():
    with pytest.raises(ValueError, match="both be given"):
        ops.where(T, A)
    with pytest.raises(ValueError, match="same shape"):
        ops.binary_crossentropy(A, B[:2])
    with pytest.raises(ValueError, match=r"int32\[3, 4\]"):
        ops.sparse_categorical_crossentropy(I, A)
    with pytest.raises(ValueError, match="sparse=True"):
        ops.one_hot(LABELS, 4, sparse=True)
    with pytest.raises(ValueError, match="order=0"):
        ops.normalize(A, order=0)
