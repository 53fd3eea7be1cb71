"""The convnet speed-ups of issue 24 keep Keras's numbers: max pooling as a reshape and a maximum
(layers/pooling.block_max) and the one-channel kernel gradient as a matmul (engine/driver.loop_safe).

block_max must equal reduce_window's maximum bitwise, forward and gradient, ties included (after a
ReLU whole windows are zeros: select_and_scatter, and so Keras, send the gradient to the first
maximum in row-major order). The matmul sums the same products as the convolution in another order:
against a float64 reference its error stays within float32 rounding of the sum of |products|.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import batchfit as bf
from batchfit import layers as L
from batchfit.engine.driver import loop_safe, primitives
from batchfit.layers.pooling import block_max

keras = pytest.importorskip("keras")


def _reduce_window_max(x, pool):
    window = (1, *pool, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")


def _data(kind, shape, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "ties":                      # few distinct values: most windows hold a tied maximum
        return rng.integers(0, 3, shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    return np.maximum(x, 0) if kind == "relu" else x       # relu: about 1 window in 16 all zeros


# ----- max pooling: block_max is reduce_window's maximum, bitwise -----------------------------------

@pytest.mark.parametrize("kind", ["normal", "ties", "relu"])
@pytest.mark.parametrize("shape, pool", [((3, 7, 9, 3), (2, 2)), ((2, 26, 26, 4), (2, 2)), ((2, 11, 11, 2), (2, 2)),
                                         ((2, 7, 8, 3), (3, 2)), ((3, 9, 4), (3,)), ((2, 9, 3), (2,))])
def test_block_max_and_its_gradient_are_reduce_window_max_bitwise(kind, shape, pool):
    x = _data(kind, shape)
    out_shape = jax.eval_shape(lambda x: _reduce_window_max(x, pool), x).shape
    g = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
    for fn in (lambda x: _reduce_window_max(x, pool), lambda x: block_max(x, pool)):
        assert fn(x).shape == out_shape
    np.testing.assert_array_equal(jax.jit(lambda x: block_max(x, pool))(x), _reduce_window_max(x, pool))
    grads = [jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(fn(x, pool) * g)))(x) for fn in (_reduce_window_max, block_max)]
    np.testing.assert_array_equal(grads[1], grads[0])


def test_block_max_sends_each_gradient_to_the_first_maximum_of_its_window():
    x = np.array([[0, 0, 1, 2],       # windows: all zeros -> (0, 0); max 3 at (1, 2);
                  [0, 0, 3, 2],       #          5 tied three times -> (2, 0) first;
                  [5, 5, 0, -1],      #          0 tied twice -> (2, 2) first
                  [5, 4, -1, 0]], np.float32)[None, :, :, None]
    g = np.array([[1, 2], [3, 4]], np.float32)[None, :, :, None]
    grad = jax.grad(lambda x: jnp.sum(block_max(x, (2, 2)) * g))(x)[0, :, :, 0]
    assert np.asarray(block_max(x, (2, 2)))[0, :, :, 0].tolist() == [[0, 3], [5, 0]]
    assert np.asarray(grad).tolist() == [[1, 0, 0, 0], [0, 0, 2, 0], [3, 0, 4, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("kind", ["ties", "relu"])
@pytest.mark.parametrize("name, shape", [("MaxPooling2D", (7, 9, 3)), ("MaxPooling1D", (9, 3))])
def test_max_pooling_layers_give_keras_outputs_and_gradients_with_ties(name, shape, kind):
    x = _data(kind, (4, *shape), seed=2)
    mine = L.build_stack([getattr(L, name)()], shape).layers[0]
    theirs = getattr(keras.layers, name)()
    g = np.random.default_rng(3).standard_normal((4, *theirs.compute_output_shape((4, *shape))[1:])).astype(np.float32)
    np.testing.assert_array_equal(mine(x), np.asarray(theirs(x)))
    ours = jax.grad(lambda x: jnp.sum(mine(x) * g))(x)
    keras_grad = jax.grad(lambda x: jnp.sum(theirs(x) * g))(x)
    np.testing.assert_array_equal(ours, keras_grad)


def test_only_windows_that_tile_the_input_take_block_max():
    def pool_primitives(layer, shape):
        module = L.build_stack([layer], shape).layers[0]
        return primitives(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(module(x))))(jnp.ones((2, *shape))))
    tiled = pool_primitives(L.MaxPooling2D(2), (7, 9, 3))
    assert "reduce_max" in tiled and not {"reduce_window_max", "select_and_scatter_add"} & tiled
    for layer in (L.MaxPooling2D(3, strides=2), L.MaxPooling2D(2, padding="same")):
        assert "reduce_window_max" in pool_primitives(layer, (7, 9, 3))


# ----- the one-channel kernel gradient as a matmul ---------------------------------------------------

def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_a_one_channel_kernel_gradient_runs_as_a_matmul_within_float32_rounding():
    rng = np.random.default_rng(4)
    x, w = rng.random((6, 12, 12, 1), dtype=np.float32), rng.standard_normal((3, 3, 1, 5)).astype(np.float32)
    g = rng.standard_normal((6, 10, 10, 5)).astype(np.float32)
    kernel_grad = lambda x, w: jax.vjp(lambda w: _conv(x, w), w)[1](g)[0]
    convs = lambda fn: [e.primitive.name for e in jax.make_jaxpr(fn)(x, w).eqns].count("conv_general_dilated")
    assert (convs(kernel_grad), convs(loop_safe(kernel_grad, "cpu"))) == (2, 1)     # the forward one is left
    assert "dot_general" in primitives(jax.make_jaxpr(loop_safe(kernel_grad, "cpu"))(x, w))
    # float64: dk[i, j, 0, f] = sum over b, h, w of x[b, h + i, w + j, 0] * g[b, h, w, f]
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    patches = np.stack([x64[:, i:i + 10, j:j + 10, 0] for i in range(3) for j in range(3)])    # [9, 6, 10, 10]
    exact = np.einsum("tbhw,bhwf->tf", patches, g64).reshape(3, 3, 1, 5)
    scale = np.einsum("tbhw,bhwf->tf", np.abs(patches), np.abs(g64)).reshape(3, 3, 1, 5)
    for result in (jax.jit(loop_safe(kernel_grad, "cpu"))(x, w), jax.jit(kernel_grad)(x, w)):
        assert np.all(np.abs(np.asarray(result, np.float64) - exact) <= 600 * np.finfo(np.float32).eps * scale)


def test_a_loop_of_rewritten_one_channel_steps_is_bitwise_the_single_rewritten_steps():
    rng = np.random.default_rng(5)
    w, batches = rng.standard_normal((3, 3, 1, 4)).astype(np.float32), rng.random((3, 4, 9, 9, 1), dtype=np.float32)

    def step(w, batch):             # one SGD step (lr 0.1) of the mean squared, max-pooled conv output
        loss, grad = jax.value_and_grad(lambda w: jnp.mean(jnp.square(block_max(_conv(batch, w), (2, 2)))))(w)
        return w - 0.1 * grad, loss
    w_loop, losses_loop = jax.jit(lambda w, xs: lax.scan(loop_safe(step, "cpu"), w, xs))(w, batches)
    single, w_one, losses_one = jax.jit(loop_safe(step, "cpu")), w, []
    for batch in batches:
        w_one, loss = single(w_one, batch)
        losses_one.append(loss)
    np.testing.assert_array_equal(np.asarray(w_loop), np.asarray(w_one))
    np.testing.assert_array_equal(np.asarray(losses_loop), np.asarray(losses_one))


# ----- the MNIST convnet, scaled down, against Keras -------------------------------------------------

def _mnist_like(lib):
    layers = lib.layers
    return lib.Sequential([lib.Input((12, 12, 1)), layers.Conv2D(4, (3, 3), activation="relu"),
                           layers.MaxPooling2D((2, 2)), layers.Conv2D(6, (3, 3), activation="relu"),
                           layers.MaxPooling2D((2, 2)), layers.Flatten(), layers.Dropout(0.0),
                           layers.Dense(3, activation="softmax")])


def test_the_mnist_convnet_fits_to_keras_numbers_and_train_on_batch_bitwise():
    rng = np.random.default_rng(6)       # 40 / 16: two full batches and one of 8; many zeros: pooling ties
    x = np.maximum(rng.standard_normal((40, 12, 12, 1)), 0).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    keras.utils.set_random_seed(0)
    theirs, mine, twin = _mnist_like(keras), _mnist_like(bf), _mnist_like(bf)
    for model in (mine, twin):
        model.set_weights(theirs.get_weights())
        model.compile(optimizer="adam", loss="categorical_crossentropy")
    theirs.compile(optimizer="adam", loss="categorical_crossentropy")
    fits = [m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0) for m in (theirs, mine)]
    np.testing.assert_allclose(fits[1].history["loss"], fits[0].history["loss"], rtol=1e-5)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    losses = [[float(twin.train_on_batch(x[i:i + 16], y[i:i + 16])) for i in range(0, 40, 16)] for _ in range(2)]
    assert fits[1].batch_history["loss"] == losses
    for a, b in zip(twin.get_weights(), mine.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
