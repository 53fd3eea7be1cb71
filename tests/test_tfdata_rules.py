"""bf.data keeps tf.data's rules: Python numbers' dtypes, generator signatures that cast, shuffle's
buffer and its new order per iteration (also per fit call), and clear errors for the usual mistakes.
Orders inside fit are read from per-batch losses: with learning rate 0, y = 0 and x_i = i, the loss
of a batch is the mean of i^2 over its rows."""

import jax
import numpy as np
import optax
import pytest

import batchfit as bf
from batchfit.data.arrays import epoch_order
from batchfit.data.source import ArraySource, StreamSource, as_source

Dataset = bf.data.Dataset


def probe_model():
    """y_pred = x (weight 1, bias 0) that never learns: each batch loss is mean(x^2 - 0)."""
    model = bf.Sequential([bf.layers.Dense(1, input_shape=(1,))], seed=0)
    model.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    return model


def squares_dataset(n=12):
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    return Dataset.from_tensor_slices((x, np.zeros_like(x)))


def batch_losses(rows, batch_size):
    """Per-batch mean of i^2 for the row order `rows` (float64)."""
    rows = np.asarray(rows, np.float64)
    return [float(np.mean(rows[i:i + batch_size] ** 2)) for i in range(0, len(rows), batch_size)]


# ----- dtypes ------------------------------------------------------------------------

def test_python_numbers_take_tf_datas_dtypes_and_numpy_arrays_keep_theirs():
    dtypes = lambda ds: [e.dtype for e in jax.tree.leaves(next(iter(ds)))]
    assert dtypes(Dataset.from_tensor_slices([1.5, 2.5])) == [np.float32]
    assert dtypes(Dataset.from_tensor_slices({"a": [1, 2], "b": [[0.5], [1.5]]})) == [np.int32, np.float32]
    assert dtypes(Dataset.from_tensor_slices([2**40, 1])) == [np.int64]          # int32 cannot hold it
    assert dtypes(Dataset.from_tensor_slices(np.array([1.5]))) == [np.float64]
    assert dtypes(Dataset.from_tensors(([1.0, 2.0], 3))) == [np.float32, np.int32]
    assert next(iter(Dataset.from_tensor_slices(["ab", "c"]))) == b"ab"          # tf.string: bytes


def test_from_generator_casts_to_its_signature_and_to_output_types():
    def gen():
        yield np.array([1.25, 2.5]), 3

    spec = (bf.data.TensorSpec((2,), np.float32), bf.data.TensorSpec((), np.int64))
    x, y = next(iter(Dataset.from_generator(gen, output_signature=spec)))
    assert (x.dtype, y.dtype, x.tolist(), int(y)) == (np.float32, np.int64, [1.25, 2.5], 3)
    x, y = next(iter(Dataset.from_generator(gen, output_types=(np.float16, np.int32), output_shapes=((2,), ()))))
    assert (x.dtype, y.dtype) == (np.float16, np.int32)
    with pytest.raises(ValueError, match=r"shape \(2,\); output_signature expects \(3,\)"):
        next(iter(Dataset.from_generator(gen, output_types=(np.float32, np.int32), output_shapes=((3,), ()))))


# ----- shuffle -----------------------------------------------------------------------

def test_shuffle_autotune_is_refused_as_tf_data_refuses_it_and_unknown_cardinality_shuffles_all():
    with pytest.raises(ValueError, match="buffer_size must be greater than zero or UNKNOWN_CARDINALITY"):
        Dataset.range(4).shuffle(bf.data.AUTOTUNE)
    full = Dataset.range(30).shuffle(bf.data.UNKNOWN_CARDINALITY, seed=0)
    assert full.buffer_size == 30 and sorted(int(v) for v in full) == list(range(30))


def window_property_holds(order, buffer_size):
    """Output i of a shuffle with `buffer_size` slots over 0..n-1 can only be an input < i + buffer_size."""
    return all(v < i + buffer_size for i, v in enumerate(order))


@pytest.mark.parametrize("buffer_size", [3, 12])
def test_the_fused_path_the_streamed_path_and_steps_per_epoch_read_one_shuffle_order(buffer_size):
    """The rows of epoch e are the shuffle's own order for iteration (e,), whichever path fit takes."""
    def pipeline(variant):
        ds = squares_dataset().shuffle(buffer_size, seed=5).batch(4)
        return ds.map(lambda x, y: (x, y)) if variant == "map" else ds

    orders = [squares_dataset().shuffle(buffer_size, seed=5)._indices((e,)) for e in range(2)]
    assert list(orders[0]) != list(orders[1]) and all(window_property_holds(o, buffer_size) for o in orders)
    assert isinstance(as_source(pipeline("fused")), ArraySource)
    assert isinstance(as_source(pipeline("map")), StreamSource)
    model = probe_model()
    for variant, steps in (("fused", None), ("map", None), ("fused", 3)):
        history = model.fit(pipeline(variant), epochs=2, steps_per_epoch=steps, verbose=0)
        np.testing.assert_allclose(history.batch_history["loss"], [batch_losses(o, 4) for o in orders], rtol=1e-6,
                                   err_msg=f"{variant}, steps_per_epoch={steps}")


