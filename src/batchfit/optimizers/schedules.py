"""Keras 3's learning-rate schedules: the learning rate as a function of the number of updates done.

A schedule is any batchfit optimizer's ``learning_rate=``. As in Keras, update ``n`` (counted from 0,
Keras's ``optimizer.iterations``) uses ``schedule(n)``, also inside fit's compiled loop and with
``fit(..., accumulate_steps=k)``, where ``n`` counts updates, not batches. The formulas are Keras's,
computed in float32; the step may be a Python int or an int32 array traced inside ``jit``.

>>> schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> [round(float(schedule(step)), 6) for step in (0, 10, 15)]   # 0.1 * 0.5 ** (step / 10)
[0.1, 0.05, 0.035355]
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np

from batchfit._keras_names import missing as _missing

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
           "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize"]

_SUBCLASSES: dict[str, type] = {}     # schedules defined outside this module, by class name


def _float(value):
    return jnp.asarray(value, jnp.float32)


def _check(owner: str, name: str, value, example, expected="") -> None:
    """TypeError unless `value` is a real number; ValueError unless finite and `expected` (">= 0", "> 0")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: `{name}` must be a number; got {type(value).__name__} {value!r}. "
                        f"Pass e.g. {name}={example}.")
    ok = {"> 0": value > 0, ">= 0": value >= 0}.get(expected, True)
    if not (math.isfinite(value) and ok):
        raise ValueError(f"{owner}: `{name}` must be {expected + ' and ' if expected else ''}finite; "
                         f"got {value!r}. Pass e.g. {name}={example}.")


def _check_flag(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: `{name}` must be True or False; got {type(value).__name__} {value!r}.")


class LearningRateSchedule:
    """Base class of schedules, as ``keras.optimizers.schedules.LearningRateSchedule``.

    Subclass it with ``__call__(self, step) -> learning rate`` (jax.numpy on a scalar step, which
    is a traced int32 array during training) and ``get_config()`` returning the constructor's
    arguments, so that models using it save and load. Subclasses register themselves by class
    name: a saved model finds them once their module is imported.
    """

    _config_names: tuple = ()       # the built-in schedules' constructor arguments

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__ != __name__:
            _SUBCLASSES[cls.__name__] = cls

    def __call__(self, step):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  f"`__call__(self, step)`.")

    def get_config(self) -> dict:
        if not self._config_names:
            raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                      f"`get_config()` in order to be serializable.")
        return {name: getattr(self, name) for name in self._config_names}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) if self._config_names else ""
        return f"{type(self).__name__}({args})"


class _Decay(LearningRateSchedule):
    """Shared checks of the schedules that start at `initial_learning_rate` and decay over `decay_steps`."""

    def _check_decay(self, initial_learning_rate, decay_steps, steps_name="decay_steps"):
        owner = type(self).__name__
        _check(owner, "initial_learning_rate", initial_learning_rate, 0.1)
        _check(owner, steps_name, decay_steps, 1000, "> 0")

    def _set_rate_decay(self, initial_learning_rate, decay_steps, decay_rate, staircase, name, example):
        """ExponentialDecay's and InverseTimeDecay's arguments, checked and kept."""
        owner = type(self).__name__
        self._check_decay(initial_learning_rate, decay_steps)
        _check(owner, "decay_rate", decay_rate, example)
        _check_flag(owner, "staircase", staircase)
        self.initial_learning_rate, self.decay_steps, self.decay_rate = initial_learning_rate, decay_steps, decay_rate
        self.staircase, self.name = staircase, name

    def _progress(self, step):
        """step / decay_steps, floored with `staircase`."""
        p = _float(step) / _float(self.decay_steps)
        return jnp.floor(p) if self.staircase else p


