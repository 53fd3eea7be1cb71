"""The driver steps_per_execution="auto" picks (engine/driver.py), and loop_safe's rewrite of convolutions."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import batchfit as bf
from batchfit.engine import driver
from batchfit.engine.driver import Choice, choose, loop_losers, loop_safe, primitives

CONV = "conv_general_dilated"
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, dimension_numbers=NHWC, **options):
    return lax.conv_general_dilated(x, w, options.pop("strides", (1, 1)), options.pop("padding", "VALID"),
                                    dimension_numbers=dimension_numbers, **options)


def _random(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


# ----- finding the primitives that lose in a loop -------------------------------------------------

def test_a_convolution_nested_in_a_scan_and_a_cond_is_found():
    def fn(x, w):
        def body(c, _):
            return lax.cond(c.sum() > 0, lambda: _conv(c, w), lambda: c), None
        return lax.scan(body, x, None, length=2)[0]
    jaxpr = jax.make_jaxpr(fn)(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2)))
    assert CONV in primitives(jaxpr)
    assert loop_losers(jaxpr, "cpu") == (CONV,)
    assert loop_losers(jaxpr, "gpu") == ()                         # cuDNN takes any layout
    assert loop_losers(jaxpr, "cpu", rewritten=frozenset({CONV})) == ()
    dense = jax.make_jaxpr(lambda x, w: jnp.tanh(x @ w))(jnp.ones((2, 3)), jnp.ones((3, 4)))
    assert loop_losers(dense, "cpu") == ()


def test_choose_one_step_per_call_only_where_a_loop_loses():
    assert choose(8, (CONV,), "cpu")[:2] == (1, "step")
    assert CONV in choose(8, (CONV,), "cpu").reason
    assert choose(8, (), "cpu") == Choice(8, "loop", "8 step(s) per call in one compiled loop")
    assert choose(1, (CONV,), "cpu")[:2] == (1, "loop")            # nothing to fuse: nothing to choose


# ----- loop_safe: the same convolution in XLA:CPU's canonical layout ------------------------------

@pytest.mark.parametrize("dimension_numbers, x_shape, w_shape, options", [
    (NHWC, (2, 7, 7, 3), (3, 3, 3, 4), {}),
    (("NCHW", "OIHW", "NCHW"), (2, 3, 7, 7), (4, 3, 3, 3), {"strides": (2, 2), "padding": "SAME"}),
    (("NHWC", "HWIO", "NCHW"), (2, 8, 8, 4), (3, 3, 2, 6), {"rhs_dilation": (2, 2), "feature_group_count": 2}),
    (("NWC", "WIO", "NWC"), (2, 9, 3), (3, 3, 5), {"strides": (1,), "padding": ((1, 2),), "lhs_dilation": (2,)}),
])
def test_loop_safe_gives_the_convolution_and_its_gradients(dimension_numbers, x_shape, w_shape, options):
    x, w = _random(*x_shape), _random(*w_shape, seed=1)

    def loss_and_grads(x, w):
        loss = lambda x, w: jnp.sum(jnp.sin(_conv(x, w, dimension_numbers, **dict(options))))
        return jax.value_and_grad(loss, argnums=(0, 1))(x, w)
    plain = jax.jit(loss_and_grads)(x, w)
    safe = jax.jit(loop_safe(loss_and_grads, "cpu"))(x, w)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(safe)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def _sgd_conv_step(w, batch):
    """One SGD step (lr 0.1) of the mean squared conv output: the kernel gradient is the f01b_i01o conv."""
    loss, grad = jax.value_and_grad(lambda w: jnp.mean(jnp.square(_conv(batch, w))))(w)
    return w - 0.1 * grad, loss


def test_a_loop_of_loop_safe_steps_is_bitwise_the_single_steps_with_canonical_convolutions():
    w, batches = _random(3, 3, 2, 4), _random(3, 4, 9, 9, 2, seed=2)
    scanned = jax.jit(lambda w, xs: lax.scan(loop_safe(_sgd_conv_step, "cpu"), w, xs))
    w_scan, losses_scan = scanned(w, batches)
    single, w_one, losses_one = jax.jit(_sgd_conv_step), w, []
    for b in batches:
        w_one, loss = single(w_one, b)
        losses_one.append(loss)
    np.testing.assert_array_equal(np.asarray(w_scan), np.asarray(w_one))
    np.testing.assert_array_equal(np.asarray(losses_scan), np.asarray(losses_one))
    if jax.default_backend() == "cpu":      # XLA:CPU's fast layout: b01f_01io->b01f everywhere in the loop
        labels = lambda fn: {part.split(",")[0] for part in fn.lower(w, batches).compile().as_text().split(
            "dim_labels=")[1:]}
        assert labels(scanned) == {"b01f_01io->b01f"}
        assert labels(jax.jit(lambda w, xs: lax.scan(_sgd_conv_step, w, xs))) != {"b01f_01io->b01f"}


def test_loop_safe_is_the_function_itself_where_nothing_is_rewritten():
    step = lambda w, x: (w, x)
    assert loop_safe(step, "gpu") is step
    assert loop_safe(step, "tpu") is step


# ----- the choice in fit ----------------------------------------------------------------------------

def _convnet():
    return bf.Sequential([bf.Input((8, 8, 1)), bf.layers.Conv2D(4, (3, 3), activation="relu"),
                          bf.layers.MaxPooling2D((2, 2)), bf.layers.Flatten(), bf.layers.Dropout(0.5),
                          bf.layers.Dense(3, activation="softmax")], seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)                      # 72 / 16: four full batches and one of 8
    return rng.random((72, 8, 8, 1), dtype=np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 72)]


def _fit(spe, x, y, **kwargs):
    model = _convnet()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"], steps_per_execution=spe)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, **{"verbose": 0, **kwargs})
    return history, model.get_weights()


def _plans(monkeypatch) -> list:
    """The steps_per_execution of every fit's plan, as run_fit receives it."""
    import batchfit.model as model_module
    seen, run_fit = [], model_module.run_fit
    monkeypatch.setattr(model_module, "run_fit", lambda exe, slot, source, cursor, *a: (
        seen.append(cursor.plan.steps_per_execution), run_fit(exe, slot, source, cursor, *a))[1])
    return seen


