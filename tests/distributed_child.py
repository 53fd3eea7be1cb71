"""Training processes for tests/test_distribution.py (JAX's device count is fixed at its import).

    python tests/distributed_child.py devices OUT.json
    python tests/distributed_child.py hosts PROCESS_ID PORT OUT.json      (two of them, ids 0 and 1)

`devices` runs the same training on one device and with DataParallel over 4 CPU devices (forced
with XLA_FLAGS) in this one process and writes both runs' numbers, and what the compiled programs
and the state's arrays show of the split, to OUT.json. `hosts` is one of two processes joined by
bf.distribution.initialize (gloo collectives) that fit their own shares of the data together.
"""

import json
import os
import re
import sys

if __name__ == "__main__":      # a process of its own (the tests import its helpers): 4 CPU devices
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("BATCHFIT_COMPILATION_CACHE", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import batchfit as bf  # noqa: E402

HIDDEN = 8
FEATURES = 5


def data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2)) + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    return x, y


def make_model(batch_norm=False):
    """Dense -> Dropout (-> BatchNormalization) -> Dense: per-sample randomness and batch statistics."""
    layers = [bf.layers.Dense(HIDDEN, activation="relu", input_shape=(5,)), bf.layers.Dropout(0.25)]
    layers += [bf.layers.BatchNormalization()] if batch_norm else []
    model = bf.Sequential(layers + [bf.layers.Dense(2)], seed=0)
    model.compile(optimizer=bf.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=["mae"])
    return model


class ProgramSpy:
    """Wraps a model's fit_chunk: keeps the abstract arguments of each call, to compile them again."""

    def __init__(self, model, x):
        model._executables(x)
        self.model, self.original, self.calls = model, model._exe.fit_chunk, []
        model._exe = model._exe._replace(fit_chunk=self)

    def __call__(self, *args, **kwargs):
        def spec(a):
            if not isinstance(a, jax.Array):
                return a
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding if a.committed else None)
        self.calls.append((jax.tree.map(spec, args), kwargs))
        return self.original(*args, **kwargs)

    def dot_rows(self) -> list:
        """The row counts of the first Dense's [rows, HIDDEN] products in each compiled chunk program."""
        found, programs = [], {}
        for args, kwargs in self.calls:        # one program per chunk shape: compile each once
            key = tuple(sorted(kwargs.items()))
            if key in programs:
                found.append(programs[key])
                continue
            text = self.original.lower(*args, **kwargs).compile().as_text()
            rows = {int(m) for m in re.findall(rf"f32\[(\d+),{HIDDEN}\]\S* dot\(", text)} - {FEATURES}
            found.append(programs.setdefault(key, sorted(rows)))   # FEATURES: the kernel's gradient
        return found


def run_arrays(batch_size, batch_norm=False):
    """fit (shuffled, validation data), then evaluate, predict and the *_on_batch calls."""
    x, y = data()
    vx, vy = data(13, seed=1)
    model = make_model(batch_norm)
    spy = ProgramSpy(model, x)
    history = model.fit(x, y, batch_size=batch_size, epochs=3, shuffle=True, seed=2, verbose=0,
                        validation_data=(vx, vy))
    state = jax.tree.leaves(model._slot.leaves)
    out = {"history": history.history, "batch_losses": history.batch_history["loss"],
           "weights": [w.tolist() for w in model.get_weights()],
           "evaluate": model.evaluate(vx, vy, batch_size=6, verbose=0),
           "predict": model.predict(vx, batch_size=6, verbose=0).tolist(),
           "train_on_batch": float(model.train_on_batch(x[:10], y[:10])[0]),
           "test_on_batch": float(model.test_on_batch(vx[:7], vy[:7])[0]),
           "predict_on_batch": np.asarray(model.predict_on_batch(vx[:7])).tolist(),
           "split_train_on_batch": float(model.train_on_batch(x[:12], y[:12])[0]),      # 12 = 3 rows x 4
           "split_test_on_batch": float(model.test_on_batch(vx[:8], vy[:8])[0]),
           "split_predict_on_batch": np.asarray(model.predict_on_batch(vx[:8])).tolist(),
           "on_batch_rows": on_batch_rows(model, x[:12], y[:12]),
           "dot_rows": spy.dot_rows(),
           "state_devices": sorted({len(a.sharding.device_set) for a in state}),
           "state_replicated": all(a.sharding.is_fully_replicated for a in state)}
    out["after_weights"] = [w.tolist() for w in model.get_weights()]
    return out


