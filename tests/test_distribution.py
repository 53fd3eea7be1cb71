"""bf.distribution: DataParallel over several devices (a subprocess with 4 CPU devices), its
checks, and the promise that without a distribution the compiled programs do not change."""

import inspect
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax import lax

import batchfit as bf
from batchfit.data import source
from batchfit.data.arrays import DeviceData
from batchfit.engine import compiled

sys.path.insert(0, os.path.dirname(__file__))
import distributed_child  # noqa: E402  (its helpers; it asks for 4 devices only when run as a script)

CHILD = os.path.join(os.path.dirname(__file__), "distributed_child.py")
U = 2.0 ** -24          # float32 unit roundoff


@pytest.fixture(autouse=True)
def _no_distribution():
    yield
    bf.distribution.set_distribution(None)


def test_devices_are_named_as_keras_names_them():
    names = bf.distribution.list_devices()
    assert names == [f"{d.platform}:{d.id}" for d in jax.devices()]
    assert bf.distribution.get_device_count() == len(names) == jax.device_count()
    assert bf.distribution.DataParallel(devices=names[:1]).devices == names[:1]


@pytest.mark.parametrize("devices, error, words", [
    ("cpu:0", TypeError, "must be a list of devices; got str"),
    (["gpu:7"], ValueError, "Unknown device 'gpu:7' in `devices`. Known: ['cpu:0'"),
    (["cpu:0", "cpu:0"], ValueError, "each once"),
    ([], ValueError, "at least one device"),
])
def test_data_parallel_refuses_devices_it_cannot_use(devices, error, words):
    with pytest.raises(error, match=None) as caught:
        bf.distribution.DataParallel(devices=devices)
    assert words in str(caught.value)


def test_set_distribution_takes_data_parallel_or_none_and_scope_restores():
    with pytest.raises(TypeError, match="takes a bf.distribution.DataParallel or None; got str"):
        bf.distribution.set_distribution("data_parallel")
    data_parallel = bf.distribution.DataParallel()
    assert bf.distribution.distribution() is None
    with data_parallel.scope():
        assert bf.distribution.distribution() is data_parallel
        assert data_parallel.mesh.axis_names == ("batch",) and data_parallel.mesh.size == jax.device_count()
    assert bf.distribution.distribution() is None


def test_a_keras_name_batchfit_lacks_says_so():
    with pytest.raises(AttributeError, match="ModelParallel"):
        bf.distribution.ModelParallel       # noqa: B018


def _lowered_chunks(model, x, y) -> list[str]:
    """The lowered text of the fit, evaluate and predict chunk programs (2 full batches of 4, a tail of 3)."""
    exe, leaves = model._exe, model._slot.leaves
    data, shape = DeviceData(x, y, None), dict(num_steps=2, tail=3, batch_size=4)
    start = np.int32(0)
    return [exe.fit_chunk.lower(leaves, exe.initial_totals, None, data, start, None, start, accumulate=1,
                                **shape).as_text(),
            exe.eval_chunk.lower(leaves, exe.initial_totals, data, start, None, **shape).as_text(),
            exe.predict_chunk.lower(leaves, x, start, **shape).as_text()]


def _model(x):
    model = bf.Sequential([bf.layers.Dense(3, activation="relu", input_shape=(2,)), bf.layers.Dense(1)], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    model._executables(x)
    return model


def test_without_a_distribution_the_programs_are_those_of_plain_slices(monkeypatch):
    """The chunk programs equal, text for text, the ones built from the slicing that knows no devices."""
    x, y = np.ones((11, 2), np.float32), np.ones((11, 1), np.float32)
    ours = _lowered_chunks(_model(x), x, y)
    monkeypatch.setattr(compiled, "_slice", lambda tree, start, size: jax.tree.map(
        lambda a: lax.dynamic_slice_in_dim(a, start, size), tree))
    plain = _lowered_chunks(_model(x), x, y)
    assert ours == plain
    assert not any("sharding_constraint" in text for text in ours)


def test_with_a_distribution_every_batch_carries_a_sharding_constraint():
    x, y = np.ones((11, 2), np.float32), np.ones((11, 1), np.float32)
    bf.distribution.set_distribution(bf.distribution.DataParallel())
    model = _model(x)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(model._slot.leaves))
    fit, evaluate, predict = _lowered_chunks(model, x, y)
    # fit and evaluate: x and y of the scanned batch and of the tail; predict: x of each (and maybe its outputs)
    assert [text.count("sharding_constraint") for text in (fit, evaluate)] == [4, 4]
    assert predict.count("sharding_constraint") >= 2


