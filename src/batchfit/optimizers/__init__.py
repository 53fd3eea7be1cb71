"""Keras 3 optimizers (names, defaults, exact update formulas) as optax transformations.

Each class holds hyperparameters only; ``.to_optax()`` chains optax pieces that follow Keras 3:
clip the gradients, apply the optimizer's rule, decay the weights (``var -= var * wd * lr``).
Inside ``optax.inject_hyperparams`` the learning rate is a float32 array in the state (see
`get_learning_rate`, `set_learning_rate`); a schedule (`batchfit.optimizers.schedules`, Keras's, or
any callable ``step -> rate``) gives update ``n`` (counted from 0, Keras's ``iterations``) ``learning_rate(n)``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import optax

from batchfit._keras_adam import AdamState, scale_by_keras_adam
from batchfit.optimizers._pieces import (clip_by_global_norm, clip_by_norm, decoupled_weight_decay,
                                         scale_by_learning_rate)
from batchfit._keras_names import missing as _missing
from batchfit.optimizers import _stateless, schedules
from batchfit.registry import Registry

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Optimizer", "AdamState", "get",
           "get_learning_rate", "set_learning_rate", "schedule_step", "schedules"]

LearningRate = Union[float, Callable[[jax.Array], Any]]
OPTIMIZERS = Registry("optimizer")
_tree_map = jax.tree_util.tree_map


def _check_number(name: str, value, example, expected=">= 0", kind="a number") -> None:
    """TypeError unless `value` is a real number; ValueError unless finite and in `expected`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be {kind}; got {type(value).__name__} {value!r}. "
                        f"Pass e.g. {name}={example}.")
    above = value > 0 if expected == "> 0" else value >= 0
    below = {"[0, 1)": value < 1, "[0, 1]": value <= 1}.get(expected, True)
    if not (math.isfinite(value) and above and below):
        what = f"a float in {expected}" if expected.startswith("[") else f"{expected} and finite"
        raise ValueError(f"`{name}` must be {what}; got {value!r}. Pass e.g. {name}={example}.")


# Keras's optimizer config keys that batchfit's optimizers lack, with the values that mean "off".
_KERAS_OFF = {"use_ema": False, "ema_overwrite_frequency": None, "loss_scale_factor": None,
              "gradient_accumulation_steps": None}


def _without_keras_only(cls, config: dict) -> dict:
    """A Keras optimizer config without the keys that change nothing here; ValueError for one that would."""
    taken = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        if key in _KERAS_OFF and value != _KERAS_OFF[key]:
            hint = " Use fit(..., accumulate_steps=k) instead." if key == "gradient_accumulation_steps" else ""
            raise ValueError(f"{cls.__name__}.from_config: Keras's `{key}={value!r}` has no batchfit "
                             f"optimizer equivalent; remove it from the config.{hint}")
    return {k: v for k, v in config.items() if k in taken or k not in (*_KERAS_OFF, "name", "ema_momentum")}