def on_batch_rows(model, x, y) -> list:
    """The row counts of the first Dense's products in train_on_batch's program for a batch of 12, and for 10."""
    found = []
    for n in (12, 10):
        batch = model._batch(x[:n], y[:n])
        text = model._exe.train_batch.lower(model._slot.leaves, batch).compile().as_text()
        rows = {int(m) for m in re.findall(rf"f32\[(\d+),{HIDDEN}\]\S* dot\(", text)}
        found.append(sorted(rows - {FEATURES, 2}))     # not the kernels' gradients (of 5 inputs, of 2 outputs)
    return found


def run_pipeline():
    """fit on a bf.data pipeline that streams (a filter), each chunk put on the devices by the stream's worker
    (as off the CPU): batches of 8, 8 and 7, validation on a list of batches. chunk_devices: how many devices
    hold each chunk fit_chunk is given (0: not committed to any, on the default device)."""
    from batchfit.data import stream
    x, y = data(23)
    vx, vy = data(9, seed=1)
    dataset = bf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    model, ahead = make_model(), stream.put_ahead
    spy = ProgramSpy(model, x)
    stream.put_ahead = lambda: True
    try:
        history = model.fit(dataset, epochs=2, verbose=0, validation_data=[(vx[:5], vy[:5]), (vx[5:], vy[5:])])
    finally:
        stream.put_ahead = ahead
    chunks = [leaf.sharding for args, _ in spy.calls for leaf in jax.tree.leaves(args[3])]
    return {"history": history.history, "batch_losses": history.batch_history["loss"],
            "weights": [w.tolist() for w in model.get_weights()],
            "chunk_devices": sorted({0 if sharding is None else len(sharding.device_set) for sharding in chunks}),
            "chunk_replicated": all(sharding is not None and sharding.is_fully_replicated for sharding in chunks)}


def run_stream():
    """fit on a list of batches (the streaming source): sizes 6, 6, 6, 5."""
    x, y = data(23)
    batches = [(x[i:i + 6], y[i:i + 6]) for i in range(0, 23, 6)]
    model = make_model()
    history = model.fit(batches, epochs=2, verbose=0)
    return {"history": history.history, "batch_losses": history.batch_history["loss"],
            "weights": [w.tolist() for w in model.get_weights()]}


def run_resume():
    """Gradient accumulation, weights set from outside, and a position put back: the state placed again."""
    x, y = data(30)
    model, losses = make_model(), []
    losses.append(model.fit(x, y, batch_size=7, epochs=1, accumulate_steps=2, seed=1, verbose=0))
    weights = model.get_weights()
    model.set_weights([weights[0] * 0.5] + weights[1:])
    position = model.get_position()
    losses.append(model.fit(x, y, batch_size=5, epochs=2, seed=3, verbose=0))
    model.set_position(position)
    losses.append(model.fit(x, y, batch_size=5, epochs=2, seed=3, verbose=0))
    return {"batch_losses": [h.batch_history["loss"] for h in losses],
            "weights": [w.tolist() for w in model.get_weights()]}


def scenarios():
    return {"batch7": run_arrays(7), "batch8_bn": run_arrays(8, batch_norm=True), "stream": run_stream(),
            "pipeline": run_pipeline(), "resume": run_resume()}


def devices(out_path):
    assert jax.device_count() == 4, jax.devices()
    result = {"single": scenarios()}
    bf.distribution.set_distribution(bf.distribution.DataParallel())
    result["parallel"] = scenarios()
    bf.distribution.set_distribution(None)
    with open(out_path, "w") as f:
        json.dump(result, f)


HOSTS_FIT = dict(batch_size=4, epochs=2, shuffle=False, verbose=0)     # per process: a global batch of 8


def host_share(process, num_processes=2):
    """Process `process`'s own samples: 22 training rows (5 batches of 4, a last one of 2), 6 validation rows."""
    x, y = data(44)
    vx, vy = data(12, seed=1)
    return x[process::num_processes], y[process::num_processes], vx[process::num_processes], vy[process::num_processes]


def as_one_process(shares, batch_size):
    """The rows one process must read to see the global batches of several: batch i of every share, in turn."""
    return np.concatenate([share[i:i + batch_size] for i in range(0, len(shares[0]), batch_size) for share in shares])


def host_batches(x, y, batch_size):
    """A streaming pipeline (a filter) of this process's rows in batches of `batch_size`."""
    return bf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(batch_size)


