"""Bad input is refused before any step runs, with a message that says what and how to fix."""

import numpy as np
import pytest

import batchfit as bf


@pytest.fixture
def model():
    m = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)), bf.layers.Dense(2)], seed=0)
    m.compile(optimizer="sgd", loss="mse")
    return m


X, Y = np.ones((8, 3), np.float32), np.ones((8, 2), np.float32)


def unchanged(model, fn):
    before = model.get_weights()
    fn()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(x=X, y=Y[:5]), "same number of samples.*8.*5"),
    (dict(x=np.ones((8, 4), np.float32), y=Y), r"cannot run on `x` \(float32\[8, 4\]\)"),
    (dict(x=np.array([["a"] * 3] * 8), y=Y), "must be numeric"),
    (dict(x=np.where(np.eye(8, 3) > 0, np.nan, 1.0), y=Y), "3 NaN or infinite"),
    (dict(x=X, y=np.full((8, 2), np.inf)), "NaN or infinite.*allow_nonfinite"),
    (dict(x=X[:0], y=Y[:0]), "empty"),
    (dict(x=X, y=Y, batch_size=0), "batch_size.*>= 1"),
    (dict(x=X, y=Y, epochs=2, initial_epoch=3), r"`epochs` \(2\) must be >= `initial_epoch` \(3\)"),
    (dict(x=X, y=Y, validation_split=1.0), r"validation_split.*\[0, 1\)"),
    (dict(x=X, y=Y, validation_split=-0.1), r"validation_split.*\[0, 1\)"),
    (dict(x=X, y=Y, sample_weight=np.ones(5)), r"`sample_weight` must be numeric with shape \[8\].*float64\[5\]"),
    (dict(x=X, y=Y, sample_weight=np.ones((8, 2))), r"sample_weight.*\[8\]"),
    (dict(x=X, y=Y, accumulate_steps=0), r"`accumulate_steps` must be an integer >= 1; got 0"),
])
def test_fit_refuses_bad_input_before_training(model, kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        unchanged(model, lambda: model.fit(verbose=0, **kwargs))


def test_nonfinite_allowed_on_request():
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(1,))], seed=0)
    m.compile(optimizer="sgd", loss="mse", allow_nonfinite=True)
    assert np.isnan(float(m.train_on_batch(np.array([[np.nan]]), np.array([[1.0]]))))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_finite_check_counts_exactly_and_takes_huge_finite_values(dtype):
    from batchfit.data.arrays import check_finite
    big = np.finfo(dtype).max
    check_finite(np.full((6, 4), big, dtype)[:, ::2], "x")         # finite, though its squares overflow
    check_finite(np.asfortranarray(np.full((3, 5), -big, dtype)), "x")
    check_finite(np.zeros((0, 3), dtype), "x")
    rng = np.random.default_rng(0)
    for bad in (np.nan, np.inf, -np.inf):
        a = rng.normal(size=(7, 5)).astype(dtype)
        a[rng.random((7, 5)) < 0.3] = bad
        view = a[::2, 1:]                                            # strided: copied, not misread
        expected = int(np.size(view) - np.count_nonzero(np.isfinite(view)))
        if expected:
            with pytest.raises(ValueError, match=rf"contains {expected} NaN or infinite"):
                check_finite(view, "x")


def test_sparse_labels_outside_the_class_range():
    m = bf.Sequential([bf.layers.Dense(3, activation="softmax", input_shape=(2,))], seed=0)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="3"):
        unchanged(m, lambda: m.fit(np.ones((4, 2)), np.array([0, 1, 2, 3]), verbose=0))


def test_fit_before_compile():
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(2,))], seed=0)
    with pytest.raises(ValueError, match=r"compile\(\) before fit"):
        m.fit(np.ones((4, 2)), np.ones((4, 1)))
    with pytest.raises(RuntimeError):                # also what Keras code catches
        m.evaluate(np.ones((4, 2)), np.ones((4, 1)))


def test_input_shape_contradicted_by_the_data(model):
    with pytest.raises(ValueError, match=r"float32\[2, 5\]"):
        model.train_on_batch(np.ones((2, 5), np.float32), np.ones((2, 2), np.float32))


def test_unknown_names_suggest_the_closest():
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(2,))], seed=0)
    with pytest.raises(ValueError, match="Did you mean 'mse'"):
        m.compile(optimizer="adam", loss="msee")
    with pytest.raises(ValueError, match="Did you mean 'adam'"):
        m.compile(optimizer="adan", loss="mse")
    with pytest.raises(ValueError, match="Known"):
        m.compile(optimizer="adam", loss="mse", metrics=["acuracy"])


