"""batchfit.initializers: Keras's distributions, configs and call semantics, and their use in layers."""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

import batchfit as bf
from batchfit import initializers as I
from batchfit import utils
from batchfit.layers.initializers import get_initializer

keras = pytest.importorskip("keras")

SHAPE = (200, 400)                 # fan_in 200, fan_out 400, fan_avg 300; 80,000 values
N = math.prod(SHAPE)
CUT = 0.87962566103423978          # std of N(0, 1) cut at +-2


def draw(init, shape=SHAPE):
    return np.asarray(init(shape), np.float64)


# name, arguments, the hand-worked standard deviation, the bound on |value - mean|
RANDOM = [
    ("RandomNormal", dict(mean=0.5, stddev=0.2), 0.2, None),
    ("RandomUniform", dict(minval=-0.3, maxval=0.1), 0.4 / math.sqrt(12), 0.2),     # U(a, b): (b-a)/sqrt(12)
    ("TruncatedNormal", dict(mean=-1.0, stddev=0.5), 0.5 * CUT, 2 * 0.5),          # cut at 2 stddev
    ("GlorotUniform", {}, math.sqrt(2 / 600), math.sqrt(6 / 600)),                 # limit sqrt(6/(in+out))
    ("GlorotNormal", {}, math.sqrt(2 / 600), 2 * math.sqrt(2 / 600) / CUT),
    ("HeUniform", {}, math.sqrt(2 / 200), math.sqrt(6 / 200)),
    ("HeNormal", {}, math.sqrt(2 / 200), 2 * math.sqrt(2 / 200) / CUT),
    ("LecunUniform", {}, math.sqrt(1 / 200), math.sqrt(3 / 200)),
    ("LecunNormal", {}, math.sqrt(1 / 200), 2 * math.sqrt(1 / 200) / CUT),
    ("VarianceScaling", dict(scale=3.0, mode="fan_out", distribution="untruncated_normal"), math.sqrt(3 / 400), None),
    ("VarianceScaling", dict(scale=0.5, mode="fan_avg", distribution="uniform"), math.sqrt(0.5 / 300),
     math.sqrt(1.5 / 300)),
    ("VarianceScaling", dict(scale=2.0, distribution="normal"), math.sqrt(2 / 200), 2 * math.sqrt(2 / 200) / CUT),
]


@pytest.mark.parametrize("name, kwargs, std, bound", RANDOM, ids=[f"{r[0]}-{i}" for i, r in enumerate(RANDOM)])
def test_random_initializers_draw_kerass_distribution(name, kwargs, std, bound):
    """80,000 draws: the sample std is within 1.5% of the hand-worked one and of Keras's (its
    sampling error is about 0.5%), the mean within 4 standard errors, the values within the bound."""
    ours = draw(getattr(I, name)(seed=1, **kwargs))
    theirs = draw(getattr(keras.initializers, name)(seed=1, **kwargs))
    mean = kwargs.get("mean", (kwargs.get("minval", 0) + kwargs.get("maxval", 0)) / 2)
    for values in (ours, theirs):
        assert values.std() == pytest.approx(std, rel=0.015)
        assert abs(values.mean() - mean) < 4 * std / math.sqrt(N)
        if bound is not None:
            assert np.abs(values - mean).max() <= bound * (1 + 1e-6)
            assert np.abs(values - mean).max() > 0.99 * bound                  # the bound is reached
    assert ours.std() == pytest.approx(theirs.std(), rel=0.015)


