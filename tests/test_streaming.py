"""Streaming: chunks assembled on a background thread give the array path's numbers, and fail cleanly."""

import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import numpy as np
import optax
import pytest

import batchfit as bf
from batchfit.data.source import as_source
from conftest import linear_model, reference_sgd

W0, B0, LR = [0.5, 0.1, -0.3], 0.2, 0.05


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("batchfit") and t.is_alive()]


def chunks_of(source, key=0, steps=3):
    return [tuple(piece.chunk) + (piece.batch_size,) for piece in source._pieces(key, steps)]


class Recorder(bf.callbacks.Callback):
    def __init__(self, limit=None):
        super().__init__()
        self.batches, self.limit = [], limit

    def max_steps_per_execution(self, num_batches):
        return self.limit

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, logs["loss"], logs["batch_loss"]))


@pytest.mark.parametrize("steps", [2, "auto"])        # 2: chunks [b0 b1], [b2 (2 samples)]: both partial
def test_callbacks_see_the_same_batches_and_running_means_as_with_arrays(regression_data, steps):
    x, y = regression_data                          # 10 samples in batches of 4, 4, 2
    runs = []
    for data in (dict(x=x, y=y, batch_size=4, shuffle=False), dict(x=[(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)])):
        model = linear_model(W0, B0)
        model.compile(optimizer=optax.sgd(LR), loss="mse", steps_per_execution=steps)
        recorder = Recorder(limit=None if steps == 2 else 1)
        history = model.fit(epochs=2, verbose=0, callbacks=[recorder], **data)
        runs.append((recorder.batches, history.history, history.batch_history, model.get_weights()))
    assert runs[0][:3] == runs[1][:3]              # identical indices, running means, raw losses, epoch logs
    expected, w, _ = reference_sgd(x, y, W0, B0, LR, 4, 2)
    assert [b for b, _, _ in runs[1][0]] == ([1, 2] * 2 if steps == 2 else [0, 1, 2] * 2)   # never past 2
    assert runs[1][2]["loss"][1] == pytest.approx(expected[1], rel=1e-5)
    assert runs[1][3][0].ravel() == pytest.approx(w, rel=1e-5)


def test_batches_of_changing_size_close_chunks_and_train_exactly():
    rng = np.random.default_rng(0)
    sizes = [4, 4, 4, 2, 4, 3, 3, 1]
    x = rng.normal(size=(sum(sizes), 3)).astype(np.float32)
    y = rng.normal(size=(sum(sizes), 1)).astype(np.float32)
    ends = np.cumsum(sizes)
    pieces = [(x[e - s:e], y[e - s:e]) for s, e in zip(sizes, ends)]
    source = as_source(pieces)
    # (first, last, start, num_steps, tail, batch_size): three 4s fill a chunk of 3; the 2 starts a chunk
    # that the next 4 closes as its tail; two 3s, then the final 1 as their tail
    assert chunks_of(source) == [(0, 2, 0, 3, 0, 4), (3, 4, 0, 1, 4, 2), (5, 7, 0, 2, 1, 3)]
    model, loop = linear_model(W0, B0), linear_model(W0, B0)
    for m in (model, loop):
        m.compile(optimizer=optax.sgd(LR), loss="mse", steps_per_execution=3)
    history = model.fit(pieces, epochs=1, verbose=0)
    losses = [float(loop.train_on_batch(xb, yb)) for xb, yb in pieces]
    np.testing.assert_allclose(history.batch_history["loss"][0], losses, rtol=1e-6)
    assert history.history["loss"][0] == pytest.approx(np.dot(losses, sizes) / sum(sizes), rel=1e-6)


def test_one_dispatch_per_chunk(regression_data):
    x, y = regression_data
    model = linear_model(W0, B0)
    model.compile(optimizer=optax.sgd(LR), loss="mse", steps_per_execution=2)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0)      # builds the executables
    real, calls = model._exe.fit_chunk, []
    model._exe = model._exe._replace(fit_chunk=lambda *a, **k: calls.append(k["num_steps"]) or real(*a, **k))
    model.fit(bf.data.Dataset.from_tensor_slices((x, y)).batch(3).map(lambda a, b: (a, b)), epochs=2, verbose=0)
    assert calls == [2, 1] * 2                    # 4 batches (3, 3, 3, 1) in chunks of 2: [3, 3], [3 | tail 1]