@pytest.mark.parametrize("streamed", [False, True])
def test_reshuffle_each_iteration_draws_new_orders_in_every_fit_call(streamed):
    def pipeline(reshuffle):
        ds = squares_dataset().shuffle(12, seed=1, reshuffle_each_iteration=reshuffle).batch(4)
        return ds.map(lambda x, y: (x, y)) if streamed else ds

    model = probe_model()
    for reshuffle in (True, False):
        dataset = pipeline(reshuffle)
        runs = [model.fit(dataset, epochs=2, verbose=0).batch_history["loss"] for _ in range(2)]
        epochs = runs[0] + runs[1]
        distinct = {tuple(np.round(e, 4)) for e in epochs}
        assert len(distinct) == (4 if reshuffle else 1), (reshuffle, epochs)
    first = model.fit(pipeline(True), epochs=1, verbose=0).batch_history["loss"][0]   # a new dataset starts over
    assert first == pytest.approx(batch_losses(epoch_order(12, 1, 0), 4), rel=1e-6)


def test_iterating_a_dataset_draws_a_new_order_each_time_unless_told_not_to():
    ds = Dataset.range(20).shuffle(20, seed=4)
    assert [int(v) for v in ds] != [int(v) for v in ds]
    frozen = Dataset.range(20).shuffle(20, seed=4, reshuffle_each_iteration=False)
    assert [int(v) for v in frozen] == [int(v) for v in frozen]


class _Recording(bf.utils.PyDataset):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __len__(self):
        return 2

    def __getitem__(self, index):
        self.calls.append(index)
        x = np.full((3, 1), index, np.float32)
        return x, np.zeros_like(x)

    def on_epoch_end(self):
        self.calls.append("end")


# ----- clear errors ------------------------------------------------------------------

def test_a_stream_whose_first_batch_has_x_and_y_of_different_lengths_is_named():
    def batches():
        yield np.ones((4, 2), np.float32), np.ones((3, 1), np.float32)

    with pytest.raises(ValueError, match=r"Batch 0 .* different numbers of samples \(x: float32\[4, 2\], "
                                         r"y: float32\[3, 1\]\)"):
        as_source(batches())


@pytest.mark.parametrize("method", ["filter", "take_while"])
def test_a_predicate_returning_an_array_is_named(method):
    ds = getattr(Dataset.range(3), method)(lambda v: np.array([True, False]))
    with pytest.raises(ValueError, match=rf"{method}\(\): the predicate returned bool\[2\] for element 0; it must "
                                         r"return one bool"):
        list(ds)


def _uncalled():
    yield np.ones((4, 1), np.float32), np.ones((4, 1), np.float32)


class _IndexOnly:
    def __getitem__(self, index):
        return np.ones((4, 1), np.float32), np.ones((4, 1), np.float32)


@pytest.mark.parametrize("x, error, pattern", [
    (_uncalled, TypeError, r"`x` is the function '_uncalled', not data\. Call it .*\(fit\(_uncalled\(\)\)\)"),
    (tuple(_uncalled()) * 2, ValueError, r"`x` is a tuple of 2 \(x, y\) batches .* Pass a list of batches"),
    (_IndexOnly(), TypeError, r"`x` is a _IndexOnly with __getitem__ but no __iter__.*bf\.utils\.PyDataset"),
    (_Recording, TypeError, r"`x` is the class _Recording, not data\. Pass an instance: fit\(_Recording\(\.\.\.\)\)"),
])
def test_three_mistakes_that_looked_like_missing_targets_are_named(x, error, pattern):
    with pytest.raises(error, match=pattern):
        probe_model().fit(x, epochs=1, verbose=0)


# ----- Keras's epoch hooks and one-shot validation -------------------------------------

def test_py_dataset_on_epoch_end_runs_at_every_epoch_end_also_with_steps_per_epoch():
    full, one_step = _Recording(), _Recording()
    probe_model().fit(full, epochs=3, verbose=0)
    probe_model().fit(one_step, epochs=3, steps_per_epoch=1, verbose=0)
    assert full.calls == [0, 1, "end"] * 3
    assert one_step.calls == [0, "end", 1, "end", 0, "end"]


def test_a_one_shot_validation_generator_that_runs_out_warns_as_keras_and_reports_no_val_loss():
    def batches():
        for _ in range(2):
            yield np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)

    x = np.ones((8, 1), np.float32)
    with pytest.warns(UserWarning, match="Your input ran out of data"):
        history = probe_model().fit(x, np.zeros_like(x), validation_data=batches(), epochs=3, verbose=0)
    assert history.history["val_loss"] == [pytest.approx(1.0)]          # (1 - 0)^2, first epoch only
    assert len(history.history["loss"]) == 3


@pytest.mark.parametrize("streamed", [False, True])
def test_set_position_replays_the_order_generation_of_the_fit_call_it_was_taken_in(streamed):
    dataset = squares_dataset().shuffle(12, seed=1).batch(4)
    dataset = dataset.map(lambda x, y: (x, y)) if streamed else dataset
    model, saved = probe_model(), {}

    class Keep(bf.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                saved["position"] = self.model.get_position()

    model.fit(dataset, epochs=1, verbose=0)                                   # generation 0
    full = model.fit(dataset, epochs=3, verbose=0, callbacks=[Keep()]).batch_history["loss"]   # generation 1
    model.set_position(saved["position"])
    resumed = model.fit(dataset, epochs=3, verbose=0).batch_history["loss"]
    np.testing.assert_allclose(resumed[-1], full[2], rtol=1e-6)