def test_variance_scaling_counts_fans_as_keras():
    """A conv kernel [3, 3, 16, 32]: fan_in = 9 * 16 = 144, fan_out = 9 * 32 = 288; a bias [64]: 64 both."""
    for shape, fan_in in (((3, 3, 16, 32), 144), ((64 * 64,), 64 * 64)):
        limit = math.sqrt(6 / fan_in)
        assert np.abs(draw(I.HeUniform(seed=0), shape)).max() <= limit
        assert np.abs(draw(I.HeUniform(seed=0), shape)).max() > 0.98 * limit
    assert I.compute_fans((3, 3, 16, 32)) == (144, 288)
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((5, 6, 7), input_axes=[0, 1], output_axes=[2]) == (30, 7)
    ours = draw(I.VarianceScaling(seed=0, input_axes=[0, 1], output_axes=[2]), (8, 25, 50))
    theirs = draw(keras.initializers.VarianceScaling(seed=0, input_axes=[0, 1], output_axes=[2]), (8, 25, 50))
    assert ours.std() == pytest.approx(math.sqrt(1 / 200), rel=0.03)         # fan_in = 8 * 25
    assert theirs.std() == pytest.approx(math.sqrt(1 / 200), rel=0.03)


@pytest.mark.parametrize("name, args, shape", [
    ("Zeros", {}, (3, 5)), ("Ones", {}, (2, 3, 4)), ("Constant", dict(value=3.5), (4,)),
    ("Identity", {}, (3, 3)), ("Identity", dict(gain=2.0), (3, 5)), ("Identity", dict(gain=-1.0), (4, 2)),
])
def test_constant_initializers_equal_keras_exactly(name, args, shape):
    ours, theirs = getattr(I, name)(**args)(shape), getattr(keras.initializers, name)(**args)(shape)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    np.testing.assert_array_equal(np.asarray(I.Identity(gain=2.0)((2, 3))), [[2, 0, 0], [0, 2, 0]])


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 3, 4, 8), (5, 5)])
def test_orthogonal_is_orthogonal(shape):
    """Columns orthonormal when there are at least as many rows (rows = prod(shape[:-1])), rows otherwise."""
    q = draw(I.Orthogonal(gain=1.5, seed=3), shape).reshape(-1, shape[-1])
    gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    np.testing.assert_allclose(gram, 1.5**2 * np.eye(len(gram)), atol=1e-5)


def test_orthogonal_fixes_the_qr_signs_as_keras():
    """Without the sign fix NumPy's QR of 2x2 matrices always gives det(Q) = -1 and E[Q00] = -0.64;
    with it Q is uniform on O(2): det +1 half of the time and E[Q00] = 0 (as Keras's)."""
    qs = np.array([draw(I.Orthogonal(seed=s), (2, 2)) for s in range(2000)])
    assert abs(qs[:, 0, 0].mean()) < 0.05                      # the std of the mean is 0.71 / sqrt(2000) = 0.016
    assert 0.45 < (np.linalg.det(qs) > 0).mean() < 0.55
    theirs = np.array([draw(keras.initializers.Orthogonal(seed=s), (2, 2)) for s in range(300)])
    assert abs(theirs[:, 0, 0].mean()) < 0.15 and 0.4 < (np.linalg.det(theirs) > 0).mean() < 0.6


def test_repeated_calls_give_the_same_values_as_in_keras():
    """Keras: an initializer seeded with an int, or unseeded, returns the same values on every call."""
    for make in (lambda m: m.RandomNormal(), lambda m: m.RandomNormal(seed=7), lambda m: m.GlorotUniform(),
                 lambda m: m.Orthogonal()):
        for module in (I, keras.initializers):
            init = make(module)
            np.testing.assert_array_equal(np.asarray(init((4, 3))), np.asarray(init((4, 3))))
    assert not np.array_equal(I.RandomNormal()((8,)), I.RandomNormal()((8,)))       # two unseeded ones differ
    np.testing.assert_array_equal(I.RandomNormal(seed=7)((8,)), I.RandomNormal(seed=7)((8,)))


def test_set_random_seed_makes_unseeded_initializers_repeatable():
    utils.set_random_seed(5)
    first = [I.HeNormal()((3, 4)), I.RandomUniform()((2,))]
    utils.set_random_seed(5)
    second = [I.HeNormal()((3, 4)), I.RandomUniform()((2,))]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_dtype_argument():
    assert I.GlorotUniform(seed=0)((3, 4), dtype="bfloat16").dtype == jax.numpy.bfloat16
    assert I.Zeros()((2,), dtype="int32").dtype == np.int32
    rounded = np.asarray(I.GlorotUniform(seed=0)((3, 4), "float16"))
    np.testing.assert_array_equal(rounded, np.asarray(I.GlorotUniform(seed=0)((3, 4))).astype(np.float16))