def test_set_weights_with_wrong_shapes(model):
    with pytest.raises(ValueError, match=r"shapes \[\(3, 4\), \(4,\), \(4, 2\), \(2,\)\]"):
        model.set_weights([np.ones((3, 4))])


def test_train_on_batch_before_compile_compiles_with_keras_defaults():
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(2,))], seed=0)
    kernel, bias = m.get_weights()
    with pytest.warns(UserWarning, match="rmsprop.*binary_crossentropy"):
        loss = float(m.train_on_batch(np.ones((4, 2)), np.ones((4, 1))))
    p = 1 / (1 + np.exp(-(np.ones((4, 2)) @ kernel + bias)))          # the loss before the update: BCE at y = 1
    assert loss == pytest.approx(float(np.mean(-np.log(p))), rel=1e-5)
    assert not np.array_equal(m.get_weights()[0], kernel)            # and rmsprop made one step


def test_train_on_batch_checks_the_values_of_every_batch():
    """A batch shaped like the last good one still has its values checked, before its step."""
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    m.train_on_batch(X, np.ones((8, 1), np.float32))
    m.train_on_batch(X, np.zeros((8, 1), np.float32))
    for x, y, pattern in [(np.where(np.eye(8, 3) > 0, np.nan, 1.0).astype(np.float32), np.ones((8, 1), np.float32),
                           r"`x` \(float32\[8, 3\]\) contains 3 NaN"),
                          (X, np.full((8, 1), 2.0, np.float32), r"binary_crossentropy needs targets in \[0, 1\].*max 2"),
                          (X, np.full((8, 1), np.inf, np.float32), "`y`.*8 NaN or infinite")]:
        with pytest.raises(ValueError, match=pattern):
            unchanged(m, lambda: m.train_on_batch(x, y))


@pytest.mark.parametrize("loss, outputs, good, bad", [
    ("sparse_categorical_crossentropy", 3, np.array([0, 1, 2, 1], np.int32),
     [(np.array([0, 1, 3, 1], np.int32), r"labels in \[0, 3\).*max 3"),
      (np.array([0, -1, 2, 1], np.int32), r"min -1")]),
    ("mse", 2, np.ones((4, 2), np.float32),
     [(np.array([[1, np.nan]] * 4, np.float32), r"`y`.*4 NaN or infinite"),
      (np.array([[1, -np.inf]] * 4, np.float32), r"`y`.*4 NaN or infinite")]),
])
def test_batches_shaped_like_the_last_good_one_have_their_values_checked(loss, outputs, good, bad):
    m = bf.Sequential([bf.layers.Dense(outputs, input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss=loss)
    x = np.ones((4, 3), np.float32)
    m.train_on_batch(x, good)
    m.test_on_batch(x, good)
    for y, pattern in bad:
        for call in (m.train_on_batch, m.test_on_batch):
            with pytest.raises(ValueError, match=pattern):
                unchanged(m, lambda: call(x, y))


def test_huge_finite_values_pass_the_finite_check_whose_sum_of_squares_overflows():
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)
    m.train_on_batch(x, y)
    kernel = m.get_weights()[0]
    x[0, 0] = 1e20                                          # finite; its square is not, in float32
    loss = float(m.train_on_batch(x, y))
    assert loss > 1e30 and not np.array_equal(m.get_weights()[0], kernel)       # trained, not refused


def test_fit_checks_the_values_of_arrays_passed_again():
    """fit checks the values of its arrays on every call, also when they are the last call's arrays."""
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    m.fit(x, y, verbose=0)
    m.fit(x, y, verbose=0)
    for write, pattern in [(lambda: x.__setitem__((0, 1), np.nan), r"`x` \(float32\[8, 3\]\) contains 1 NaN"),
                           (lambda: y.__setitem__(3, 2.0), r"binary_crossentropy needs targets in \[0, 1\].*max 2"),
                           (lambda: y.__setitem__(3, np.inf), r"`y`.*1 NaN or infinite")]:
        x[:], y[:] = 1.0, 1.0
        write()
        with pytest.raises(ValueError, match=pattern):
            unchanged(m, lambda: m.fit(x, y, verbose=0))
    x[:], y[:] = 1.0, 1.0
    x.shape = (8, 3, 1)                                       # reshaped in place: checked as new
    with pytest.raises(ValueError, match=r"cannot run on `x` \(float32\[8, 3, 1\]\)"):
        unchanged(m, lambda: m.fit(x, y, verbose=0))
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1; got 32.0"):
        unchanged(m, lambda: m.fit(x.reshape(8, 3), y, batch_size=32.0, verbose=0))


def test_jax_arrays_passed_again_are_checked_again_after_compile():
    """A new loss (compile()) checks the targets by its own rule, also for arrays fit took before."""
    import jax.numpy as jnp
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss="mse")
    x, y = jnp.ones((8, 3)), jnp.full((8, 1), 2.0)
    m.fit(x, y, verbose=0)
    m.fit(x, y, verbose=0)
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"binary_crossentropy needs targets in \[0, 1\].*max 2"):
        unchanged(m, lambda: m.fit(x, y, verbose=0))