def test_a_batch_with_another_feature_shape_or_dtype_is_named():
    good, wide = (np.ones((4, 3), np.float32), np.ones((4, 1))), (np.ones((4, 5), np.float32), np.ones((4, 1)))
    model = linear_model(W0)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"Batch 2 of the input has `x` float32\[4, 5\], but batch 0 had "
                                         r"float32\[4, 3\]"):
        model.fit(iter([good, good, wide]), verbose=0)
    as_float64 = (np.ones((4, 3)), np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"Batch 1 .* `x` float64\[4, 3\], but batch 0 had float32\[4, 3\]"):
        model.fit(iter([good, as_float64]), verbose=0)
    with pytest.raises(ValueError, match=r"Batch 1 .* 1 NaN or infinite values in `y`"):
        model.fit(iter([good, (good[0], np.array([[0.0], [np.nan], [1.0], [2.0]]))]), verbose=0)
    assert not prefetch_threads()


def test_an_error_in_the_generator_reaches_the_caller_with_its_traceback():
    def batches():
        yield np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)
        yield np.ones((4, 3), np.float32), np.ones((4, 1), np.float32)
        raise OSError("disk gone")

    model = linear_model(W0)
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=1)
    with pytest.raises(OSError, match="disk gone") as info:
        model.fit(batches(), verbose=0)
    assert "batches" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert not prefetch_threads()


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((0, 3)), np.ones((0, 1)))).batch(2).map(
        lambda a, b: (a, b))), "dataset is empty"),
    (dict(x=iter([])), "input is empty"),
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.ones((4, 1)))).batch(2), batch_size=2),
     "`batch_size` must not be given"),
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.ones((4, 1)))).batch(2), y=np.ones(4)),
     "`y` must not be given"),
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.ones((4, 1)))).batch(2), validation_split=0.5),
     "validation_split` needs arrays"),
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.ones((4, 1)))).batch(2).repeat()),
     "infinite.*steps_per_epoch"),
    (dict(x=bf.data.Dataset.from_tensor_slices((np.ones((4, 3)), np.ones((4, 1))))), r"single samples.*\.batch"),
    (dict(x=iter([np.ones((4, 3))])), r"x only.*\(x, y\)"),
])
def test_bad_streams_are_refused_before_training(kwargs, pattern):
    model = linear_model(W0)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=pattern):
        model.fit(verbose=0, **kwargs)


def test_a_generator_is_consumed_once_as_in_keras():
    x = np.arange(6, dtype=np.float32).reshape(6, 1) / 6
    batches = lambda: ((x[i:i + 2], np.zeros((2, 1), np.float32)) for i in range(0, 6, 2))
    model = bf.Sequential([bf.layers.Dense(1, use_bias=False, input_shape=(1,))], seed=0)
    model.set_weights([np.ones((1, 1), np.float32)])          # y_pred = x, y = 0: loss = mean(x^2)
    model.compile(optimizer=optax.sgd(0.0), loss="mse")
    per_batch = [float(np.mean(x[i:i + 2] ** 2)) for i in range(0, 6, 2)]
    with pytest.warns(UserWarning, match="ran out of data at epoch 1"):
        history = model.fit(batches(), epochs=3, verbose=0)   # epoch 1 finds the generator empty
    assert history.batch_history["loss"] == [pytest.approx(per_batch)]
    history = model.fit(batches(), epochs=2, steps_per_epoch=1, verbose=0)   # keeps drawing: b0, then b1
    assert history.batch_history["loss"] == [pytest.approx(per_batch[:1]), pytest.approx(per_batch[1:2])]
    with pytest.warns(UserWarning, match="ran out of data after 1 of steps=2"):
        history = model.fit(list(batches()), epochs=3, steps_per_epoch=2, verbose=0)   # re-iterable: starts over
    assert history.batch_history["loss"] == [pytest.approx(per_batch[:2]), pytest.approx(per_batch[2:]),
                                             pytest.approx(per_batch[:2])]