KERAS_CONFIGS = [
    ("Zeros", {}), ("Ones", {}), ("Constant", dict(value=2.5)), ("Identity", dict(gain=3.0)),
    ("RandomNormal", dict(mean=1.0, stddev=2.0, seed=4)), ("RandomUniform", dict(minval=0.0, maxval=1.0)),
    ("TruncatedNormal", dict(seed=1)), ("GlorotUniform", dict(seed=1)), ("GlorotNormal", {}),
    ("HeUniform", {}), ("HeNormal", dict(seed=2)), ("LecunUniform", {}), ("LecunNormal", {}),
    ("VarianceScaling", dict(scale=2.0, mode="fan_avg", distribution="normal", seed=3)),
    ("VarianceScaling", dict(distribution="uniform", input_axes=[0], output_axes=[1])),
    ("Orthogonal", dict(gain=2.0, seed=9)),
]


@pytest.mark.parametrize("name, kwargs", KERAS_CONFIGS, ids=[c[0] for c in KERAS_CONFIGS])
def test_get_config_matches_keras_and_round_trips(name, kwargs):
    ours = getattr(I, name)(**kwargs)
    theirs = getattr(keras.initializers, name)(**kwargs).get_config()
    if name == "Identity":
        assert theirs == {}                      # Keras 3 drops `gain` from the config; batchfit keeps it
        theirs = {"gain": 3.0}
    assert ours.get_config() == theirs
    again = I.get(I.serialize(ours))
    from_keras = I.get(keras.initializers.serialize(getattr(keras.initializers, name)(**kwargs)))
    assert type(from_keras) is type(ours)
    assert from_keras.get_config() == (theirs if name != "Identity" else {"gain": 1.0})   # Keras lost the gain
    assert type(again) is type(ours) and again.get_config() == ours.get_config()
    assert type(ours).from_config(ours.get_config()).get_config() == ours.get_config()
    if kwargs.get("seed") is not None:
        np.testing.assert_array_equal(again((3, 4)), ours((3, 4)))


def test_get_by_every_keras_spelling():
    for name, cls in [("glorot_uniform", I.GlorotUniform), ("GlorotUniform", I.GlorotUniform),
                      ("HE_NORMAL", I.HeNormal), ("orthogonal", I.Orthogonal), ("OrthogonalInitializer", I.Orthogonal),
                      ("truncated_normal", I.TruncatedNormal), ("variance_scaling", I.VarianceScaling),
                      ("constant", I.Constant), ("identity", I.Identity), ("IdentityInitializer", I.Identity),
                      ("normal", I.RandomNormal), ("random_normal", I.RandomNormal), ("uniform", I.RandomUniform),
                      ("zero", I.Zeros), ("zeros", I.Zeros), ("one", I.Ones), ("Ones", I.Ones)]:
        assert type(I.get(name)) is cls, name
        # Keras's lookup is case-sensitive, and its get("constant") fails (from_config needs `value`)
        if name not in ("HE_NORMAL", "constant"):
            assert type(keras.initializers.get(name)).__name__ == cls.__name__
    assert type(I.get(I.LecunNormal)) is I.LecunNormal
    function = lambda shape, dtype=None: np.ones(shape)                  # noqa: E731
    assert I.get(function) is function and I.get(None) is None
    init = I.HeNormal()
    assert I.get(init) is init
    with pytest.raises(ValueError, match="Did you mean 'glorot_uniform'"):
        I.get("glorot_unifrom")
    with pytest.raises(ValueError, match="class_name"):
        I.get({"config": {}})
    with pytest.raises(TypeError, match="got int"):
        I.get(3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="scale=-1"):
        I.VarianceScaling(scale=-1)
    with pytest.raises(ValueError, match="mode='fan_sum'"):
        I.VarianceScaling(mode="fan_sum")
    with pytest.raises(ValueError, match="distribution='poisson'"):
        I.VarianceScaling(distribution="poisson")
    with pytest.raises(ValueError, match="seed=1.5"):
        I.HeNormal(seed=1.5)
    with pytest.raises(ValueError, match="rank 1"):
        I.Orthogonal()((4,))
    with pytest.raises(ValueError, match="rank 3"):
        I.Identity()((2, 2, 2))


