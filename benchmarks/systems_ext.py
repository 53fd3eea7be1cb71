"""The optional reference systems (the `bench` extra): a PyTorch eager loop and Keras 3 on TensorFlow.

Each runs in its own worker process, so its thread pools and imports never touch the
JAX process. The models are the workloads' MLPs; the optimizer is each library's Adam
with lr 1e-3 and epsilon 1e-7 (PyTorch's adds epsilon after bias correction, as optax
does: the same cost, not the same numbers).
"""

from __future__ import annotations

import os

from systems import System
from workloads import Workload, make_data, num_batches

__all__ = ["torch_systems", "keras_systems"]

_TORCH_DEFAULT_THREADS = []          # torch.get_num_threads() before any system changed it


def torch_systems(w: Workload, quick: bool, wanted: dict) -> list[System]:
    """`torch_loop`: the textbook eager loop, a fresh torch.randperm order per pass.

    Also `torch_loop_1thread`: PyTorch's OpenMP pool degrades badly when another process
    holds a core (tiny ops, spinning barriers), and one thread is faster for small models.
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y = make_data(w, quick)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    layers, width = [], w.num_features
    for units in w.hidden:
        layers += [nn.Linear(width, units), nn.ReLU()] + ([nn.Dropout(w.dropout)] if w.dropout else [])
        width = units
    layers.append(nn.Linear(width, w.outputs))
    if w.output_activation == "sigmoid":
        layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers)
    loss_fn = {"binary_crossentropy": nn.BCELoss(), "mse": nn.MSELoss(),
               "categorical_crossentropy": nn.CrossEntropyLoss()}[w.loss]   # softmax folded into the loss
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    if not _TORCH_DEFAULT_THREADS:
        _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
    batch_size, default_threads = w.batch_size, _TORCH_DEFAULT_THREADS[0]

    def make_call(steps, threads):
        def call():
            torch.set_num_threads(threads)
            model.train()
            order = torch.randperm(len(xs))
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xs[idx]), ys[idx])
                loss.backward()
                optimizer.step()
        return call

    out = []
    for key, threads in (("torch_loop", default_threads), ("torch_loop_1thread", 1)):
        if key in wanted and (key == "torch_loop" or default_threads > 1):
            out.append(System(key, "loop", wanted[key], make_call(wanted[key], threads), True,
                              note=f"PyTorch {torch.__version__} eager loop, randperm order, {threads} thread(s)"))
    return out


def _keras_model(keras, w: Workload):
    layers = [keras.Input((w.num_features,))]
    for units in w.hidden:
        layers.append(keras.layers.Dense(units, activation="relu"))
        if w.dropout:
            layers.append(keras.layers.Dropout(w.dropout))
    layers.append(keras.layers.Dense(w.outputs, activation=w.output_activation))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=w.loss)
    return model


def keras_systems(w: Workload, quick: bool, wanted: dict) -> list[System]:
    """`keras_fit[...]` (per call and epochs=R) and `keras_tob`, Keras 3 defaults on TensorFlow."""
    import time

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_data(w, quick)
    steps = num_batches(len(x), w.batch_size)
    out = []
    for shuffle in (True, False):
        tag = "shuffle" if shuffle else "noshuffle"
        for name, multi in (("keras_fit", False), ("keras_fit_epochs", True)):
            key = f"{name}[{tag}]"
            if key not in wanted:
                continue
            model = _keras_model(keras, w)

            def fit(epochs, model=model, shuffle=shuffle):
                model.fit(x, y, batch_size=w.batch_size, epochs=epochs, verbose=0, shuffle=shuffle)

            def run(m, fit=fit, multi=multi):
                start = time.perf_counter()
                for _ in range(1 if multi else m):
                    fit(m if multi else 1)
                return time.perf_counter() - start
            note = "one model.fit(epochs=R), time / R" if multi else "model.fit(x, y, epochs=1) per call"
            out.append(System(key, "fit", steps, lambda fit=fit: fit(1), shuffle, run,
                              f"Keras {keras.__version__} ({keras.backend.backend()}): {note}"))
    if "keras_tob" in wanted:
        model, loop_n = _keras_model(keras, w), wanted["keras_tob"]

        def call():
            for i in range(loop_n):
                sl = slice(i * w.batch_size, (i + 1) * w.batch_size)
                model.train_on_batch(x[sl], y[sl])       # returns a NumPy float: always read
        out.append(System("keras_tob", "loop", loop_n, call, None,
                          note=f"Keras {keras.__version__} train_on_batch over NumPy batches (returns a float)"))
    return out