@pytest.mark.parametrize("steps_per_execution, fit_kwargs", [
    ("auto", dict()),
    ("auto", dict(batch_size=2, epochs=2)),
    ("auto", dict(batch_size=2, accumulate_steps=3)),
    (2, dict(batch_size=2)),
    ("auto", dict(callbacks=[bf.callbacks.Callback()])),
])
def test_arrays_refused_on_a_later_call_leave_no_trace(steps_per_execution, fit_kwargs):
    """Bad values written into arrays fit has seen: the error of the host checks, and the model,
    its optimizer state and model.history exactly as if the call had not been made."""
    def make():
        m = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)),
                           bf.layers.Dense(1, activation="sigmoid")], seed=0)
        m.compile(optimizer="adam", loss="binary_crossentropy", steps_per_execution=steps_per_execution)
        return m
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 3)).astype(np.float32), (rng.random((9, 1)) > 0.5).astype(np.float32)
    m, twin = make(), make()
    for model in (m, twin):
        model.fit(x, y, verbose=0, seed=1, **fit_kwargs)
        model.fit(x, y, verbose=0, seed=2, **fit_kwargs)
    history, leaves = m.history, [np.array(leaf) for leaf in m._slot.leaves]
    for write, pattern in [(lambda: x.__setitem__((4, 2), np.nan), r"`x` \(float32\[9, 3\]\) contains 1 NaN"),
                           (lambda: y.__setitem__(8, 2.0), r"binary_crossentropy needs targets in \[0, 1\]")]:
        saved = x.copy(), y.copy()
        write()
        with pytest.raises(ValueError, match=pattern):
            m.fit(x, y, verbose=0, seed=3, **fit_kwargs)
        x[:], y[:] = saved
        assert m.history is history
        for a, b in zip(leaves, m._slot.leaves):        # weights, optimizer moments, step count
            np.testing.assert_array_equal(a, np.asarray(b))
    for model in (m, twin):
        model.fit(x, y, verbose=0, seed=3, **fit_kwargs)
    for a, b in zip(m.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert m.history.history["loss"] == twin.history.history["loss"]


def test_fit_trains_on_huge_finite_values_whose_sums_overflow():
    """The finite check proves finiteness by a sum of squares first and falls back to the exact
    test when that overflows on finite values."""
    m = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
    m.compile(optimizer=bf.optimizers.SGD(learning_rate=0.0), loss="mae")
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    x[:4, 0] = 3e38                                         # each finite; their sum (and squares) are not
    before = m.get_weights()
    for _ in range(3):
        m.fit(x, y, batch_size=8, verbose=0)
    assert len(m.history.history["loss"]) == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))   # lr 0: trained, unchanged
    x[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"`x` \(float32\[8, 3\]\) contains 1 NaN"):
        m.fit(x, y, batch_size=8, verbose=0)


@pytest.mark.parametrize("loss", ["binary_crossentropy", "mse"])
def test_fit_refuses_nonfinite_targets_written_into_arrays_it_took_before(loss):
    """NaN and inf targets are refused by the finite rule, whatever the loss, before any step."""
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(3,))], seed=0)
    m.compile(optimizer="sgd", loss=loss)
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    m.fit(x, y, verbose=0)
    weights = m.get_weights()
    for bad in (np.nan, np.inf):
        y[6, 0] = bad
        with pytest.raises(ValueError, match=r"`y` \(float32\[8, 1\]\) contains 1 NaN or infinite"):
            m.fit(x, y, verbose=0)
        for a, b in zip(weights, m.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_new_loss_checks_train_on_batch_layouts_again():
    """*_on_batch checks a layout's shapes once; compile() with another loss checks them (and the
    values) by the new loss's rules: y of 2.0 trains under mse, is refused under binary crossentropy."""
    m = bf.Sequential([bf.layers.Dense(1, activation="sigmoid", input_shape=(3,))], seed=0)
    x, y = np.ones((8, 3), np.float32), np.full((8, 1), 2.0, np.float32)
    m.compile(optimizer="sgd", loss="mse")
    m.train_on_batch(x, y)
    m.compile(optimizer="sgd", loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"binary_crossentropy needs targets in \[0, 1\].*max 2"):
        unchanged(m, lambda: m.train_on_batch(x, y))
    with pytest.raises(ValueError, match=r"`y` \(float32\[8, 1\]\) contains 1 NaN or infinite"):
        y[3] = np.nan
        unchanged(m, lambda: m.train_on_batch(x, y))
