"""Keras 3 optimizers (names, defaults, exact update formulas) as optax transformations.

Each class holds hyperparameters only; ``.to_optax()`` builds a pure
``optax.GradientTransformation`` whose update follows Keras 3 step by step:
clip the gradients, decay the weights (``var -= var * weight_decay * lr``),
apply the optimizer's own rule, then count the update. The learning rate of
update ``n`` (0-based) is ``learning_rate(n)`` when it is a schedule.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from batchfit.registry import Registry

__all__ = [
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Optimizer",
    "SGDState", "AdamState", "RMSpropState", "AdagradState", "get",
]

LearningRate = Union[float, Callable[[jax.Array], Any]]
OPTIMIZERS = Registry("optimizer")
_tree_map = jax.tree_util.tree_map


class SGDState(NamedTuple):
    """SGD state: updates done so far (int32 scalar) and the velocity (None without momentum)."""
    count: jax.Array
    momentum: Any


class AdamState(NamedTuple):
    """Adam/AdamW state: count, first and second moments, max second moment (amsgrad only)."""
    count: jax.Array
    momentum: Any
    velocity: Any
    velocity_hat: Any


class RMSpropState(NamedTuple):
    """RMSprop state: count, mean square, momentum buffer and mean gradient (when used)."""
    count: jax.Array
    velocity: Any
    momentum: Any
    average_gradient: Any


class AdagradState(NamedTuple):
    """Adagrad state: count and the running sum of squared gradients."""
    count: jax.Array
    accumulator: Any


def _zeros(params, fill: float = 0.0):
    return _tree_map(lambda p: jnp.full(jnp.shape(p), fill, jnp.result_type(p)), params)


def _cast(value, like):
    return jnp.asarray(value, dtype=jnp.result_type(like))


def _clip_by_norm(g, clipnorm):
    # Keras: g * c / max(||g||, c); the `where` keeps a zero gradient exact.
    l2sum = jnp.sum(jnp.square(g))
    l2norm = jnp.where(l2sum > 0, jnp.sqrt(jnp.where(l2sum > 0, l2sum, 1.0)), l2sum)
    return g * clipnorm / jnp.maximum(l2norm, clipnorm)


def _clip_by_global_norm(grads, clipnorm):
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
    # Keras: c * min(1/norm, 1/c), plus (norm - norm) so a non-finite norm gives NaN.
    scale = clipnorm * jnp.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)
    return _tree_map(lambda g: g * _cast(scale, g), grads)


def _check_learning_rate(learning_rate) -> None:
    is_number = isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool)
    if not (is_number or callable(learning_rate)):
        raise TypeError(
            f"`learning_rate` must be a float or a schedule (a callable step -> "
            f"learning rate, such as optax.exponential_decay(...)); got "
            f"{type(learning_rate).__name__}. Pass e.g. learning_rate=1e-3.")


class Optimizer:
    """Base class: Keras's common arguments and the shared clip/decay/count logic.

    Args:
      learning_rate: a float, or an optax schedule called with the number of
        updates done so far (0 for the first update).
      weight_decay: if set, ``var -= var * weight_decay * lr`` before each update.
      clipnorm: clip each gradient leaf to this L2 norm.
      clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
      global_clipnorm: clip all gradients together to this global L2 norm.
    """

    def __init__(self, learning_rate: LearningRate, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        _check_learning_rate(learning_rate)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = {k: v for k, v in clips.items() if v is not None}
        if len(given) > 1:
            raise ValueError(
                f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; "
                f"got {given}. Keep the one you want and drop the others.")
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def _init(self, params, count):
        raise NotImplementedError

    def _step(self, grads, state, lr):
        """Keras's `update_step` for all leaves -> (updates, state without new count)."""
        raise NotImplementedError

    def _learning_rate(self, count):
        if callable(self.learning_rate):
            return self.learning_rate(count)
        return self.learning_rate

    def _clip(self, grads):
        # Keras tests truthiness and > 0, so 0 means "no clipping", as there.
        if self.clipnorm and self.clipnorm > 0:
            return _tree_map(lambda g: _clip_by_norm(g, self.clipnorm), grads)
        if self.global_clipnorm and self.global_clipnorm > 0:
            return _clip_by_global_norm(grads, self.global_clipnorm)
        if self.clipvalue and self.clipvalue > 0:
            return _tree_map(lambda g: jnp.clip(g, -self.clipvalue, self.clipvalue), grads)
        return grads

    def _decay(self, updates, params, lr):
        if self.weight_decay is None:
            return updates
        if params is None:
            raise ValueError(
                f"{type(self).__name__}(weight_decay={self.weight_decay}) needs the "
                f"parameters; got params=None. Call `tx.update(grads, state, params)`.")
        wd = self.weight_decay
        return _tree_map(lambda u, p: u - p * _cast(wd, p) * _cast(lr, p), updates, params)

    def to_optax(self) -> optax.GradientTransformation:
        """The pure optax transformation performing this optimizer's Keras update.

        >>> tx = SGD(learning_rate=0.1).to_optax()
        >>> updates, state = tx.update({"w": jnp.array(2.0)}, tx.init({"w": jnp.array(1.0)}))
        >>> round(float(updates["w"]), 6), int(state.count)   # -0.1 * 2
        (-0.2, 1)
        """
        def init_fn(params):
            return self._init(params, jnp.zeros([], jnp.int32))

        def update_fn(updates, state, params=None):
            lr = self._learning_rate(state.count)
            updates, state = self._step(self._clip(updates), state, lr)
            updates = self._decay(updates, params, lr)
            return updates, state._replace(count=state.count + jnp.int32(1))

        return optax.GradientTransformation(init_fn, update_fn)


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
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"`momentum` must be a float in [0, 1]; got {momentum!r}. "
                             f"Use e.g. momentum=0.9, or 0.0 for plain SGD.")
        self.momentum = momentum
        self.nesterov = nesterov

    def _init(self, params, count):
        return SGDState(count, _zeros(params) if self.momentum != 0 else None)

    def _step(self, grads, state, lr):
        if self.momentum == 0:
            return _tree_map(lambda g: -g * _cast(lr, g), grads), state
        mu = self.momentum

        def step(g, m):  # Keras applies the same expression again for Nesterov
            return m * _cast(mu, m) - g * _cast(lr, g)

        momentum = _tree_map(step, grads, state.momentum)
        updates = _tree_map(step, grads, momentum) if self.nesterov else momentum
        return updates, state._replace(momentum=momentum)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam exactly as ``keras.optimizers.Adam`` (epsilon added to sqrt(v), not sqrt(v_hat)).

    With ``t = count + 1``: ``m += (g - m) * (1 - beta_1)``; ``v += (g^2 - v) * (1 - beta_2)``;
    ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``; update ``-alpha * m / (sqrt(v) + eps)``.
    This differs from ``optax.adam``, which adds epsilon after bias correction.

    Args:
      learning_rate: float or schedule; 0.001.
      beta_1, beta_2: decay rates of the first and second moments; 0.9, 0.999.
      epsilon: added to ``sqrt(v)``; 1e-7.
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
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad

    def _init(self, params, count):
        velocity_hat = _zeros(params) if self.amsgrad else None
        return AdamState(count, _zeros(params), _zeros(params), velocity_hat)

    def _step(self, grads, state, lr):
        b1, b2, eps = self.beta_1, self.beta_2, self.epsilon
        m = _tree_map(lambda g, m: m + (g - m) * _cast(1 - b1, m), grads, state.momentum)
        v = _tree_map(lambda g, v: v + (jnp.square(g) - v) * _cast(1 - b2, v),
                      grads, state.velocity)
        v_hat = state.velocity_hat
        if self.amsgrad:
            v_hat = _tree_map(jnp.maximum, v_hat, v)
        t = state.count + 1

        def leaf(m, v):
            step = _cast(t, m)
            alpha = _cast(lr, m) * jnp.sqrt(1 - _cast(b2, m) ** step) / (1 - _cast(b1, m) ** step)
            return -(m * alpha) / (jnp.sqrt(v) + _cast(eps, v))

        updates = _tree_map(leaf, m, v_hat if self.amsgrad else v)
        return updates, state._replace(momentum=m, velocity=v, velocity_hat=v_hat)


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """Keras Adam with decoupled weight decay (``var -= var * weight_decay * lr`` first).

    Args:
      learning_rate: float or schedule; 0.001.
      weight_decay: float, required; 0.004.
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
      rho: decay of the mean square; 0.9.
      momentum: plain (not Nesterov) momentum; 0.0 keeps no buffer.
      epsilon: added to the mean square before the square root; 1e-7.
      centered: divide by the estimated variance instead of the second moment.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.centered = centered

    def _init(self, params, count):
        momentum = _zeros(params) if self.momentum > 0 else None
        average = _zeros(params) if self.centered else None
        return RMSpropState(count, _zeros(params), momentum, average)

    def _step(self, grads, state, lr):
        rho, eps = self.rho, self.epsilon
        v = _tree_map(lambda g, v: _cast(rho, v) * v + _cast(1 - rho, v) * jnp.square(g),
                      grads, state.velocity)
        a = state.average_gradient
        if self.centered:
            a = _tree_map(lambda g, a: _cast(rho, a) * a + _cast(1 - rho, a) * g, grads, a)
            denominator = _tree_map(lambda v, a: v - jnp.square(a) + _cast(eps, v), v, a)
        else:
            denominator = _tree_map(lambda v: v + _cast(eps, v), v)
        increment = _tree_map(lambda g, d: g * _cast(lr, g) / jnp.sqrt(d), grads, denominator)
        b = state.momentum
        if self.momentum > 0:
            b = _tree_map(lambda b, i: _cast(self.momentum, b) * b + i, b, increment)
            increment = b
        updates = _tree_map(jnp.negative, increment)
        return updates, state._replace(velocity=v, momentum=b, average_gradient=a)


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad exactly as ``keras.optimizers.Adagrad``.

    ``acc += g^2``; update ``-lr * g / sqrt(acc + eps)``, with ``acc`` starting at
    ``initial_accumulator_value``.

    Args:
      learning_rate: float or schedule; 0.001.
      initial_accumulator_value: starting value of the accumulators, >= 0; 0.1.
      epsilon: added to the accumulator before the square root; 1e-7.
      weight_decay, clipnorm, clipvalue, global_clipnorm: see `Optimizer`.
    """

    def __init__(self, learning_rate: LearningRate = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        if initial_accumulator_value < 0:
            raise ValueError(f"`initial_accumulator_value` must be >= 0; got "
                             f"{initial_accumulator_value!r}. Keras's default is 0.1.")
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def _init(self, params, count):
        return AdagradState(count, _zeros(params, self.initial_accumulator_value))

    def _step(self, grads, state, lr):
        acc = _tree_map(lambda g, a: a + jnp.square(g), grads, state.accumulator)
        updates = _tree_map(lambda g, a: -(g * _cast(lr, g)) / jnp.sqrt(a + _cast(self.epsilon, a)),
                            grads, acc)
        return updates, state._replace(accumulator=acc)


def get(identifier) -> optax.GradientTransformation:
    """Resolve what `compile(optimizer=...)` accepts into an optax transformation.

    Args:
      identifier: a name ("adam", "sgd", "rmsprop", "adagrad", "adamw"; any case)
        built with Keras defaults, a batchfit optimizer, or an
        `optax.GradientTransformation`, returned unchanged.

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
