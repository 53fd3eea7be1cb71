"""compile()'s and fit()'s arguments, checked once, before anything is traced or trained."""

from __future__ import annotations

import copy
import difflib
from typing import Any, NamedTuple

import optax

from batchfit import losses as losses_lib
from batchfit import metrics as metrics_lib
from batchfit import mixed_precision
from batchfit import optimizers as optimizers_lib
from batchfit._outputs import per_output
from batchfit.errors import check_int

__all__ = ["Settings", "settings_from", "check_fit_arguments"]

_REDUCTIONS = ("sum_over_batch_size", "weighted_mean")

# Keras 3's compile() arguments that batchfit does not take, with what to do instead; a value
# that only asks for what batchfit does anyway is accepted.
_UNSUPPORTED = {
    "run_eagerly": (False, "every step runs compiled; debug with jax.disable_jit() around the call"),
    "jit_compile": ((True, "auto"), "every step is compiled with XLA; there is no other mode"),
    "auto_scale_loss": ((True, False), None),
}


class Settings(NamedTuple):
    """What compile() chose, checked; `names` is "loss" then each metric's name.

    `metrics` holds the `metrics=` first, then the `weighted_metrics=` (Keras's order of the logs);
    `weighted[i]` says whether metric i sees the sample and class weights.
    """

    loss: Any
    metrics: tuple
    weighted: tuple
    names: tuple
    optimizer: optax.GradientTransformation
    steps_per_execution: int | str
    weighted_mean: bool
    allow_nonfinite: bool
    arguments: dict             # compile()'s arguments as given (model.save writes them)


def _refuse_unknown(unused: dict) -> None:
    known = ("optimizer", "loss", "metrics", "weighted_metrics", "loss_weights", "steps_per_execution", "loss_reduction",
             "allow_nonfinite", *_UNSUPPORTED)
    for name, value in unused.items():
        if name not in _UNSUPPORTED:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise TypeError(f"compile() got an unexpected keyword argument `{name}`.{hint} "
                            f"Its arguments are: {', '.join(known)}.")
        accepted, fix = _UNSUPPORTED[name]
        if value is accepted or (isinstance(accepted, tuple) and value in accepted):
            continue
        raise ValueError(f"compile({name}={value!r}) is a Keras option that batchfit does not support"
                         + (f": {fix}." if fix else "."))


def settings_from(optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None, *,
                  steps_per_execution="auto", loss_reduction="sum_over_batch_size", allow_nonfinite=False,
                  output_names=None, **unused) -> Settings:
    """compile()'s arguments as Settings; TypeError / ValueError for anything it cannot train with.

    `output_names`: the model's outputs when it has several (a loss and metrics per output, _outputs.py)."""
    _refuse_unknown(unused)
    if unused.get("auto_scale_loss", True):      # Keras's compile(): mixed_float16 -> LossScaleOptimizer
        optimizer = mixed_precision.loss_scaled(optimizer)
    if loss is None:
        raise ValueError("compile() needs a `loss`, e.g. loss='mse' or loss=bf.losses.BinaryCrossentropy().")
    if loss_reduction not in _REDUCTIONS:
        raise ValueError(f"`loss_reduction` must be one of {_REDUCTIONS}; got {loss_reduction!r}.")
    if steps_per_execution != "auto":
        check_int("steps_per_execution", steps_per_execution, 1)
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"`allow_nonfinite` must be True or False; got {allow_nonfinite!r}.")
    if output_names and len(output_names) > 1:
        loss_obj, tracked, plain = per_output(loss, metrics, loss_weights, tuple(output_names))
        weighted = per_output(loss, weighted_metrics, loss_weights, tuple(output_names))[2]
    else:
        given = loss_weights
        loss, metrics, weighted_metrics, loss_weights = (
            _single(v, output_names, what) for v, what in ((loss, "loss"), (metrics, "metrics"),
                                                           (weighted_metrics, "metrics"), (loss_weights, "loss_weights")))
        if loss_weights not in (None, 1, 1.0):
            raise ValueError(f"compile(loss_weights={given!r}) on a model with one output: scale the loss "
                             f"itself (e.g. a bf.losses.Loss subclass) or the learning rate instead.")
        loss_obj, tracked = losses_lib.get(loss), ()
        plain, weighted = (tuple(metrics_lib.get(m, loss_obj) for m in _as_list(given))
                           for given in (metrics, weighted_metrics))
    metric_objs = (*tracked, *plain, *_weighted_names(weighted, [m.name for m in (*tracked, *plain)]))
    names = [m.name for m in metric_objs]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(f"Metric names must be unique and not 'loss'; got {names}.")
    arguments = dict(optimizer=optimizer, loss=loss, metrics=metrics, steps_per_execution=steps_per_execution,
                     loss_reduction=loss_reduction, allow_nonfinite=allow_nonfinite)
    for name, value in (("weighted_metrics", weighted_metrics), ("loss_weights", loss_weights)):
        if value is not None:
            arguments[name] = value
    flags = (True,) * len(tracked) + (False,) * len(plain) + (True,) * len(weighted)
    return Settings(loss_obj, metric_objs, flags, ("loss", *names), optimizers_lib.get(optimizer),
                    steps_per_execution, loss_reduction == "weighted_mean", allow_nonfinite, arguments)


def _as_list(metrics) -> list:
    return [] if metrics is None else list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]


def _weighted_names(weighted: tuple, taken: list) -> tuple:
    """The weighted metrics, one whose name a `metrics=` entry has renamed `weighted_{name}` (of an output:
    `{output}_weighted_{name}`), as Keras names the logs."""
    renamed = []
    for metric in weighted:
        if metric.name in taken:
            metric, output = copy.copy(metric), getattr(metric, "output", None)
            metric.name = (f"{output}_weighted_{metric.name[len(output) + 1:]}" if output
                           else f"weighted_{metric.name}")
        taken.append(metric.name)
        renamed.append(metric)
    return tuple(renamed)


def _single(value, output_names, what: str):
    """A setting for a one-output model given as a one-entry list or dict (as Keras accepts): its entry."""
    if isinstance(value, dict) and len(value) == 1 and (not output_names or set(value) == set(output_names)):
        return next(iter(value.values()))
    if isinstance(value, (list, tuple)) and len(value) == 1 and what != "metrics":
        return value[0]
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        return value[0]
    return value


def check_fit_arguments(epochs, initial_epoch, accumulate_steps, validation_split,
                        validation_batch_size) -> tuple[int, int, int]:
    """fit()'s counts as ints (epochs, initial_epoch, accumulate_steps); ValueError for bad ones."""
    epochs, initial_epoch = check_int("epochs", epochs, 0), check_int("initial_epoch", initial_epoch, 0)
    accumulate_steps = check_int("accumulate_steps", accumulate_steps, 1)
    if validation_batch_size is not None:
        check_int("validation_batch_size", validation_batch_size, 1)
    if epochs < initial_epoch:
        raise ValueError(f"`epochs` ({epochs}) must be >= `initial_epoch` ({initial_epoch}): "
                         f"epochs is the index of the last epoch + 1, as in Keras.")
    if isinstance(validation_split, bool) or not (isinstance(validation_split, (int, float))
                                                  and 0.0 <= validation_split < 1.0):
        raise ValueError(f"`validation_split` must be a float in [0, 1); got {validation_split!r}.")
    return epochs, initial_epoch, accumulate_steps
