"""Every input type fit / evaluate / predict accept trains exactly as the same data given as arrays.

103 samples in batches of 10: ten full batches and a partial one of 3, two epochs. Each
input type must give the same per-batch losses (to float32 rounding), the same weights,
and for a few of them the same evaluate / predict results.
"""

import numpy as np
import pytest

import batchfit as bf
from batchfit.data.source import ArraySource, as_source
from batchfit.data.stream import StreamSource

N, B, EPOCHS = 103, 10, 2


def make_model():
    model = bf.Sequential([bf.layers.Dense(4, activation="relu", input_shape=(3,)), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]))[:, None].astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def reference(data):
    x, y = data
    model = make_model()
    history = model.fit(x, y, batch_size=B, epochs=EPOCHS, shuffle=False, verbose=0)
    return dict(losses=np.array(history.batch_history["loss"]), weights=model.get_weights(),
                evaluate=model.evaluate(x, y, batch_size=B, verbose=0), predict=model.predict(x, batch_size=B))


def batches(x, y, epochs=1, w=None):
    for _ in range(epochs):
        for i in range(0, len(x), B):
            yield (x[i:i + B], y[i:i + B]) if w is None else (x[i:i + B], y[i:i + B], w[i:i + B])


def assert_same_training(model, history, reference):
    np.testing.assert_allclose(np.array(history.batch_history["loss"]), reference["losses"], rtol=1e-6, atol=1e-7)
    for got, want in zip(model.get_weights(), reference["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def numpy_float64(x, y, tmp_path):
    return dict(x=x.astype(np.float64), y=y.astype(np.float64), batch_size=B, shuffle=False)


def jax_arrays(x, y, tmp_path):
    import jax.numpy as jnp
    return dict(x=jnp.asarray(x), y=jnp.asarray(y), batch_size=B, shuffle=False)


def pandas_frames(x, y, tmp_path):
    import pandas as pd
    return dict(x=pd.DataFrame(x, columns=["a", "b", "c"]), y=pd.Series(y[:, 0]), batch_size=B, shuffle=False)


def dataset_fused(x, y, tmp_path):
    return dict(x=bf.data.Dataset.from_tensor_slices((x, y)).batch(B).prefetch(bf.data.AUTOTUNE))


def dataset_streamed(x, y, tmp_path):
    ds = bf.data.Dataset.from_tensor_slices((x, y)).batch(B).map(lambda a, b: (a, b), num_parallel_calls=2)
    return dict(x=ds.prefetch(2))


def dataset_from_generator(x, y, tmp_path):
    spec = (bf.data.TensorSpec((None, 3)), bf.data.TensorSpec((None, 1)))
    return dict(x=bf.data.Dataset.from_generator(lambda: batches(x, y), output_signature=spec))


def generator_object(x, y, tmp_path):        # consumed once: both epochs come from one generator
    return dict(x=batches(x, y, epochs=EPOCHS), steps_per_epoch=11)


def list_of_batches(x, y, tmp_path):
    return dict(x=list(batches(x, y)))


def grain_map_dataset(x, y, tmp_path):
    import grain
    return dict(x=grain.MapDataset.source([(x[i], y[i]) for i in range(N)]).batch(B))


def grain_iter_dataset(x, y, tmp_path):
    return dict(x=grain_map_dataset(x, y, tmp_path)["x"].to_iter_dataset())


def grain_data_loader(x, y, tmp_path):
    import grain
    sampler = grain.samplers.IndexSampler(num_records=N, shuffle=False, num_epochs=1, seed=0)
    loader = grain.DataLoader(data_source=[(x[i], y[i]) for i in range(N)], sampler=sampler,
                              operations=[grain.transforms.Batch(batch_size=B)], worker_count=0)
    return dict(x=loader)


def torch_data_loader(x, y, tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    return dict(x=DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=B))


def numpy_memmap(x, y, tmp_path):
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mx[:] = x
    mx.flush()
    return dict(x=np.load(tmp_path / "x.npy", mmap_mode="r"), y=y, batch_size=B, shuffle=False)


CASES = [numpy_float64, jax_arrays, pandas_frames, dataset_fused, dataset_streamed, dataset_from_generator,
         generator_object, list_of_batches, grain_map_dataset, grain_iter_dataset, grain_data_loader,
         torch_data_loader, numpy_memmap]
STREAMED = {dataset_streamed, dataset_from_generator, generator_object, list_of_batches, grain_map_dataset,
            grain_iter_dataset, grain_data_loader, torch_data_loader, numpy_memmap}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_every_input_type_trains_as_arrays_do(case, data, reference, tmp_path):
    x, y = data
    kwargs = case(x, y, tmp_path)
    source_kwargs = {k: v for k, v in kwargs.items() if k not in ("steps_per_epoch", "shuffle")}
    if case is not generator_object:         # (a generator would lose its first batch to this look)
        kind = StreamSource if case in STREAMED else ArraySource
        assert isinstance(as_source(**source_kwargs), kind)
    model = make_model()
    history = model.fit(epochs=EPOCHS, verbose=0, **kwargs)
    assert_same_training(model, history, reference)


@pytest.mark.parametrize("case", [dataset_fused, dataset_streamed, numpy_memmap],
                         ids=lambda case: case.__name__)
def test_evaluate_and_predict_take_the_same_inputs(case, data, reference, tmp_path):
    x, y = data
    model = make_model()
    model.set_weights(reference["weights"])
    kwargs = {k: v for k, v in case(x, y, tmp_path).items() if k != "shuffle"}
    assert model.evaluate(verbose=0, **kwargs) == pytest.approx(reference["evaluate"], rel=1e-6)
    kwargs.pop("y", None)
    np.testing.assert_allclose(model.predict(**kwargs), reference["predict"], rtol=1e-6, atol=1e-7)


def test_sample_weights_as_the_third_item_of_each_batch(data):
    x, y = data
    w = np.linspace(0.0, 2.0, N).astype(np.float32)
    arrays, stream = make_model(), make_model()
    expected = arrays.fit(x, y, sample_weight=w, batch_size=B, epochs=1, shuffle=False, verbose=0)
    got = stream.fit(batches(x, y, w=w), epochs=1, verbose=0)
    np.testing.assert_allclose(got.batch_history["loss"], expected.batch_history["loss"], rtol=1e-6)
    k1, b1, k2, b2 = make_model().get_weights()    # the first loss by hand: sum(w * l) / n_b
    pred = np.maximum(x[:B] @ k1 + b1, 0.0) @ k2 + b2
    assert got.batch_history["loss"][0][0] == pytest.approx(np.sum(w[:B] * (pred[:, 0] - y[:B, 0]) ** 2) / B, rel=1e-5)


def test_a_shuffled_dataset_gives_the_batches_of_fit_shuffle_with_its_seed(data):
    x, y = data                                    # buffer >= rows: one uniform permutation per epoch
    arrays, fused, streamed = make_model(), make_model(), make_model()
    expected = arrays.fit(x, y, batch_size=B, epochs=EPOCHS, seed=7, verbose=0).batch_history["loss"]
    ds = bf.data.Dataset.from_tensor_slices((x, y)).shuffle(10_000, seed=7).batch(B)
    got_fused = fused.fit(ds, epochs=EPOCHS, verbose=0).batch_history["loss"]
    got_streamed = streamed.fit(ds.map(lambda a, b: (a, b)), epochs=EPOCHS, verbose=0).batch_history["loss"]
    np.testing.assert_allclose(got_fused, expected, rtol=1e-6)
    np.testing.assert_allclose(got_streamed, expected, rtol=1e-6)
    assert expected[0] != expected[1]              # reshuffled each epoch


def test_dicts_of_arrays_feed_a_multi_input_model():
    from flax import nnx

    class TwoInputs(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.a, self.b = nnx.Linear(2, 1, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x):
            return self.a(x["a"]) + self.b(x["b"])

    rng = np.random.default_rng(1)
    inputs = {"a": rng.normal(size=(25, 2)).astype(np.float32), "b": rng.normal(size=(25, 3)).astype(np.float32)}
    y = (inputs["a"].sum(1, keepdims=True) - inputs["b"][:, :1]).astype(np.float32)
    histories = []
    for x in (inputs, bf.data.Dataset.from_tensor_slices((inputs, y)).batch(8).map(lambda a, b: (a, b))):
        model = bf.Model(TwoInputs())
        model.compile(optimizer="sgd", loss="mse")
        extra = dict(y=y, batch_size=8, shuffle=False) if isinstance(x, dict) else {}
        histories.append(model.fit(x, epochs=2, verbose=0, **extra).batch_history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-6)
    module = TwoInputs()                           # the first loss by hand: the initial weights on batch 0
    pred = np.asarray(module({k: v[:8] for k, v in inputs.items()}))
    assert histories[0][0][0] == pytest.approx(float(np.mean((pred - y[:8]) ** 2)), rel=1e-5)


def test_arrays_written_in_place_between_fit_calls_are_trained_on_as_written(data):
    """Calls on the same NumPy objects reuse their checked layout, never their values."""
    x0, y0 = data
    x, y = x0.copy(), y0.copy()
    for steps_per_execution in ("auto", 4):                    # one compiled call per epoch, or several
        again, fresh = make_model(), make_model()
        for model in (again, fresh):
            model.compile(optimizer="adam", loss="mse", steps_per_execution=steps_per_execution)
        for shuffle, epoch in [(False, 0), (False, 1), (False, 2), (True, 0), (True, 1)]:
            x[:], y[:] = x0 * (epoch + 1), y0 - epoch          # new values, same objects
            got = again.fit(x, y, batch_size=B, epochs=2, shuffle=shuffle, seed=epoch, verbose=0)
            want = fresh.fit(x.copy(), y.copy(), batch_size=B, epochs=2, shuffle=shuffle, seed=epoch, verbose=0)
            np.testing.assert_array_equal(got.batch_history["loss"], want.batch_history["loss"])
        for a, b in zip(again.get_weights(), fresh.get_weights()):
            np.testing.assert_array_equal(a, b)


