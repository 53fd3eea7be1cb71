"""The loss study: one model, one set of initial weights, trained by fit and by train_on_batch.

Four runs, each from the same weights (`set_weights`), give every number of the
reconciliation (all host arithmetic in float64):

* fit, as users call it (shuffle=True, seed): what fit reports, its raw batch losses, and
  `evaluate` on the training data after every epoch (the loss of the end-of-epoch weights);
* fit(shuffle=False): fit on the loop's batches, which separates the batch order from the
  rest (and checks that fit and a train_on_batch loop agree batch for batch);
* the train_on_batch loop a user writes (batches in order, never shuffled), with a
  `test_on_batch` of each batch just before its update: the same batch, the same
  pre-update weights, in inference mode (no dropout). test_on_batch changes no state;
* the same probed loop replaying fit's shuffled order: it retraces fit's trajectory (up to
  float rounding, checked batch for batch), so its probes are fit's batches in inference mode.

From fit's figure F, one factor changes at a time (`_nodes`, `_parts`):

  F -batch order-> P -rounding-> W -partial-last-batch weighting-> U   (np.mean of train_on_batch)
  F -rounding-> R -training-mode layers-> D -weights moving-> E' -rounding-> E   (evaluate)

P: fit(shuffle=False); W, U: the loop's n_b-weighted and plain mean; R, D: the replay's
losses in training and in inference mode; E', E: evaluate with the replay's and fit's
end-of-epoch weights. "Rounding" is the float32 difference between fit's fused scan and
single train_on_batch steps (same math, other rounding): about 1e-7 on short runs, larger
over thousands of steps, where Adam amplifies it as it would any reordering of float sums.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from batchfit.compare import speed
from batchfit.compare.presets import Config, build_model, describe_model, make_data

__all__ = ["TO_EVALUATE", "TO_LOOP", "FitRun", "LoopRun", "fit_order", "num_ticks", "reconcile", "run_fit", "run_loop",
           "run_study", "running_mean", "weighted_mean"]

Tick = Callable[[str], None]


class FitRun(NamedTuple):
    """One fit trajectory: loss [E] (fit's figure), batch_losses [E, nb], evaluate [E] or None."""

    loss: np.ndarray
    batch_losses: np.ndarray
    evaluate: np.ndarray | None


class LoopRun(NamedTuple):
    """One train_on_batch trajectory: raw losses [E, nb], probes [E, nb], evaluate [E]."""

    loss: np.ndarray
    inference: np.ndarray
    evaluate: np.ndarray


def weighted_mean(losses, sizes) -> float:
    """sum_b n_b L_b / sum_b n_b, in float64: how fit weighs its batches."""
    sizes = np.asarray(sizes, np.float64)
    return float(np.dot(np.asarray(losses, np.float64), sizes) / sizes.sum())


def running_mean(losses, sizes) -> np.ndarray:
    """fit's running figure after each batch of an epoch (what its progress bar shows)."""
    sizes = np.asarray(sizes, np.float64)
    return np.cumsum(np.asarray(losses, np.float64) * sizes) / np.cumsum(sizes)


def fit_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order fit(shuffle=True, seed=seed) uses in `epoch` [n].

    The engine's own function, so the replay feeds train_on_batch exactly fit's batches; the
    `replay_vs_fit_*` checks (and tests/test_compare.py) fail loudly if the two ever part.
    """
    from batchfit.data.arrays import epoch_order

    return np.asarray(epoch_order(n, seed, epoch))


def run_fit(config: Config, data, weights, shuffle: bool, evaluate: bool, tick: Tick) -> FitRun:
    """fit one epoch per call (identical to one call: same per-epoch order, optimizer state kept)."""
    x, y = data
    model = build_model(config, weights)
    loss, batches, evaluations = [], [], []
    for epoch in range(config.epochs):
        history = model.fit(x, y, batch_size=config.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                            shuffle=shuffle, seed=config.seed, verbose=0)
        loss.append(history.history["loss"][0])
        batches.append(history.batch_history["loss"][0])
        if evaluate:
            evaluations.append(float(model.evaluate(x, y, batch_size=config.batch_size, verbose=0)))
        tick(f"fit (shuffle={shuffle})")
    return FitRun(np.asarray(loss, np.float64), np.asarray(batches, np.float64),
                  np.asarray(evaluations, np.float64) if evaluate else None)


def run_loop(config: Config, data, weights, order: Callable[[int], np.ndarray | None],
             tick: Tick, label: str) -> LoopRun:
    """A user's train_on_batch loop, with a test_on_batch of each batch before its update."""
    x, y = data
    model = build_model(config, weights)
    losses, probes, evaluations = [], [], []
    for epoch in range(config.epochs):
        index = order(epoch)
        epoch_losses, epoch_probes = [], []
        for start in range(0, config.samples, config.batch_size):
            rows = slice(start, start + config.batch_size) if index is None else \
                index[start:start + config.batch_size]
            xb, yb = x[rows], y[rows]
            epoch_probes.append(model.test_on_batch(xb, yb))   # device scalars: read once per epoch
            epoch_losses.append(model.train_on_batch(xb, yb))
        losses.append([float(v) for v in epoch_losses])
        probes.append([float(v) for v in epoch_probes])
        evaluations.append(float(model.evaluate(x, y, batch_size=config.batch_size, verbose=0)))
        tick(label)
    return LoopRun(*(np.asarray(a, np.float64) for a in (losses, probes, evaluations)))


def _nodes(epoch, sizes, fit: FitRun, plain: FitRun, loop: LoopRun, replay: LoopRun) -> dict:
    """The variants of one epoch (module docstring), each a loss in float64."""
    return {"fit": fit.loss[epoch],                                            # F
            "fit_unshuffled": plain.loss[epoch],                               # P: the loop's order
            "loop_weighted_mean": weighted_mean(loop.loss[epoch], sizes),      # W: as single steps
            "loop_mean": float(np.mean(loop.loss[epoch])),                     # U: equal weights
            "replay_weighted_mean": weighted_mean(replay.loss[epoch], sizes),  # R: F as single steps
            "fit_inference": weighted_mean(replay.inference[epoch], sizes),    # D: inference mode
            "replay_evaluate": replay.evaluate[epoch],                         # E': end-of-epoch weights
            "evaluate": fit.evaluate[epoch]}                                   # E: fit's own model


def _parts(n: dict) -> dict:
    """Consecutive differences of the variants: each changes one factor."""
    return {"batch_order": n["fit_unshuffled"] - n["fit"],
            "loop_rounding": n["loop_weighted_mean"] - n["fit_unshuffled"],
            "partial_batch_weighting": n["loop_mean"] - n["loop_weighted_mean"],
            "training_mode_layers": n["fit_inference"] - n["replay_weighted_mean"],
            "weights_moving": n["replay_evaluate"] - n["fit_inference"],
            "replay_rounding": (n["replay_weighted_mean"] - n["fit"]) + (n["evaluate"] - n["replay_evaluate"])}


def _epoch_row(epoch, sizes, fit: FitRun, plain: FitRun, loop: LoopRun, replay: LoopRun) -> dict:
    nodes = _nodes(epoch, sizes, fit, plain, loop, replay)
    raw = loop.loss[epoch]
    return {"epoch": epoch, **{k: float(v) for k, v in nodes.items()},
            "loop_min": float(raw.min()), "loop_max": float(raw.max()), "loop_std": float(raw.std()),
            "loop_evaluate": float(loop.evaluate[epoch]),
            "fit_batch_weighted_mean": weighted_mean(fit.batch_losses[epoch], sizes),
            "parts": {k: float(v) for k, v in _parts(nodes).items()},
            "gaps": {"loop_mean_minus_fit": float(nodes["loop_mean"] - nodes["fit"]),
                     "evaluate_minus_fit": float(nodes["evaluate"] - nodes["fit"])}}


TO_LOOP = ("batch_order", "loop_rounding", "partial_batch_weighting")
TO_EVALUATE = ("training_mode_layers", "weights_moving", "replay_rounding")


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _checks(rows, fit: FitRun, plain: FitRun, loop: LoopRun, replay: LoopRun) -> dict:
    residual = max(max(abs(r["gaps"]["loop_mean_minus_fit"] - sum(r["parts"][k] for k in TO_LOOP)),
                       abs(r["gaps"]["evaluate_minus_fit"] - sum(r["parts"][k] for k in TO_EVALUATE)))
                   for r in rows)
    return {"fit_loss_vs_weighted_batch_mean": max(abs(r["fit"] - r["fit_batch_weighted_mean"]) for r in rows),
            "replay_vs_fit_batch_losses": _max_abs(replay.loss, fit.batch_losses),
            "replay_vs_fit_evaluate": _max_abs(replay.evaluate, fit.evaluate),
            "unshuffled_fit_vs_loop_batch_losses": _max_abs(plain.batch_losses, loop.loss),
            "unshuffled_fit_vs_loop_epoch_loss": max(abs(p - r["loop_weighted_mean"])
                                                     for p, r in zip(plain.loss, rows)),
            "decomposition_residual": residual}


def reconcile(config: Config, fit: FitRun, plain: FitRun, loop: LoopRun, replay: LoopRun):
    """Per-epoch rows (nodes, parts, gaps), the consistency checks, and the per-batch series."""
    sizes = config.batch_sizes
    rows = [_epoch_row(e, sizes, fit, plain, loop, replay) for e in range(config.epochs)]
    batches = {"batch_size": sizes,
               "fit_loss": fit.batch_losses.tolist(),
               "fit_running_mean": [running_mean(b, sizes).tolist() for b in fit.batch_losses],
               "fit_inference_loss": replay.inference.tolist(),
               "fit_unshuffled_loss": plain.batch_losses.tolist(),
               "loop_loss": loop.loss.tolist(),
               "loop_inference_loss": loop.inference.tolist()}
    return rows, _checks(rows, fit, plain, loop, replay), batches


def loss_study(config: Config, data, weights, tick: Tick):
    """The four runs of the module docstring; runs that would repeat another are shared."""
    fit = run_fit(config, data, weights, config.shuffle, True, tick)
    plain = run_fit(config, data, weights, False, False, tick) if config.shuffle else fit
    loop = run_loop(config, data, weights, lambda e: None, tick, "train_on_batch loop")
    replay = loop
    if config.shuffle:
        replay = run_loop(config, data, weights, lambda e: fit_order(config.samples, config.seed, e),
                          tick, "train_on_batch replay of fit's order")
    return reconcile(config, fit, plain, loop, replay)


def num_ticks(config: Config) -> int:
    """How many times `run_study` calls `tick` (one per epoch of every run)."""
    loss_runs = 4 if config.shuffle else 2
    return loss_runs * config.epochs + speed.num_ticks(config)


def environment() -> dict:
    import jax

    import batchfit

    device = jax.devices()[0]
    return {"batchfit": batchfit.__version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": _cpu_count(),
            "device": _device_name(device)}


def _device_name(device) -> str:
    kind = str(getattr(device, "device_kind", "") or "")
    return device.platform if kind.lower() in ("", device.platform) else f"{device.platform} ({kind})"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_study(config: Config, tick: Tick = lambda label: None) -> dict:
    """Run the loss study and the speed study; every number, as the dict written to results.json."""
    import jax

    # Off for the study: the first call then really compiles, and no cache file is written.
    cache_was_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    start = time.perf_counter()
    try:
        data = make_data(config)
        weights = build_model(config).get_weights()
        rows, checks, batches = loss_study(config, data, weights, tick)
        timings = speed.speed_study(config, data, weights, tick)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was_on)
    return {"schema": "batchfit.compare/1", "config": _config_dict(config),
            "environment": environment(), "epochs": rows, "checks": checks, "speed": timings,
            "batches": batches, "runtime_s": time.perf_counter() - start}


def _config_dict(config: Config) -> dict:
    from dataclasses import asdict

    return {**asdict(config), "features": config.spec.features, "model": describe_model(config),
            "loss": config.spec.loss,
            "data": config.spec.description if config.labels == "random" else
            f"{config.spec.description.split(':')[0]}: learnable labels (linear rule + noise)",
            "num_batches": len(config.batch_sizes), "last_batch_size": config.batch_sizes[-1]}
