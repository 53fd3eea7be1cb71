import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the whole run (the xdist workers and the subprocesses of the tests inherit
# the directory), in a folder of its own that the run removes: many tests compile the same programs,
# and a hit skips XLA. The user's ~/.cache is left alone.
if "BATCHFIT_CACHE_DIR" not in os.environ:
    os.environ["BATCHFIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="batchfit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BATCHFIT_CACHE_DIR"], True)
os.environ.setdefault("BATCHFIT_COMPILATION_CACHE", "1")

import random

import numpy as np
import pytest

import batchfit as bf
from batchfit import _random


@pytest.fixture(autouse=True)
def _keep_global_seeds():
    """bf.utils.set_random_seed changes process-wide state: put it back for the tests that follow."""
    state = (_random._sequence, random.getstate(), np.random.get_state())
    yield
    _random._sequence = state[0]
    random.setstate(state[1])
    np.random.set_state(state[2])


def linear_model(weights, bias=0.0, *, regularizer=None):
    """Dense(1) with known weights: y = x @ weights + bias."""
    weights = np.asarray(weights, np.float32).reshape(-1, 1)
    model = bf.Sequential([bf.layers.Dense(1, input_shape=(weights.shape[0],),
                                           kernel_regularizer=regularizer)], seed=0)
    model.set_weights([weights, np.array([bias], np.float32)])
    return model


def reference_sgd(x, y, w0, b0, lr, batch_size, epochs, weights=None, weighted_mean=False, l2=0.0, accumulate=1):
    """float64 NumPy: SGD on y = x @ w + b with MSE; returns batch losses per epoch and the final weights.

    With `accumulate=k`, one update per k batches (the epoch's last group may be shorter): the
    step of one batch made of all the group's samples, each batch's loss taken before it.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64).reshape(-1)
    w, b = np.asarray(w0, np.float64).reshape(-1).copy(), float(b0)
    sw = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    starts = list(range(0, len(x), batch_size))
    history = []
    for _ in range(epochs):
        losses = []
        for group in (starts[i:i + accumulate] for i in range(0, len(starts), accumulate)):
            for start in group:
                xb, yb, wb = x[start:start + batch_size], y[start:start + batch_size], sw[start:start + batch_size]
                denom = wb.sum() if weighted_mean else len(xb)
                losses.append(float(np.sum(wb * (xb @ w + b - yb) ** 2) / denom + l2 * np.sum(w**2)))
            rows = slice(group[0], group[-1] + batch_size)
            xg, yg, wg = x[rows], y[rows], sw[rows]
            g = 2 * wg * (xg @ w + b - yg) / (wg.sum() if weighted_mean else len(xg))
            w, b = w - lr * (xg.T @ g + 2 * l2 * w), b - lr * g.sum()
        history.append(losses)
    return history, w, b


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=10)).astype(np.float32)[:, None]
    return x, y