def test_memmap_pages_are_released_while_streaming(tmp_path):
    pytest.importorskip("resource")
    rows = 64 * 1024                                    # 64k rows of 64 float32: 16 MiB on disk
    data = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(rows, 64))
    data[:] = 1.0
    data.flush()
    del data
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    source = as_source(x, np.zeros((rows, 1), np.float32), batch_size=1024, shuffle=True, seed=0)
    for _ in source._pieces(0, 4):
        pass
    resident = _resident_kib(x)
    assert resident is None or resident < 16 * 1024 / 2     # most of the 16 MiB was read and let go


def test_scattered_rows_of_a_memmap_are_read_from_its_file(tmp_path):
    from batchfit.data.arrays import read_rows
    data = np.memmap(tmp_path / "rows.bin", dtype=np.float64, mode="w+", shape=(1000, 3), offset=7)
    data[:] = np.arange(3000).reshape(1000, 3)
    data.flush()
    mapped = np.memmap(tmp_path / "rows.bin", dtype=np.float64, mode="r", shape=(1000, 3), offset=7)
    rows = np.array([999, 0, 500, -1])
    np.testing.assert_array_equal(read_rows(mapped, rows), np.arange(3000).reshape(1000, 3)[rows])
    np.testing.assert_array_equal(read_rows(mapped[600:], np.array([1, 0])),       # rows 601 and 600
                                  [[1803, 1804, 1805], [1800, 1801, 1802]])


def _resident_kib(memmap):
    """The resident KiB of `memmap`'s mapping, from /proc/self/smaps (None off Linux)."""
    try:
        smaps = open("/proc/self/smaps").read().split("\n")
    except OSError:
        return None
    start = memmap.ctypes.data
    for i, line in enumerate(smaps):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= start < high:
                return next(int(l.split()[1]) for l in smaps[i + 1:] if l.startswith("Rss:"))
    return None


CHILD = textwrap.dedent("""
    import threading, time, sys
    import numpy as np, batchfit as bf

    def endless():
        while True:
            time.sleep(0.002)
            yield np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)

    class Started(bf.callbacks.Callback):
        said = False

        def on_train_batch_end(self, batch, logs=None):     # a dispatch's last batch: 5 need not be one
            if batch >= 5 and not self.said:
                self.said = True
                print("streaming", flush=True)

    model = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0)
    model.compile(optimizer="sgd", loss="mse")
    try:
        model.fit(endless(), steps_per_epoch=10**9, verbose=0, callbacks=[Started()])
    except KeyboardInterrupt:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("batchfit") and t.is_alive()]
        print("interrupted", alive, flush=True)
        sys.exit(3)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                    reason="SIGINT is ignored here (a shell started the tests in the background) and in the child")
def test_ctrl_c_while_streaming_stops_at_once_and_leaves_no_thread():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "streaming"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        stopped = time.monotonic() - sent
        assert child.wait(timeout=20) == 3                # and the interpreter exits: nothing hangs
    finally:
        child.kill()
    assert line == "interrupted []", child.stderr.read()
    assert stopped < 1.0


def test_an_interrupted_fit_stops_drawing_from_a_slow_generator_within_one_batch():
    """Ctrl-C (here a KeyboardInterrupt raised by a callback) while the stream's worker is filling a
    chunk of 50 batches from a slow generator: once fit has returned, the generator is not drawn
    from more than one more time (not until the chunk is full)."""
    drawn = []

    def slow():
        while True:
            time.sleep(0.02)
            drawn.append(1)
            yield np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)

    class Interrupt(bf.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.drawn = len(drawn)
            raise KeyboardInterrupt
    model, interrupt = bf.Sequential([bf.layers.Dense(1, input_shape=(3,))], seed=0), Interrupt()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=50)
    with pytest.raises(KeyboardInterrupt):
        model.fit(slow(), steps_per_epoch=10**6, verbose=0, callbacks=[interrupt])
    time.sleep(0.3)                               # 15 more batches' time, were the worker still drawing
    assert len(drawn) <= interrupt.drawn + 2      # the one in progress, not the rest of the second chunk
    model.fit(slow(), steps_per_epoch=3, verbose=0)    # and the model still trains