class Optimizer(_stateless.KerasStateless):
    """Base class: Keras's common arguments and the shared clip/decay chain; Keras's `stateless_apply`.

    Args:
      learning_rate: a float >= 0, or a schedule of the number of updates done so far.
      weight_decay: if set (>= 0), ``var -= var * weight_decay * lr`` before each update.
      clipnorm: clip each gradient leaf to this L2 norm (> 0).
      clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]`` (> 0).
      global_clipnorm: clip all gradients together to this global L2 norm (> 0).
    """

    def __init__(self, learning_rate: LearningRate, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        if not callable(learning_rate):
            _check_number("learning_rate", learning_rate, 1e-3, kind="a float or a schedule (e.g. "
                          "bf.optimizers.schedules.ExponentialDecay(1e-3, 1000, 0.9), or a callable step -> rate)")
        if weight_decay is not None:
            _check_number("weight_decay", weight_decay, 0.004)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = {k: v for k, v in clips.items() if v is not None}
        if len(given) > 1:
            raise ValueError(f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be "
                             f"set; got {given}. Keep the one you want and drop the others.")
        for name, value in given.items():
            _check_number(name, value, 1.0, "> 0")
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def get_config(self) -> dict:
        """The constructor's arguments; a `schedules.LearningRateSchedule` as Keras writes it (a dict).

        >>> SGD(schedules.InverseTimeDecay(0.1, 10, 0.5)).get_config()["learning_rate"]["class_name"]
        'InverseTimeDecay'
        """
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self" and hasattr(self, n)]
        config = {name: getattr(self, name) for name in names}
        if isinstance(self.learning_rate, schedules.LearningRateSchedule):
            config["learning_rate"] = schedules.serialize(self.learning_rate)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        """The optimizer of `get_config()` (a schedule's dict, batchfit's or Keras's, becomes the schedule)."""
        config = _without_keras_only(cls, config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"], custom_objects)
        return cls(**config)

    def _rule(self, learning_rate) -> optax.GradientTransformation:  # lr: a float32 array
        raise NotImplementedError("Keras's `update_step` for all leaves, as optax pieces.")

    def _clip(self) -> optax.GradientTransformation:
        if self.clipnorm is not None:
            return optax.stateless_with_tree_map(lambda g, _: clip_by_norm(g, self.clipnorm))
        if self.global_clipnorm is not None:
            return optax.stateless(lambda g, _: clip_by_global_norm(g, self.global_clipnorm))
        if self.clipvalue is not None:
            return optax.clip(self.clipvalue)
        return optax.identity()

    def _chain(self, learning_rate) -> optax.GradientTransformation:
        decay = optax.identity() if self.weight_decay is None else decoupled_weight_decay(
            self.weight_decay, learning_rate, type(self).__name__)
        return optax.chain(self._clip(), self._rule(learning_rate), decay)

    def to_optax(self) -> optax.GradientTransformationExtraArgs:
        """The pure optax transformation performing this optimizer's Keras update.

        >>> tx = SGD(learning_rate=0.1).to_optax()
        >>> updates, state = tx.update({"w": jnp.array(2.0)}, tx.init({"w": jnp.array(1.0)}))
        >>> round(float(updates["w"]), 6), int(state.count)   # -0.1 * 2
        (-0.2, 1)
        """
        # A float becomes a state array: a Python number would be baked into the trace.
        lr = self.learning_rate if callable(self.learning_rate) else float(self.learning_rate)
        return optax.inject_hyperparams(self._chain, hyperparam_dtype=jnp.float32)(lr)


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, as ``keras.optimizers.SGD``.

    ``v = momentum * v - lr * g``; the update is ``v`` (or ``momentum * v - lr * g``
    with ``nesterov=True``); without momentum it is ``-lr * g``.

    Args:
      learning_rate: float or schedule; 0.01.
      momentum: float in [0, 1]; 0.0 keeps no velocity.
      nesterov: use Nesterov momentum.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_number("momentum", momentum, 0.9, "[0, 1]")
        self.momentum, self.nesterov = momentum, nesterov

    def _rule(self, learning_rate):
        # optax.sgd traces raw gradients and scales the trace by today's lr; Keras's velocity
        # sums lr-scaled gradients, so scaling first and tracing after is Keras exactly.
        trace = optax.trace(self.momentum, self.nesterov) if self.momentum else optax.identity()
        return optax.chain(scale_by_learning_rate(learning_rate), trace)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam exactly as ``keras.optimizers.Adam`` (epsilon added to sqrt(v), not sqrt(v_hat)).

    With ``t = count + 1``: ``m += (g - m) * (1 - beta_1)``; ``v += (g^2 - v) * (1 - beta_2)``;
    ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``; update ``-alpha * m / (sqrt(v) + eps)``.

    Args:
      learning_rate: float or schedule; 0.001.
      beta_1, beta_2: decay rates of the first and second moments, in [0, 1); 0.9, 0.999.
      epsilon: added to ``sqrt(v)``, >= 0; 1e-7.
      amsgrad: divide by the running maximum of ``v`` instead.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.

    >>> tx = Adam().to_optax()   # g = 1e-8: alpha = 1e-3 * sqrt(1e-3) / 0.1
    >>> u, _ = tx.update(jnp.array([1e-8]), tx.init(jnp.zeros(1)))
    >>> print(f"{float(u[0]):.4e}")   # optax.adam(1e-3) gives -5.0000e-04
    -3.1523e-06
    """

    def __init__(self, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_number("beta_1", beta_1, 0.9, "[0, 1)")
        _check_number("beta_2", beta_2, 0.999, "[0, 1)")
        _check_number("epsilon", epsilon, 1e-7)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def _rule(self, learning_rate):
        return optax.chain(
            scale_by_keras_adam(self.beta_1, self.beta_2, self.epsilon, self.amsgrad),
            scale_by_learning_rate(learning_rate))


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """Keras Adam with decoupled weight decay (``var -= var * weight_decay * lr`` first).

    Args:
      learning_rate: float or schedule; 0.001.
      weight_decay: float >= 0, required; 0.004.
      beta_1, beta_2, epsilon, amsgrad: as in `Adam`.
      clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, clipnorm=None, clipvalue=None, global_clipnorm=None):
        if weight_decay is None:
            raise ValueError("AdamW needs a float `weight_decay`; got None. Use e.g. "
                             "weight_decay=0.004, or `Adam` for no weight decay.")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm)


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """RMSprop exactly as ``keras.optimizers.RMSprop`` (epsilon inside the square root).

    ``v = rho * v + (1 - rho) * g^2``; ``increment = lr * g / sqrt(v + eps)``
    (centered: ``sqrt(v - a^2 + eps)`` with ``a = rho * a + (1 - rho) * g``);
    with momentum ``b = momentum * b + increment``; the update is ``-b`` (or ``-increment``).

    Args:
      learning_rate: float or schedule; 0.001.
      rho: decay of the mean square, in [0, 1); 0.9.
      momentum: plain (not Nesterov) momentum, >= 0; 0.0 keeps no buffer.
      epsilon: added to the mean square before the square root, >= 0; 1e-7.
      centered: divide by the estimated variance instead of the second moment.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_number("rho", rho, 0.9, "[0, 1)")
        _check_number("momentum", momentum, 0.9)
        _check_number("epsilon", epsilon, 1e-7)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def _rule(self, learning_rate):
        # optax.rmsprop's pieces with eps_in_sqrt=True are Keras's formula; the momentum
        # trace comes after the lr scaling, so it sums lr-scaled increments as Keras does.
        scale = optax.scale_by_stddev if self.centered else optax.scale_by_rms
        return optax.chain(
            scale(decay=self.rho, eps=self.epsilon, initial_scale=0.0, eps_in_sqrt=True),
            scale_by_learning_rate(learning_rate),
            optax.trace(decay=self.momentum) if self.momentum > 0 else optax.identity())


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad exactly as ``keras.optimizers.Adagrad``.

    ``acc += g^2``, from ``initial_accumulator_value``; update ``-lr * g / sqrt(acc + eps)``.

    Args:
      learning_rate: float or schedule; 0.001.
      initial_accumulator_value: starting value of the accumulators, >= 0; 0.1.
      epsilon: added to the accumulator before the square root, >= 0; 1e-7.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_number("initial_accumulator_value", initial_accumulator_value, 0.1)
        _check_number("epsilon", epsilon, 1e-7)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def _rule(self, learning_rate):
        # optax.scale_by_rss is Keras's g / sqrt(acc + eps), except that it returns 0 where
        # acc == 0 (so g == 0) and eps == 0, where Keras computes 0 / 0 = NaN.
        return optax.chain(
            optax.scale_by_rss(self.initial_accumulator_value, self.epsilon),
            scale_by_learning_rate(learning_rate))


def get(identifier) -> optax.GradientTransformation:
    """Resolve what `compile(optimizer=...)` accepts into an optax transformation.

    Args:
      identifier: a name ("adam", "sgd", "rmsprop", "adagrad", "adamw"; any case) built with
        Keras defaults, a batchfit optimizer, or an `optax.GradientTransformation` (as is).

    >>> tx = get("SGD")
    >>> round(float(tx.update(jnp.array(3.0), tx.init(jnp.array(0.0)))[0]), 6)   # -0.01 * 3
    -0.03
    """
    if isinstance(identifier, optax.GradientTransformation):
        return identifier
    if isinstance(identifier, Optimizer):
        return identifier.to_optax()
    if isinstance(identifier, str):
        return OPTIMIZERS.get(identifier)().to_optax()
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        raise TypeError(
            f"`optimizer` got the class {identifier.__name__}, not an instance. "
            f"Call it: optimizer={identifier.__name__}(), or pass the name "
            f"{identifier.__name__.lower()!r}.")
    raise TypeError(
        f"`optimizer` must be a name ({', '.join(repr(n) for n in OPTIMIZERS.names())}), "
        f"a batchfit.optimizers object such as Adam(learning_rate=1e-3), or an "
        f"optax.GradientTransformation; got {type(identifier).__name__}. "
        f"Pass one of those, e.g. optimizer='adam' or optimizer=optax.sgd(0.01).")


def _is_injected(node) -> bool:
    return isinstance(node, optax.InjectStatefulHyperparamsState)


def _injected_state(opt_state):
    """The one `inject_hyperparams` state inside `opt_state` that holds a learning rate."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_injected)
             if _is_injected(s) and "learning_rate" in s.hyperparams]
    if len(found) != 1:
        raise ValueError(f"`opt_state` must hold exactly one learning rate; found {len(found)} "
                         f"in a {type(opt_state).__name__}. Use a batchfit optimizer such as Adam"
                         f"(1e-3), or optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).")
    return found[0]