class Halves(I.Initializer):
    """A user's Keras-style initializer: only __call__(shape, dtype)."""

    def __call__(self, shape, dtype=None):
        return np.full(shape, 0.5, dtype or "float32")


def kernels(kernel_initializer, seed=0):
    model = bf.Sequential([bf.layers.Dense(6, input_shape=(4,), kernel_initializer=kernel_initializer),
                           bf.layers.Dense(3, kernel_initializer=kernel_initializer)], seed=seed)
    return model.get_weights()[0], model.get_weights()[2]


@pytest.mark.parametrize("init", [
    "he_normal", "HeNormal", "orthogonal", "truncated_normal", "variance_scaling", "lecun_uniform", "random_uniform",
    I.HeNormal(), I.Orthogonal(gain=2.0), I.VarianceScaling(scale=0.1, distribution="uniform"), I.GlorotNormal,
    {"class_name": "RandomNormal", "config": {"stddev": 0.3}},
])
def test_layers_take_initializers_and_the_model_seed_decides(init):
    first, again, other = kernels(init, 0), kernels(init, 0), kernels(init, 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0][:, :3], first[1][:3])            # each weight its own draw


def test_layers_take_constant_and_keras_style_initializers():
    np.testing.assert_array_equal(kernels("constant")[0], np.zeros((4, 6)))
    np.testing.assert_array_equal(kernels(I.Constant(0.25))[0], np.full((4, 6), 0.25))
    np.testing.assert_array_equal(kernels(I.Identity(gain=3.0))[1], 3 * np.eye(6, 3))
    np.testing.assert_array_equal(kernels(Halves())[0], np.full((4, 6), 0.5))
    np.testing.assert_array_equal(kernels(lambda shape, dtype=None: np.ones(shape))[1], np.ones((6, 3)))
    gram = kernels("orthogonal")[0] @ kernels("orthogonal")[0].T         # [4, 6]: orthonormal rows
    np.testing.assert_allclose(gram, np.eye(4), atol=1e-6)


def test_a_seeded_initializer_in_a_layer_gives_its_own_values():
    """As in Keras: a layer with GlorotUniform(seed=3) gets GlorotUniform(seed=3)(shape), whatever the model seed."""
    first, other = kernels(I.GlorotUniform(seed=3), 0), kernels(I.GlorotUniform(seed=3), 1)
    np.testing.assert_array_equal(first[0], np.asarray(I.GlorotUniform(seed=3)((4, 6))))
    np.testing.assert_array_equal(first[0], other[0])


def test_the_host_form_keeps_its_contract():
    """Layers draw with init(rng, shape, dtype): the same generator seed gives the same values."""
    for name in ("glorot_uniform", "orthogonal", "truncated_normal"):
        init = get_initializer(name)
        assert init.on_host and get_initializer(init) is init
        a = init(np.random.default_rng(0), (5, 3), np.float32)
        np.testing.assert_array_equal(a, init(np.random.default_rng(0), (5, 3), np.float32))
        assert a.dtype == np.float32 and a.shape == (5, 3)
    jax_style = jax.nn.initializers.normal(1.0)
    assert get_initializer(jax_style) is jax_style
    with pytest.raises(TypeError, match="got NoneType"):
        get_initializer(None)
    with pytest.raises(ValueError, match="Unknown initializer"):
        bf.layers.Dense(2, kernel_initializer="he_nromal")