def test_initialize_reads_arguments_then_keras_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    bf.distribution.initialize()
    bf.distribution.initialize("127.0.0.1:99", 4, 3)
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1),
                     dict(coordinator_address="127.0.0.1:99", num_processes=4, process_id=3)]
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID"):
        monkeypatch.delenv(name)
    bf.distribution.initialize()                     # left to JAX's cluster detection (SLURM, MPI, ...)
    assert calls[-1] == dict(coordinator_address=None, num_processes=None, process_id=None)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\); got process_id=2 of "
                                         r"num_processes=2"):
        bf.distribution.initialize("127.0.0.1:99", 2, 2)
    assert len(calls) == 3


def _run_child(*args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BATCHFIT_COMPILATION_CACHE": "0"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _bound(steps: int, batch_size: int, momentum: float = 0.9) -> float:
    """How far two float32 runs that sum each batch in another order may drift apart, relative to
    the largest value: a sum of B terms reordered moves by at most 2 (B - 1) u of the sum of their
    magnitudes (u = 2^-24); a gradient that is that much off moves one SGD step by as much, and
    momentum adds up to 1 / (1 - momentum) of it over the later steps; the drift adds up over the
    steps (stable training: no step amplifies an earlier difference)."""
    return steps * 2 * (batch_size - 1) * U / (1 - momentum)


def _close(a, b, bound):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=0, atol=bound * max(np.max(np.abs(a)), 1.0))