def get_learning_rate(opt_state) -> jax.Array:
    """The learning rate in an optimizer state: a scalar array, float32 for batchfit optimizers.

    It is the rate of the last update (of the first, before any). Works on the state of
    a batchfit optimizer and of ``optax.inject_hyperparams(...)(learning_rate=...)``.

    >>> tx = SGD(learning_rate=0.1).to_optax()
    >>> state = set_learning_rate(tx.init(jnp.zeros(1)), 0.5)
    >>> print(get_learning_rate(state), tx.update(jnp.ones(1), state)[0])   # -0.5 * 1
    0.5 [-0.5]
    """
    return _injected_state(opt_state).hyperparams["learning_rate"]


def set_learning_rate(opt_state, learning_rate):
    """A copy of `opt_state` whose next updates use `learning_rate`, without re-tracing.

    Args:
      opt_state: the state of a batchfit optimizer built with a float learning rate.
      learning_rate: a float >= 0, or a scalar array (also a traced one inside `jit`).
    """
    target = _injected_state(opt_state)
    if "learning_rate" in target.hyperparams_states:
        raise TypeError("`learning_rate` cannot be set: it follows a schedule, which sets it at "
                        "every update. Build the optimizer with a float learning rate instead.")
    if callable(learning_rate):
        raise TypeError(f"`learning_rate` can be set to a float only; got the schedule {learning_rate!r}, "
                        f"which changes the compiled update. Compile again with the optimizer built on it, "
                        f"e.g. compile(optimizer=SGD(learning_rate=schedule), ...).")
    if isinstance(learning_rate, numbers.Number):
        _check_number("learning_rate", learning_rate, 1e-3)
    new = jnp.asarray(learning_rate, dtype=target.hyperparams["learning_rate"].dtype)
    if new.shape != ():
        raise ValueError(f"`learning_rate` must be a scalar; got shape {new.shape}. Pass a float.")
    hyperparams = {**target.hyperparams, "learning_rate": new}
    return _tree_map(lambda s: s._replace(hyperparams=hyperparams) if s is target else s,
                     opt_state, is_leaf=_is_injected)


def schedule_step(opt_state) -> jax.Array | None:
    """The step the learning-rate schedule reads at the next update (the updates done so far, int32),
    or None when the learning rate follows no schedule. ``schedule(schedule_step(state))`` is
    Keras's ``optimizer.learning_rate``: the rate the next update uses.

    >>> schedule = schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    >>> tx = SGD(schedule).to_optax()
    >>> state = tx.update(jnp.ones(()), tx.init(jnp.zeros(())))[1]
    >>> float(get_learning_rate(state)), float(schedule(schedule_step(state)))   # used, next
    (0.5, 0.25)
    """
    schedule_state = _injected_state(opt_state).hyperparams_states.get("learning_rate")
    return None if schedule_state is None else schedule_state.count


from batchfit.optimizers._loss_scale import LossScaleOptimizer  # noqa: E402  (it builds on Optimizer, get)

__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
