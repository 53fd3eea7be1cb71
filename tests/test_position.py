"""The training position: copied out mid-fit, put back, and fit continues bitwise."""

import jax
import numpy as np
import pytest

import batchfit as bf


def make(steps_per_execution=7):
    m = bf.Sequential([bf.layers.Dense(16, activation="relu", input_shape=(10,)), bf.layers.Dropout(0.3),
                       bf.layers.Dense(1, activation="sigmoid")], seed=0)
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"],
              steps_per_execution=steps_per_execution)
    return m


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((500, 10)).astype(np.float32)
    return x, (rng.random((500, 1)) > 0.5).astype(np.float32)


class StopAt(bf.callbacks.Callback):
    """Copies the position out after batch `batch` of epoch `epoch`, then stops training."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch, self.position = (epoch, batch), None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.position = self.model.get_position()
            self.model.stop_training = True


def leaves(model):
    """Every array of the training state, PRNG keys as their data."""
    return [np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
            for a in jax.tree.leaves(model._slot.state)]


def assert_same_run(whole, resumed, h_whole, h_resumed, first_epoch):
    for a, b in zip(leaves(whole), leaves(resumed)):          # weights, Adam's moments, counts, dropout RNG
        np.testing.assert_array_equal(a, b)
    assert h_resumed.epoch == h_whole.epoch[first_epoch:]
    assert h_resumed.batch_history["loss"] == h_whole.batch_history["loss"][first_epoch:]   # the whole epoch
    assert {k: v for k, v in h_resumed.history.items()} == {k: v[first_epoch:] for k, v in h_whole.history.items()}


@pytest.mark.parametrize("fresh_model", [True, False])
def test_a_position_put_back_continues_bitwise_mid_epoch(data, fresh_model):
    """Shuffled arrays, Dropout, accumulate_steps=3 and steps_per_execution=7: stopped after batch
    13 of epoch 1 (inside an accumulation group: 14 batches = 4 groups + 2), put back into a new
    model (or the stopped one), fit continues to the same weights, optimizer and RNG state and History."""
    x, y = data
    kwargs = dict(batch_size=16, epochs=3, seed=5, accumulate_steps=3, verbose=0)
    whole = make()
    h_whole = whole.fit(x, y, **kwargs)
    stopped, stop = make(), StopAt(1, 13)
    stopped.fit(x, y, callbacks=[stop], **kwargs)
    position = stop.position
    assert (position.epoch, position.batch, position.seed) == (1, 14, 5)
    assert position.batch_losses.tolist() == h_whole.batch_history["loss"][1][:14]
    assert position.accumulated is not None and float(position.accumulated.count) == 2 * 16
    resumed = make() if fresh_model else stopped
    resumed.set_position(position)
    h_resumed = resumed.fit(x, y, **{**kwargs, "seed": 99})     # the position's data order wins
    assert_same_run(whole, resumed, h_whole, h_resumed, 1)


def test_a_position_at_an_epoch_boundary_and_after_fit(data):
    """A position taken after fit is at the next epoch's start: fit to more epochs continues as one run."""
    x, y = data
    kwargs = dict(batch_size=32, seed=2, verbose=0)
    whole, first = make("auto"), make("auto")
    h_whole = whole.fit(x, y, epochs=4, **kwargs)
    first.fit(x, y, epochs=2, **kwargs)
    position = first.get_position()
    assert (position.epoch, position.batch, len(position.batch_losses)) == (2, 0, 0)
    resumed = make("auto")
    resumed.set_position(position)
    assert_same_run(whole, resumed, h_whole, resumed.fit(x, y, epochs=4, **kwargs), 2)


def _mapped_dataset(kind, x, y):
    if kind == "bf.data":
        return bf.data.Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 2.0, b)).batch(20)
    grain = pytest.importorskip("grain")
    return grain.MapDataset.source([(x[i], y[i]) for i in range(len(x))]).map(
        lambda pair: (pair[0] * 2.0, pair[1])).batch(20)


@pytest.mark.parametrize("kind", ["bf.data", "grain"])
def test_a_dataset_stream_resumes_mid_epoch(data, kind):
    """A re-iterable stream (a mapped bf.data Dataset, a grain MapDataset) resumes by skipping the epoch's
    batches already run."""
    x, y = data
    dataset = _mapped_dataset(kind, x, y)
    whole, stopped, stop = make(3), make(3), StopAt(0, 14)
    h_whole = whole.fit(dataset, epochs=2, verbose=0)
    stopped.fit(dataset, epochs=2, verbose=0, callbacks=[stop])
    resumed = make(3)
    resumed.set_position(stop.position)
    assert_same_run(whole, resumed, h_whole, resumed.fit(dataset, epochs=2, verbose=0), 0)


def test_a_position_that_does_not_fit_is_refused(data):
    x, y = data
    stopped, stop = make(), StopAt(0, 6)
    stopped.fit(x, y, batch_size=16, verbose=0, callbacks=[stop])
    other = bf.Sequential([bf.layers.Dense(4, input_shape=(10,)), bf.layers.Dense(1, activation="sigmoid")], seed=0)
    other.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="does not fit this model"):
        other.set_position(stop.position)
    with pytest.raises(TypeError, match="what get_position\\(\\) returns"):
        make().set_position({"epoch": 1})
    more_batches = make()
    more_batches.set_position(stop.position)
    with pytest.raises(ValueError, match="batch 7 of epoch 0.*has 2 batches"):
        more_batches.fit(x, y, batch_size=256, verbose=0)
    generator = make()
    generator.set_position(stop.position)
    batches = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 500, 16))
    with pytest.raises(ValueError, match="cannot resume at batch 7.*one-shot iterator"):
        generator.fit(batches, verbose=0)