class ExponentialDecay(_Decay):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; the exponent floored with `staircase`.

    Args:
      initial_learning_rate: the rate at step 0. decay_steps: > 0. decay_rate: the factor per `decay_steps`.
      staircase: decay in whole steps of `decay_steps`. name: Keras's name argument, kept in the config.
    """

    _config_names = ("initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name")

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self._set_rate_decay(initial_learning_rate, decay_steps, decay_rate, staircase, name, example=0.96)

    def __call__(self, step):
        return _float(self.initial_learning_rate) * jnp.power(_float(self.decay_rate), self._progress(step))


class InverseTimeDecay(_Decay):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; the ratio floored with `staircase`.

    Args: as `ExponentialDecay`.
    """

    _config_names = ("initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name")

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        self._set_rate_decay(initial_learning_rate, decay_steps, decay_rate, staircase, name, example=0.5)

    def __call__(self, step):
        return _float(self.initial_learning_rate) / (1 + _float(self.decay_rate) * self._progress(step))


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` up to and including step ``boundaries[0]``, ``values[i]`` for steps in
    ``(boundaries[i-1], boundaries[i]]``, ``values[-1]`` after ``boundaries[-1]``.

    Args:
      boundaries: increasing steps, one fewer than `values` (cast to the step's dtype, as Keras does).
      values: the learning rates. name: Keras's name argument.
    """

    _config_names = ("boundaries", "values", "name")

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise TypeError(f"PiecewiseConstantDecay: `boundaries` and `values` must be lists; got "
                            f"{type(boundaries).__name__} and {type(values).__name__}. "
                            f"Pass e.g. boundaries=[100, 200], values=[1e-2, 1e-3, 1e-4].")
        if len(boundaries) != len(values) - 1 or not boundaries:
            raise ValueError(f"PiecewiseConstantDecay: `boundaries` must hold one element fewer than `values`, "
                             f"and at least one; got {len(boundaries)} boundaries {list(boundaries)} and "
                             f"{len(values)} values {list(values)}.")
        for what, items, example in (("boundaries", boundaries, 100), ("values", values, 1e-3)):
            for i, item in enumerate(items):
                _check("PiecewiseConstantDecay", f"{what}[{i}]", item, example)
        self.boundaries, self.values, self.name = boundaries, values, name

    def __call__(self, step):
        step = jnp.asarray(step)
        dtype = step.dtype if step.dtype != jnp.bool_ else jnp.int32
        bounds = [jnp.asarray(b).astype(dtype) for b in self.boundaries]
        values = [_float(v) for v in self.values]
        result = (step <= bounds[0]) * values[0] + (step > bounds[-1]) * values[-1]
        for low, high, value in zip(bounds[:-1], bounds[1:], values[1:-1]):
            result = result + ((step > low) & (step <= high)) * value
        return result.astype(jnp.float32)


class PolynomialDecay(_Decay):
    """``(initial - end) * (1 - step / decay_steps) ** power + end``, `step` capped at `decay_steps`;
    with `cycle`, `decay_steps` grows to the next multiple of itself past `step` instead.

    Args:
      initial_learning_rate, decay_steps: as `ExponentialDecay`. end_learning_rate: the final rate; 1e-4.
      power: 1.0 decays linearly. cycle: restart from a lower peak after each `decay_steps`. name: as Keras.
    """

    _config_names = ("initial_learning_rate", "decay_steps", "end_learning_rate", "power", "cycle", "name")

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0, cycle=False,
                 name="PolynomialDecay"):
        self._check_decay(initial_learning_rate, decay_steps)
        _check("PolynomialDecay", "end_learning_rate", end_learning_rate, 1e-4)
        _check("PolynomialDecay", "power", power, 1.0)
        _check_flag("PolynomialDecay", "cycle", cycle)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.end_learning_rate, self.power, self.cycle, self.name = end_learning_rate, power, cycle, name

    def __call__(self, step):
        step, decay_steps = _float(step), _float(self.decay_steps)
        if self.cycle:
            decay_steps = decay_steps * jnp.where(step == 0, 1.0, jnp.ceil(step / decay_steps))
        else:
            step = jnp.minimum(step, decay_steps)
        initial, end = _float(self.initial_learning_rate), _float(self.end_learning_rate)
        # Under jit XLA divides by multiplying with 1 / decay_steps, so that 1 - p can be -1.5e-8 at the
        # end, and Keras's power=0.5 turns NaN there; 1 - p >= 0 exactly, so clamping changes no other value.
        return (initial - end) * jnp.power(jnp.maximum(1 - step / decay_steps, 0.0), _float(self.power)) + end


def _cosine(step, decay_steps, alpha, peak):
    """Keras's cosine decay from `peak` to `alpha * peak` over `decay_steps` (float32 arrays)."""
    cosine_decayed = 0.5 * (1.0 + jnp.cos(_float(math.pi) * (step / decay_steps)))
    return peak * ((1 - alpha) * cosine_decayed + alpha)


class CosineDecay(_Decay):
    """Cosine decay from `initial_learning_rate` (or, after a linear warmup from it over `warmup_steps`,
    from `warmup_target`) to ``alpha`` times that over `decay_steps`, then constant.

    Args:
      initial_learning_rate, decay_steps: as `ExponentialDecay`. alpha: the final fraction; 0.0.
      warmup_target: the rate reached after the warmup; None: no warmup. warmup_steps: >= 0; 0.
      name: as Keras.
    """

    _config_names = ("initial_learning_rate", "decay_steps", "alpha", "name", "warmup_target", "warmup_steps")

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        self._check_decay(initial_learning_rate, decay_steps)
        _check("CosineDecay", "alpha", alpha, 0.0)
        if warmup_target is not None:
            _check("CosineDecay", "warmup_target", warmup_target, 1e-3)
        _check("CosineDecay", "warmup_steps", warmup_steps, 100, ">= 0")
        self.initial_learning_rate, self.decay_steps, self.alpha, self.name = (
            initial_learning_rate, decay_steps, alpha, name)
        self.warmup_target, self.warmup_steps = warmup_target, warmup_steps

    def __call__(self, step):
        initial, decay_steps, step = _float(self.initial_learning_rate), _float(self.decay_steps), _float(step)
        if self.warmup_target is None:
            return _cosine(jnp.minimum(step, decay_steps), decay_steps, self.alpha, initial)
        target, warmup_steps = _float(self.warmup_target), _float(self.warmup_steps)
        step = jnp.minimum(step, decay_steps + warmup_steps)
        warm = (target - initial) * (step / warmup_steps) + initial
        return jnp.where(step < warmup_steps, warm, _cosine(step - warmup_steps, decay_steps, self.alpha, target))


class CosineDecayRestarts(_Decay):
    """SGDR: cosine decays over `first_decay_steps`, then over periods `t_mul` times longer, each
    starting from `m_mul` times the previous peak.

    Args:
      initial_learning_rate: the first peak. first_decay_steps: > 0, the first period.
      t_mul: the period's growth; 2.0. m_mul: the peak's factor per restart; 1.0.
      alpha: the final fraction of each peak; 0.0. name: as Keras.
    """

    _config_names = ("initial_learning_rate", "first_decay_steps", "t_mul", "m_mul", "alpha", "name")

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0,
                 name="SGDRDecay"):
        self._check_decay(initial_learning_rate, first_decay_steps, "first_decay_steps")
        for arg, value, example in (("t_mul", t_mul, 2.0), ("m_mul", m_mul, 1.0), ("alpha", alpha, 0.0)):
            _check("CosineDecayRestarts", arg, value, example)
        self.initial_learning_rate, self.first_decay_steps = initial_learning_rate, first_decay_steps
        self.t_mul, self.m_mul, self.alpha, self.name = t_mul, m_mul, alpha, name

    def __call__(self, step):
        fraction = _float(step) / _float(self.first_decay_steps)
        t_mul = _float(self.t_mul)
        if np.float32(self.t_mul) == 1.0:      # equal periods
            i_restart = jnp.floor(fraction)
            fraction = fraction - i_restart
        else:                                  # periods first * t_mul ** i: which holds `step`, how far in
            i_restart = jnp.floor(jnp.log(1.0 - fraction * (1.0 - t_mul)) / jnp.log(t_mul))
            sum_r = (1.0 - jnp.power(t_mul, i_restart)) / (1.0 - t_mul)
            fraction = (fraction - sum_r) / jnp.power(t_mul, i_restart)
        # Keras scales the cosine part by m_mul ** i_restart, not the floor alpha.
        cosine_decayed = 0.5 * jnp.power(_float(self.m_mul), i_restart) * (1.0 + jnp.cos(_float(math.pi) * fraction))
        alpha = _float(self.alpha)
        return _float(self.initial_learning_rate) * ((1 - alpha) * cosine_decayed + alpha)


def serialize(learning_rate_schedule) -> dict:
    """A schedule as Keras writes it: {"module", "class_name", "config", "registered_name"}."""
    if not isinstance(learning_rate_schedule, LearningRateSchedule):
        raise TypeError(f"serialize() takes a LearningRateSchedule; got {type(learning_rate_schedule).__name__}. "
                        f"A plain function (e.g. an optax schedule) has no config.")
    cls = type(learning_rate_schedule)
    return {"module": cls.__module__, "class_name": cls.__name__,
            "config": learning_rate_schedule.get_config(), "registered_name": None}


def deserialize(config: dict, custom_objects: dict | None = None) -> LearningRateSchedule:
    """The schedule `serialize` (or Keras's) wrote; `custom_objects` {class name: class} come first."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise TypeError(f"deserialize() takes a dict with 'class_name' and 'config', as serialize() writes; "
                        f"got {type(config).__name__}.")
    name = config["class_name"]
    builtin = globals().get(name)
    if not (isinstance(builtin, type) and issubclass(builtin, LearningRateSchedule)):
        builtin = None
    cls = (custom_objects or {}).get(name) or builtin or _SUBCLASSES.get(name)
    if cls is None:
        raise ValueError(f"Unknown learning rate schedule '{name}'. Import the module that defines it (subclasses "
                         f"of LearningRateSchedule register themselves by class name), or pass "
                         f"custom_objects={{'{name}': {name}}}.")
    return cls.from_config(dict(config.get("config") or {}))


__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