def _same_training(want, got, bound, weights=("weights",)):
    """The History, every batch loss and the weights (each of `weights`) of two runs, within `bound`."""
    for name in want["history"]:
        _close(want["history"][name], got["history"][name], bound)
    _close(want["batch_losses"], got["batch_losses"], bound)
    for key in weights:
        for a, b in zip(want[key], got[key], strict=True):
            _close(a, b, bound)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices") / "out.json"
    _run_child("devices", str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("scenario, batch_size, steps", [("batch7", 7, 3 * 8), ("batch8_bn", 8, 3 * 7)])
def test_data_parallel_on_4_devices_equals_one_device(four_devices, scenario, batch_size, steps):
    """50 samples in batches of 7 (4 does not divide it; a last batch of 1) or of 8 with BatchNormalization
    (a last batch of 2), shuffled, with Dropout: History, every batch loss, the weights, evaluate, predict
    and the *_on_batch calls (on batches of 10 and 7, left whole, and of 12 and 8, split) equal the
    one-device run's within the bound."""
    single, parallel = four_devices["single"][scenario], four_devices["parallel"][scenario]
    bound = _bound(steps, batch_size) + _bound(1, 10) + _bound(1, 12)    # + the train_on_batch steps
    assert bound < 2e-4
    assert single["history"].keys() == parallel["history"].keys() == {"loss", "mae", "val_loss", "val_mae"}
    _same_training(single, parallel, bound, ("weights", "after_weights"))
    for key in ("evaluate", "predict", "train_on_batch", "test_on_batch", "predict_on_batch",
                "split_train_on_batch", "split_test_on_batch", "split_predict_on_batch"):
        _close(single[key], parallel[key], bound)


@pytest.mark.parametrize("scenario", ["batch7", "batch8_bn"])
def test_on_batch_calls_split_a_batch_the_device_count_divides(four_devices, scenario):
    """train_on_batch's program: a batch of 12 runs 3 rows per device (one device: 12); one of 10, which
    4 does not divide, stays whole (10 rows on every device)."""
    assert four_devices["single"][scenario]["on_batch_rows"] == [[12], [10]]
    assert four_devices["parallel"][scenario]["on_batch_rows"] == [[3], [10]]


@pytest.mark.parametrize("scenario, rows", [("batch7", [1, 2]), ("batch8_bn", [1, 2])])
def test_data_parallel_splits_each_batch_and_replicates_the_state(four_devices, scenario, rows):
    """The first Dense's product in each compiled fit program has ceil(B / 4) rows per device
    (7 -> 2, 8 -> 2; the tails 1 and 2 -> 1) where one device multiplies all B; the state is replicated."""
    single, parallel = four_devices["single"][scenario], four_devices["parallel"][scenario]
    batch_size = int(scenario[5])
    assert single["dot_rows"] and all(found == [50 % batch_size, batch_size] for found in single["dot_rows"])
    assert parallel["dot_rows"] and all(found == rows for found in parallel["dot_rows"])
    assert single["state_devices"] == [1] and parallel["state_devices"] == [4]
    assert parallel["state_replicated"]


def test_data_parallel_on_4_devices_trains_a_stream_as_one_device(four_devices):
    """A list of batches of 6, 6, 6 and 5 (the streaming source): the same History and weights."""
    single, parallel = four_devices["single"]["stream"], four_devices["parallel"]["stream"]
    bound = _bound(2 * 4, 6)
    _same_training(single, parallel, bound)


def test_data_parallel_on_4_devices_trains_a_pipeline_put_on_the_devices_ahead(four_devices):
    """A bf.data pipeline with a filter (streamed; batches of 8, 8, 7) whose chunks the stream's worker puts on
    the devices ahead of their call, as off the CPU: every chunk whole on the 4 devices (one device: left to
    the default device), and the same History, batch losses and weights."""
    single, parallel = four_devices["single"]["pipeline"], four_devices["parallel"]["pipeline"]
    assert single["chunk_devices"] == [0] and parallel["chunk_devices"] == [4] and parallel["chunk_replicated"]
    bound = _bound(2 * 3, 8)
    assert single["history"].keys() == {"loss", "mae", "val_loss", "val_mae"}
    _same_training(single, parallel, bound)


def test_data_parallel_on_4_devices_accumulates_and_resumes_as_one_device(four_devices):
    """accumulate_steps=2 (batches of 7 of 30), then set_weights, get_position, fit, set_position, fit."""
    single, parallel = four_devices["single"]["resume"], four_devices["parallel"]["resume"]
    bound = _bound(5 + 2 * 6 + 2 * 6, 7)
    for a, b in zip(single["batch_losses"], parallel["batch_losses"], strict=True):
        _close(a, b, bound)
    for a, b in zip(single["weights"], parallel["weights"], strict=True):
        _close(a, b, bound)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path) -> list[dict]:
    """Run distributed_child.py's `hosts` in two processes joined on a free port; their JSON results."""
    port, outs, children = _free_port(), [tmp_path / f"process{i}.json" for i in range(2)], []
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BATCHFIT_COMPILATION_CACHE": "0"}
    env.pop("XLA_FLAGS", None)
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    for i in range(2):
        with open(logs[i], "w") as log:
            children.append(subprocess.Popen([sys.executable, CHILD, "hosts", str(i), str(port), str(outs[i])],
                                             stdout=subprocess.DEVNULL, stderr=log, env=env))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(child.poll() is None for child in children):
        if any(child.poll() not in (None, 0) for child in children):
            break                         # the other one would wait for it in a collective until killed
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
    for child, log in zip(children, logs):
        assert child.returncode == 0, log.read_text()[-3000:]
    return [json.loads(out.read_text()) for out in outs]