def test_auto_fuses_a_dense_model_and_runs_a_convnet_as_the_compiled_steps_allow(images, monkeypatch):
    x, y = images
    seen = _plans(monkeypatch)
    _fit("auto", x, y)
    dense = bf.Sequential([bf.layers.Dense(3, activation="softmax", input_shape=(64,))], seed=0)
    dense.compile(optimizer="adam", loss="categorical_crossentropy")
    dense.fit(x.reshape(72, 64), y, batch_size=16, epochs=1, verbose=0)
    assert seen == [5, 5]        # 5 batches per epoch: the convnet's loop is rewritten (loop_safe), so it fuses too


def test_the_choice_is_logged_and_verbose_2_prints_one_step_per_call_once(images, capsys, caplog, monkeypatch):
    x, y = images
    with caplog.at_level(logging.INFO, logger="batchfit"):
        _fit("auto", x, y, verbose=2)
    assert any(r.getMessage().startswith("steps_per_execution='auto': ") for r in caplog.records)
    capsys.readouterr()
    monkeypatch.setattr(driver, "_rewritten", lambda platform: frozenset())    # the loop as if not rewritten
    _fit("auto", x, y, verbose=2)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steps_per_execution='auto'")]
    if jax.default_backend() == "cpu":
        assert len(said) == 1 and "one step per call: conv_general_dilated" in said[0]
    _fit(5, x, y, verbose=2)                              # a number: nothing to choose, nothing said
    assert "steps_per_execution='auto'" not in capsys.readouterr().out


def test_every_driver_gives_bitwise_the_same_history_and_weights(images):
    x, y = images
    runs = [_fit(spe, x, y) for spe in ("auto", 1, 3)]
    for history, weights in runs[1:]:
        assert history.history == runs[0][0].history
        assert history.batch_history == runs[0][0].batch_history
        for a, b in zip(weights, runs[0][1]):
            np.testing.assert_array_equal(a, b)


def test_fit_on_a_convnet_equals_a_train_on_batch_loop(images):
    x, y = images
    history, weights = _fit("auto", x, y)
    model = _convnet()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    losses = [[float(model.train_on_batch(x[i:i + 16], y[i:i + 16])) for i in range(0, 72, 16)] for _ in range(2)]
    np.testing.assert_allclose(history.batch_history["loss"], losses, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
