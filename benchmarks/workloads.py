"""The four benchmark workloads of issue 4: model shapes, data, and the batchfit model of each.

Every system (batchfit, the hand-written JAX floor, PyTorch, Keras) builds the same
multi-layer perceptron from one `Workload` and trains on the same NumPy data, made here
from a fixed seed. Only NumPy is imported at module level, so the PyTorch and Keras
workers never load JAX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Workload", "WORKLOADS", "SHUFFLE_OPTIONS", "FAST_SHUFFLE_OPTIONS", "make_data", "batchfit_model",
           "num_batches"]

# How the shuffled floor orders an epoch (see baselines.py): where the permutation is drawn
# (in the jit with jax.random.permutation or an argsort of random bits, or on the host with
# NumPy) times how it is applied (each batch gathered inside the scan, or the whole array
# permuted once and then scanned as contiguous rows); plus NumPy's x[perm] on the host.
SHUFFLE_OPTIONS = (
    "jax_permutation+gather_per_batch",
    "jax_permutation+permute_once",
    "argsort_bits+gather_per_batch",
    "argsort_bits+permute_once",
    "host_permutation+gather_per_batch",
    "host_permutation+permute_once",
    "host_numpy_take",
)
FAST_SHUFFLE_OPTIONS = ("host_permutation+permute_once", "host_permutation+gather_per_batch",
                        "argsort_bits+permute_once")


@dataclass(frozen=True)
class Workload:
    """One model + data set: Dense(h, relu) [-> Dropout] per hidden width, then Dense(outputs, act).

    num_samples / quick_samples: data set size in the full and in the --quick run.
    loss: a Keras loss name ("binary_crossentropy", "mse", "categorical_crossentropy").
    """

    name: str
    title: str
    num_features: int
    hidden: tuple
    outputs: int
    output_activation: str | None
    dropout: float
    loss: str
    batch_size: int
    num_samples: int
    quick_samples: int

    def samples(self, quick: bool) -> int:
        return self.quick_samples if quick else self.num_samples


WORKLOADS = {
    w.name: w for w in (
        Workload("seed1", "first article: 1000 x 10, Dense(16,relu)->Dense(1,sigmoid), BCE, Adam, batch 32",
                 10, (16,), 1, "sigmoid", 0.0, "binary_crossentropy", 32, 1000, 1000),
        Workload("seed2", "second article: 100000 x 10, Dense(128,relu)->Dense(1), MSE, Adam, batch 32",
                 10, (128,), 1, None, 0.0, "mse", 32, 100_000, 20_000),
        Workload("mlp", "MLP classifier 64->256->256->10, dropout 0.2, softmax CE, Adam, batch 128",
                 64, (256, 256), 10, "softmax", 0.2, "categorical_crossentropy", 128, 20_000, 5_000),
        Workload("heavy", "compute-heavy MLP 512->2048->2048->10, softmax CE, Adam, batch 256",
                 512, (2048, 2048), 10, "softmax", 0.0, "categorical_crossentropy", 256, 1_024, 512),
    )
}


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def make_data(w: Workload, quick: bool = False):
    """(x [n, features] float32, y [n, outputs] float32) for `w`, the same in every process."""
    n = w.samples(quick)
    rng = np.random.default_rng(0)
    x = rng.random((n, w.num_features), dtype=np.float32)
    if w.loss == "binary_crossentropy":
        y = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    elif w.loss == "categorical_crossentropy":
        y = np.eye(w.outputs, dtype=np.float32)[rng.integers(0, w.outputs, size=n)]
    else:
        y = rng.random((n, w.outputs), dtype=np.float32)
    return x, y


def batchfit_model(w: Workload, seed: int = 0, steps_per_execution="auto"):
    """The compiled `bf.Sequential` of `w` with Keras's Adam (lr 1e-3, eps 1e-7)."""
    import batchfit as bf

    layers = []
    for i, units in enumerate(w.hidden):
        extra = {"input_shape": (w.num_features,)} if i == 0 else {}
        layers.append(bf.layers.Dense(units, activation="relu", **extra))
        if w.dropout:
            layers.append(bf.layers.Dropout(w.dropout))
    layers.append(bf.layers.Dense(w.outputs, activation=w.output_activation))
    model = bf.Sequential(layers, seed=seed)
    model.compile(optimizer=bf.optimizers.Adam(learning_rate=1e-3), loss=w.loss,
                  steps_per_execution=steps_per_execution)
    return model