def _one_process_reference(shares, batch_size) -> dict:
    """What one process computes on the global batches: fit, evaluate, predict of each share, and the
    *_on_batch calls on the rows of every process's batch, in the children's order."""
    x, y, vx, vy = (distributed_child.as_one_process([share[i] for share in shares], batch_size) for i in range(4))
    model = distributed_child.make_model()
    history = model.fit(x, y, validation_data=(vx, vy), **{**distributed_child.HOSTS_FIT, "batch_size": 2 * batch_size})
    out = {"history": history, "weights": model.get_weights(),
           "evaluate": model.evaluate(vx, vy, batch_size=2 * batch_size, verbose=0),
           "predict": [model.predict(share[2], verbose=0) for share in shares]}
    out["train_on_batch"] = model.train_on_batch(*(np.concatenate([s[i][:4] for s in shares]) for i in (0, 1)))[0]
    out["test_on_batch"] = model.test_on_batch(*(np.concatenate([s[i][:3] for s in shares]) for i in (2, 3)))[0]
    out["predict_on_batch"] = [model.predict_on_batch(share[2][:5]) for share in shares]
    out["after_weights"] = model.get_weights()
    return out


def _check_checkpoints(result, want, predicted, bound):
    """BackupAndRestore and model.save in both processes: a fit of 2 epochs resumed after the first (it runs
    only epoch 1) ends as the uninterrupted run; the model process 0 saved loads in both processes; the
    files two ModelCheckpoints (weights at the epoch's end, the .keras model every 3 batches) wrote in the
    first epoch hold its final weights in both processes."""
    assert result["resumed_epochs_run"] == [1]
    for name in ("loss", "mae"):
        _close(want["history"].history[name], result["resumed_history"][name], bound)
    for a, b in zip(want["weights"], result["resumed_weights"], strict=True):
        _close(a, b, bound)
    for a, b in zip(result["resumed_weights"], result["loaded_weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    _close(predicted, result["loaded_predict"], bound)
    for saved in ("model_checkpoint_weights", "model_checkpoint_keras"):    # ModelCheckpoint: process 0 wrote
        for a, b in zip(result["trained_weights"], result[saved], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=saved)


@pytest.mark.skipif("arrays.to_device" not in inspect.getsource(source.ArraySource.data),
                    reason="ArraySource.data must place its arrays with arrays.to_device (the source.py change)")
def test_two_processes_train_as_one_process_on_the_global_batches(tmp_path):
    """Two processes (4 CPU devices each, gloo collectives), each fitting its own 22 rows in batches of 4:
    every step trains on one global batch of 8 (the last of 4) and reports one global loss. One process
    reading batch i of both shares in turn, in batches of 8, gives the same History, losses and weights;
    so does a stream of each process's batches (a list, validation from a Dataset with a filter). predict
    (arrays or a stream) and predict_on_batch give each process the outputs of its own rows;
    train_on_batch and test_on_batch train and test on the rows of both processes' batches together.
    BackupAndRestore resumes from both processes; a model process 0 saves loads in both."""
    got = _two_processes(tmp_path)
    shares = [distributed_child.host_share(p) for p in range(2)]
    batch_size = distributed_child.HOSTS_FIT["batch_size"]
    want = _one_process_reference(shares, batch_size)
    bound = _bound(2 * 6 + 1, 2 * batch_size)       # + 1: the train_on_batch step
    for process, result in enumerate(got):
        assert len(result["devices"]) == 8
        for prefix in ("", "stream_"):
            for name in want["history"].history:
                _close(want["history"].history[name], result[prefix + "history"][name], bound)
            _close(want["history"].batch_history["loss"], result[prefix + "batch_losses"], bound)
            for a, b in zip(want["weights"], result[prefix + "weights"], strict=True):
                _close(a, b, bound)
        _close(want["evaluate"], result["evaluate"], bound)
        for key in ("predict", "predict_stream", "predict_on_batch"):
            _close(want[key.replace("_stream", "")][process], result[key], bound)
        _close(want["train_on_batch"], result["train_on_batch"], bound)
        _close(want["test_on_batch"], result["test_on_batch"], bound)
        for a, b in zip(want["after_weights"], result["after_weights"], strict=True):
            _close(a, b, bound)
        assert "all of the same shape; got shapes [(22, 5), (21, 5)] (one per process)" in result["unequal_shares"]
        _check_checkpoints(result, want, want["predict"][process], bound)
        streams = result["unequal_streams"]
        assert "got process 0: batches from 0: 5 of 4 rows and one of 2 (layout " in streams
        assert "process 1: batches from 0: 5 of 4 rows (layout " in streams
