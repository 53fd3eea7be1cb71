"""Preprocessing layers against Keras 3 itself (KERAS_BACKEND=jax): Normalization (and its adapt statistics),
Rescaling, CategoryEncoding, Discretization (and its quantile adapt); Hashing against Keras's own test vectors and
a Python-integer FarmHash, since Keras's Hashing needs TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchfit as bf

keras = pytest.importorskip("keras")
L = bf.layers


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(mine, theirs, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=rtol, atol=atol)


@pytest.fixture
def keras_without_tensorflow(monkeypatch):
    """Keras's adapt() asks `isinstance(data, tf.data.Dataset)` before it iterates batches; without TensorFlow
    installed that lookup raises, so give it a Dataset class nothing is an instance of."""
    from keras.src.layers.preprocessing import discretization, normalization
    stub = types.SimpleNamespace(data=types.SimpleNamespace(Dataset=type("NoDataset", (), {})),
                                 is_tensor=lambda x: False)
    for module in (normalization, discretization):
        monkeypatch.setattr(module, "tf", stub)


# ----- Normalization ------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, None, (1, 2), 1])
def test_normalization_adapt_matches_keras(axis, keras_without_tensorflow):
    x = normal(20, 3, 2) * 3 + 1
    batches = [x[:7], x[7:16], x[16:]]
    theirs, mine = keras.layers.Normalization(axis=axis), L.Normalization(axis=axis)
    theirs.adapt(batches)
    mine.adapt(batches)
    assert [w.name for w in mine.weights] == ["mean", "variance", "count"]
    for m, t in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        assert m.shape == t.shape and m.dtype == t.dtype
        close(m, t)
    close(mine(x), theirs(x), atol=1e-5)
    whole = L.Normalization(axis=axis)
    whole.adapt(x)                                   # one array: the same statistics as its batches
    close(whole.get_weights()[0], mine.get_weights()[0])
    close(whole.get_weights()[1], mine.get_weights()[1])


def test_normalization_adapt_by_hand_and_from_a_dataset():
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 40.0]], np.float32)     # means 3, 20; variances 8/3, 200
    y = np.zeros((3, 1), np.float32)
    norm = L.Normalization()
    norm.adapt(bf.data.Dataset.from_tensor_slices((x, y)).batch(2))       # (x, y) batches: x is adapted
    close(norm.get_weights()[0], [3.0, 20.0])
    close(norm.get_weights()[1], [8 / 3, 200.0])
    close(norm(x[:1]), [[(1 - 3) / np.sqrt(8 / 3), (10 - 20) / np.sqrt(200)]])


@pytest.mark.parametrize("mean,variance,invert", [(2.0, 4.0, False), ([1.0, 2.0], [4.0, 0.0], False),
                                                  ([1.0, 2.0], [4.0, 9.0], True)])
def test_normalization_given_statistics_match_keras(mean, variance, invert):
    x = normal(4, 3, 2)
    theirs = keras.layers.Normalization(mean=mean, variance=variance, invert=invert)
    mine = L.Normalization(mean=mean, variance=variance, invert=invert)
    close(mine(x), theirs(x))
    assert mine.get_weights() == [] == theirs.get_weights()
    if variance == [4.0, 0.0]:                          # zero variance: divided by Keras's epsilon 1e-7
        close(mine(x)[..., 1], (x[..., 1] - 2.0) / 1e-7, rtol=1e-5)


def test_normalization_first_in_a_sequential_fits_and_saves(tmp_path):
    x = normal(64, 3) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    y = (x / [1.0, 10.0, 100.0]).sum(1, keepdims=True).astype(np.float32)
    norm = L.Normalization()
    norm.adapt(x)
    model = bf.Sequential([bf.Input((3,)), norm, L.Dense(1)])
    weights = model.get_weights()
    close(weights[0], x.mean(0), rtol=1e-5)
    close(weights[1], x.var(0), rtol=1e-4)
    assert weights[2] == 0 and len(weights) == 5                # mean, variance, count, kernel, bias
    model.compile(optimizer="adam", loss="mse")
    losses = model.fit(x, y, epochs=5, batch_size=16, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    close(model.get_weights()[0], x.mean(0), rtol=1e-5)         # statistics are not trained
    model.save(tmp_path / "m")
    loaded = bf.load_model(tmp_path / "m")
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        close(a, b)
    close(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_normalization_config_round_trip_and_errors():
    norm = L.Normalization(axis=(1, 2), mean=[1.0, 2.0], variance=[3.0, 4.0], invert=True, name="n")
    clone = L.layer_from_config(norm.get_config())
    assert clone.get_config() == norm.get_config()
    x = normal(2, 3, 2)
    close(clone(x), norm(x))
    with pytest.raises(ValueError, match="variance"):
        L.Normalization(mean=1.0)
    with pytest.raises(ValueError, match="axis"):
        L.Normalization(axis="last")
    with pytest.raises(ValueError, match="axis"):
        L.Normalization(axis=0).adapt(x)
    with pytest.raises(TypeError, match="adapt"):
        L.Normalization().adapt(3.0)


# ----- Rescaling, CategoryEncoding -------------------------------------------------------------------

@pytest.mark.parametrize("scale,offset", [(1 / 255, 0.0), (2.0, -1.0), ([1.0, 0.5], [0.0, 1.0])])
def test_rescaling_matches_keras(scale, offset):
    x = normal(3, 4, 2) * 100
    close(L.Rescaling(scale, offset)(x), keras.layers.Rescaling(scale, offset)(x))
    assert L.Rescaling(scale, offset)(np.arange(4).reshape(2, 2)).dtype == jnp.float32     # ints made floats
    clone = L.layer_from_config(L.Rescaling(scale, offset).get_config())
    close(clone(x), L.Rescaling(scale, offset)(x))
    with pytest.raises(ValueError, match="scale"):
        L.Rescaling("big")


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("ids", [[[0, 1, 1], [3, 3, 2]], [[2], [0]], [1, 3, 3]])
def test_category_encoding_matches_keras(mode, ids):
    ids = np.array(ids)
    theirs, mine = keras.layers.CategoryEncoding(4, output_mode=mode), L.CategoryEncoding(4, output_mode=mode)
    np.testing.assert_array_equal(np.asarray(mine(ids)), np.asarray(theirs(ids)))
    assert mine.compute_output_shape(ids.shape[1:]) == tuple(theirs.compute_output_shape(ids.shape))[1:] or \
        ids.ndim == 1


def test_category_encoding_by_hand_config_and_errors():
    out = L.CategoryEncoding(num_tokens=3, output_mode="count")(np.array([[0, 2, 2], [1, 1, 1]]))
    np.testing.assert_array_equal(np.asarray(out), [[1, 0, 2], [0, 3, 0]])
    clone = L.layer_from_config(L.CategoryEncoding(5, output_mode="one_hot").get_config())
    assert (clone.num_tokens, clone.output_mode) == (5, "one_hot")
    with pytest.raises(ValueError, match="num_tokens"):
        L.CategoryEncoding()
    with pytest.raises(ValueError, match="output_mode"):
        L.CategoryEncoding(3, output_mode="tf_idf")


# ----- Discretization ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["int", "one_hot", "multi_hot", "count"])
def test_discretization_with_boundaries_matches_keras(mode):
    x = np.array([[-1.5, 1.0, 3.4, 0.5], [0.0, 3.0, 1.3, 0.0]], np.float32)
    theirs = keras.layers.Discretization(bin_boundaries=[0.0, 1.0, 2.0], output_mode=mode)
    mine = L.Discretization(bin_boundaries=[0.0, 1.0, 2.0], output_mode=mode)
    np.testing.assert_array_equal(np.asarray(mine(x)), np.asarray(theirs(x)))
    if mode == "int":            # Keras's docstring example
        np.testing.assert_array_equal(np.asarray(mine(x)), [[0, 2, 3, 1], [1, 3, 2, 1]])
        assert mine(x).dtype == jnp.int32


@pytest.mark.parametrize("num_bins,epsilon,split", [(4, 0.01, False), (3, 0.1, True), (7, 0.01, True)])
def test_discretization_adapt_matches_keras(num_bins, epsilon, split, keras_without_tensorflow):
    x = normal(300, seed=3)
    data = [x[:100], x[100:]] if split else x
    theirs = keras.layers.Discretization(num_bins=num_bins, epsilon=epsilon)
    mine = L.Discretization(num_bins=num_bins, epsilon=epsilon)
    theirs.adapt(data)
    mine.adapt(data)
    close(mine.bin_boundaries, theirs.bin_boundaries)
    np.testing.assert_array_equal(np.asarray(mine(x)), np.asarray(theirs(x)))
    clone = L.layer_from_config(mine.get_config())                    # the adapted boundaries travel
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(mine(x)))


def test_discretization_in_a_model_and_errors():
    disc = L.Discretization(num_bins=4)
    disc.adapt(np.arange(100, dtype=np.float32))
    model = bf.Sequential([bf.Input((1,)), disc, L.Embedding(4, 2), L.Flatten(), L.Dense(1)])
    x = np.arange(100, dtype=np.float32)[:, None]
    model.compile(optimizer="adam", loss="mse")
    losses = model.fit(x, x / 100, epochs=3, batch_size=25, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="num_bins"):
        L.Discretization()
    with pytest.raises(ValueError, match="num_bins"):
        L.Discretization(bin_boundaries=[0.0], num_bins=1)
    with pytest.raises(ValueError, match="adapt"):
        L.Discretization(num_bins=3)(np.zeros((2, 1)))


# ----- Hashing --------------------------------------------------------------------------------------

def farmhash_fingerprint64(data: bytes) -> int:
    """FarmHash Fingerprint64 of 1 to 16 bytes with Python integers (farmhashna::Hash64's short paths)."""
    mask, n = (1 << 64) - 1, len(data)
    k0, k2 = 0xC3A5C85C97CB3127, 0x9AE16A3B2F90404F

    def rotate(v, s):
        return ((v >> s) | (v << (64 - s))) & mask

    def fetch(i, size):
        return int.from_bytes(data[i:i + size], "little")

    def hash_len_16(u, v, mul):
        a = ((u ^ v) * mul) & mask
        a ^= a >> 47
        b = ((v ^ a) * mul) & mask
        b ^= b >> 47
        return (b * mul) & mask
    mul = k2 + 2 * n
    if n >= 8:
        a, b = (fetch(0, 8) + k2) & mask, fetch(n - 8, 8)
        return hash_len_16((rotate(b, 37) * mul + a) & mask, ((rotate(a, 25) + b) * mul) & mask, mul)
    if n >= 4:
        return hash_len_16((n + (fetch(0, 4) << 3)) & mask, fetch(n - 4, 4), mul)
    y, z = data[0] + (data[n >> 1] << 8), n + (data[n - 1] << 2)
    v = ((y * k2) & mask) ^ ((z * k0) & mask)
    return ((v ^ (v >> 47)) * k2) & mask


def test_reference_fingerprint_gives_keras_test_vectors():
    """Keras's hashing_test.py expectations (TensorFlow's to_hash_bucket_fast), strings of 1 to 9 bytes."""
    assert [farmhash_fingerprint64(s.encode()) % 3 for s in "ABCDE"] == [1, 0, 1, 1, 2]
    words = ["omar", "stringer", "marlo", "wire", "skywalker"]
    assert [farmhash_fingerprint64(s.encode()) % 2 for s in words] == [0, 0, 1, 0, 0]
    assert [farmhash_fingerprint64(str(i).encode()) % 3 for i in range(5)] == [1, 0, 1, 0, 2]


def test_hashing_integers_as_keras():
    np.testing.assert_array_equal(np.asarray(jax.jit(L.Hashing(3))(np.array([[0], [1], [2], [3], [4]]))),
                                  [[1], [0], [1], [0], [2]])            # Keras's test_hash_dense_int_input_farmhash
    values = np.concatenate([np.array([-2**31, 2**31 - 1, -1, 0, 9, 10, 99999999, -9999999], np.int32),
                             np.random.default_rng(0).integers(-2**31, 2**31, 300).astype(np.int32)])
    for num_bins in (7, 2**20 + 7, 2**31 - 1):
        expected = [farmhash_fingerprint64(str(v).encode()) % num_bins for v in values.tolist()]
        np.testing.assert_array_equal(np.asarray(jax.jit(L.Hashing(num_bins))(values)), expected)
    some = np.array([7, 3, -7, 70, 7], np.int32)
    masked = jax.jit(L.Hashing(num_bins=5, mask_value=7))(some)            # bin 0 is the mask's, the rest 1..4
    expected = [0 if v == 7 else farmhash_fingerprint64(str(v).encode()) % 4 + 1 for v in some.tolist()]
    assert expected[0] == expected[-1] == 0 and min(expected[1:4]) >= 1
    np.testing.assert_array_equal(np.asarray(masked), expected)


def test_hashing_output_modes_floats_config_and_errors():
    ids = np.array([[3, 4], [5, 3]])
    bins = [[farmhash_fingerprint64(str(v).encode()) % 4 for v in row] for row in ids.tolist()]
    counts = np.zeros((2, 4), np.float32)
    for row, row_bins in enumerate(bins):
        for b in row_bins:
            counts[row, b] += 1
    close(jax.jit(L.Hashing(4, output_mode="count"))(ids), counts)
    close(jax.jit(L.Hashing(4, output_mode="multi_hot"))(ids), np.minimum(counts, 1))
    hashing = jax.jit(L.Hashing(4))
    np.testing.assert_array_equal(np.asarray(hashing(np.array([3.7, -4.2]))),
                                  np.asarray(hashing(np.array([3, -4]))))        # floats truncate, as Keras
    clone = L.layer_from_config(L.Hashing(9, mask_value=0, output_mode="one_hot").get_config())
    assert (clone.num_bins, clone.mask_value, clone.output_mode) == (9, 0, "one_hot")
    with pytest.raises(ValueError, match="num_bins"):
        L.Hashing(0)
    with pytest.raises(ValueError, match="salt"):
        L.Hashing(3, salt=133)
    with pytest.raises(ValueError, match="dtype"):
        L.Hashing(3, dtype="float32")