def hosts(process, port, out_path):
    """One of two processes: bf.distribution.initialize, DataParallel over both, then on this process's share:
    fit on arrays, evaluate, predict (arrays and a stream), the *_on_batch calls; a fresh model fit on a
    stream with a stream for validation; and the errors of unequal shares (arrays and streams)."""
    process = int(process)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    bf.distribution.initialize(f"127.0.0.1:{port}", 2, process)
    bf.distribution.set_distribution(bf.distribution.DataParallel())
    x, y, vx, vy = host_share(process)
    model, size = make_model(), HOSTS_FIT["batch_size"]
    history = model.fit(x, y, validation_data=(vx, vy), **HOSTS_FIT)
    out = {"devices": bf.distribution.list_devices(), "history": history.history,
           "batch_losses": history.batch_history["loss"], "weights": [w.tolist() for w in model.get_weights()],
           "evaluate": model.evaluate(vx, vy, batch_size=size, verbose=0),
           "predict": model.predict(vx, batch_size=size, verbose=0).tolist(),
           "predict_stream": model.predict([(vx[i:i + size],) for i in range(0, len(vx), size)], verbose=0).tolist(),
           "train_on_batch": float(model.train_on_batch(x[:4], y[:4])[0]),
           "test_on_batch": float(model.test_on_batch(vx[:3], vy[:3])[0]),
           "predict_on_batch": np.asarray(model.predict_on_batch(vx[:5])).tolist(),
           "after_weights": [w.tolist() for w in model.get_weights()]}
    streamed = make_model()
    history = streamed.fit([(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)],
                           validation_data=host_batches(vx, vy, size),
                           **{**HOSTS_FIT, "batch_size": None})
    out.update(stream_history=history.history, stream_batch_losses=history.batch_history["loss"],
               stream_weights=[w.tolist() for w in streamed.get_weights()])
    try:                                         # process 1 one row short: both processes refuse
        model.fit(x[:len(x) - process], y[:len(y) - process], **HOSTS_FIT)
    except ValueError as e:
        out["unequal_shares"] = str(e)
    try:                                         # process 1 one batch short (of 6): both processes refuse
        streamed.fit(host_batches(x[:len(x) - 2 * process], y[:len(y) - 2 * process], size),
                     **{**HOSTS_FIT, "batch_size": None})
    except ValueError as e:
        out["unequal_streams"] = str(e)
    out.update(checkpoints(x, y, vx, os.path.join(os.path.dirname(out_path), "run")))
    with open(out_path, "w") as f:
        json.dump(out, f)


class EpochsRun(bf.callbacks.Callback):
    """The epochs a fit runs (a resumed fit skips those its backup has)."""

    def __init__(self):
        super().__init__()
        self.run = []

    def on_epoch_begin(self, epoch, logs=None):
        self.run.append(epoch)


def checkpoints(x, y, vx, folder) -> dict:
    """In both processes: one epoch with BackupAndRestore kept and two ModelCheckpoints (process 0 writes their
    files; both read them back), then a fresh model's two-epoch fit that resumes from the backup; model.save of
    the result from process 0, and bf.load_model of it in both processes."""
    from jax.experimental import multihost_utils
    backup = bf.callbacks.BackupAndRestore(os.path.join(folder, "backup"), delete_checkpoint=False)
    weights_file, model_file = os.path.join(folder, "last.weights.h5"), os.path.join(folder, "last.keras")
    savers = [bf.callbacks.ModelCheckpoint(weights_file, save_weights_only=True),
              bf.callbacks.ModelCheckpoint(model_file, save_freq=3)]       # batches 3 and 6 of the 6
    first = make_model()
    first.fit(x, y, callbacks=[backup, *savers], **{**HOSTS_FIT, "epochs": 1})
    multihost_utils.sync_global_devices("checkpointed")                     # process 0 wrote both files
    reread = make_model()
    reread.load_weights(weights_file)
    saved = {"trained_weights": [w.tolist() for w in first.get_weights()],
             "model_checkpoint_weights": [w.tolist() for w in reread.get_weights()],
             "model_checkpoint_keras": [w.tolist() for w in bf.load_model(model_file).get_weights()]}
    model, epochs = make_model(), EpochsRun()
    history = model.fit(x, y, callbacks=[bf.callbacks.BackupAndRestore(os.path.join(folder, "backup")), epochs],
                        **HOSTS_FIT)
    model.save(os.path.join(folder, "model.keras"))       # every process calls it; process 0 writes
    multihost_utils.sync_global_devices("saved")          # process 1 reads what process 0 has written
    loaded = bf.load_model(os.path.join(folder, "model.keras"))
    return {**saved, "resumed_history": history.history, "resumed_epochs_run": epochs.run,
            "resumed_weights": [w.tolist() for w in model.get_weights()], "loaded_weights": [w.tolist() for w in loaded.get_weights()],
            "loaded_predict": np.asarray(loaded.predict_on_batch(vx)).tolist()}


if __name__ == "__main__":
    {"devices": devices, "hosts": hosts}[sys.argv[1]](*sys.argv[2:])
