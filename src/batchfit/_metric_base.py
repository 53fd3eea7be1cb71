"""The Keras `Metric` base class (state variables, update_state, result, reset_state), `Mean` and `Sum`.

Public through `batchfit.metrics`. A metric's variables are `_metric_variables.Variable`s; the
`stateless_*` methods run the Keras methods inside a `StatelessScope`, so the engine can trace
them as pure functions of the variables' values.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from batchfit._metric_variables import StatelessScope, Variable, initial_value
from batchfit._loss_base import _align, _name_of, _snake_case, _to_per_sample

__all__ = ["Metric", "Mean", "Sum", "MeanMetricWrapper"]


class Metric:
    """Base class of metrics, as `keras.metrics.Metric`: state variables, `update_state`, `result`.

    Subclass it as Keras does: call `super().__init__(name=name, **kwargs)`, create the state with
    `self.add_variable(shape, initializer, dtype=None, name=None)`, accumulate one batch in
    `update_state(y_true, y_pred, sample_weight=None)` with the variables' `assign` / `assign_add`,
    and return a scalar from `result()`; `reset_state()` assigns zeros unless overridden.

    In `compile(metrics=[...])` the update runs inside the compiled step (traced once; the variables'
    values travel with the step's running totals on the device), `result()` is computed when logs are
    read, and the state starts from `reset_state()` at each epoch, `evaluate` and
    `train_on_batch(reset_metrics=True)`. `sample_weight` is then, as in Keras, the batch's weights [B]
    (`sample_weight` x `class_weight`) for a metric in `weighted_metrics=`, and None in `metrics=`.
    The metric object's own variables are not changed by fit; used on its own (`update_state`,
    `result`, `reset_state`, `m(y_true, y_pred)`) it keeps its state as in Keras.

    Means of per-sample values (`MeanMetricWrapper` and the built-in metrics) take a faster path:
    the engine accumulates `call(y_true, y_pred)` [B] as one (sum w*v, sum w) row.

    >>> class Hits(Metric):
    ...     def __init__(self, name="hits", **kwargs):
    ...         super().__init__(name=name, **kwargs)
    ...         self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
    ...     def update_state(self, y_true, y_pred, sample_weight=None):
    ...         self.hits.assign_add(jnp.sum((y_pred >= 0.5) == (y_true == 1)))
    ...     def result(self):
    ...         return self.hits
    >>> m = Hits(); m.update_state(jnp.array([1, 0, 1]), jnp.array([0.9, 0.2, 0.1])); float(m.result())
    2.0
    """

    name = "metric"
    _dtype = "float32"

    def __init__(self, dtype=None, name: str | None = None):
        self.name = name or _snake_case(type(self).__name__)
        self._dtype = jnp.dtype(dtype or "float32").name
        self._variables, self._metrics = [], []

    def __setattr__(self, attribute, value):
        tracked = self.__dict__.get("_variables")
        if tracked is not None:          # Keras tracks the variables and sub-metrics set on a metric
            if isinstance(value, Variable) and not any(v is value for v in tracked):
                tracked.append(value)
            elif isinstance(value, Metric) and value is not self:
                self._metrics.append(value)
        object.__setattr__(self, attribute, value)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def variables(self) -> list:
        """The state variables: this metric's, then its sub-metrics' (Keras's order)."""
        self._check_super_called()
        return [*self._variables, *(v for metric in self._metrics for v in metric.variables)]

    def add_variable(self, shape, initializer="zeros", dtype=None, aggregation="sum", name=None) -> Variable:
        """A new state variable of `shape` (float32 unless `dtype`), started by `initializer`
        ("zeros", "ones", a number, an array, or a callable(shape, dtype))."""
        self._check_super_called()
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (() if shape is None else (shape,))
        with jax.ensure_compile_time_eval():     # a metric built on its first update may be inside a trace
            variable = Variable(initial_value(initializer, shape, dtype or "float32"), name)
        self._variables.append(variable)
        return variable

    def add_weight(self, shape=(), initializer=None, dtype=None, name=None) -> Variable:
        return self.add_variable(shape=shape, initializer=initializer, dtype=dtype, name=name)

    def update_state(self, *args, **kwargs):
        """Accumulate one batch into the state variables."""
        raise NotImplementedError(f"{type(self).__name__} must define update_state(self, y_true, y_pred, "
                                  f"sample_weight=None).")

    def result(self):
        """The metric's value from its state: a scalar."""
        raise NotImplementedError(f"{type(self).__name__} must define result(self).")

    def reset_state(self) -> None:
        """Back to the start: zeros in every variable (Keras's default)."""
        for variable in self.variables:
            variable.assign(jnp.zeros(variable.shape, variable.dtype))

    def __call__(self, *args, **kwargs):
        """`update_state(*args, **kwargs)`, then `result()`, as Keras.

        >>> m = Mean()  # weights [3, 1]: (3 * 1 + 1 * 0) / 4, then (3 + 0 + 2) / 6
        >>> float(m(jnp.array([1.0, 0.0]), sample_weight=jnp.array([3.0, 1.0])))
        0.75
        >>> round(float(m(jnp.array([1.0]), sample_weight=jnp.array([2.0]))), 6)
        0.833333
        """
        self.update_state(*args, **kwargs)
        return self.result()

    # ----- the pure forms the engine traces (Keras's names) ---------------------------

    def stateless_update_state(self, metric_variables, *args, **kwargs) -> list:
        """`update_state` as a pure function: the variables' values before -> after."""
        variables = self._paired(metric_variables)
        with StatelessScope(zip(variables, metric_variables)) as scope:
            self.update_state(*args, **kwargs)
        if len(self.variables) != len(variables):
            raise ValueError(
                f"{type(self).__name__} made its variables on this first update_state, from the batch's "
                f"shapes (Keras's lazy build), after its state was laid out without them. Give their shape "
                f"up front where the metric takes it (AUC(multi_label=True, num_labels=...)), or build the "
                f"metric before compile(): metric.update_state(y[:1], model.predict(x[:1])); "
                f"metric.reset_state().")
        return [scope.get(v) for v in variables]

    def stateless_result(self, metric_variables):
        """`result()` of the state `metric_variables`, as arrays."""
        variables = self._paired(metric_variables)
        with StatelessScope(zip(variables, metric_variables)):
            return _as_arrays(self.result())

    def stateless_reset_state(self) -> list:
        """The variables' values after `reset_state()`, without changing them."""
        variables = self.variables
        with StatelessScope() as scope:
            self.reset_state()
        return [scope.get(v, v._value) for v in variables]

    @property
    def per_sample_mean(self) -> bool:
        """True when the engine may keep this metric as the sample-weighted mean of per-sample values
        `call(y_true, y_pred)` [B]; False: it runs `update_state` on the metric's variables."""
        return False

    def call(self, y_true, y_pred):
        """Per-sample values [B] of a mean metric (see `per_sample_mean`)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample `call`; it is a stateful metric "
                                  f"(update_state / result).")

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def _paired(self, metric_variables) -> list:
        variables = self.variables
        if len(metric_variables) != len(variables):
            raise ValueError(f"`metric_variables` must hold one value per variable of {type(self).__name__} "
                             f"({len(variables)}); got {len(metric_variables)}.")
        return variables

    def _check_super_called(self) -> None:
        if "_variables" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__(name=name, **kwargs) "
                               f"before it adds variables: the base class sets up the metric's state.")

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _as_arrays(value):
    """A result (a variable, an array, a number, or a dict of them) as JAX arrays, read inside the scope."""
    if isinstance(value, dict):
        return {k: _as_arrays(v) for k, v in value.items()}
    return jnp.asarray(value.value if isinstance(value, Variable) else value)


def _divide_no_nan(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.where(b != 0, a / jnp.where(b != 0, b, 1), 0).astype(jnp.result_type(a, b))


def _samplewise(values, sample_weight, reduce_fn, dtype):
    """Keras's reduce_to_samplewise_values: values [B, ...] -> [B] (weighted), and the weights."""
    values = jnp.asarray(values).astype(dtype)
    if sample_weight is not None:
        sample_weight = jnp.asarray(sample_weight).astype(dtype)
        values, sample_weight = _align(values, sample_weight)
        if values.ndim > sample_weight.ndim:
            values = reduce_fn(values, axis=tuple(range(sample_weight.ndim, values.ndim)))
        values = values * jnp.broadcast_to(sample_weight, values.shape)
        if sample_weight.ndim > 1:
            sample_weight = reduce_fn(sample_weight, axis=tuple(range(1, sample_weight.ndim)))
    if values.ndim > 1:
        values = reduce_fn(values, axis=tuple(range(1, values.ndim)))
    return values, sample_weight


class Sum(Metric):
    """The (weighted) sum of the values given, as `keras.metrics.Sum`.

    >>> m = Sum(); m.update_state(jnp.array([1.0, 3.0, 5.0, 7.0]), sample_weight=jnp.array([1.0, 1.0, 0.0, 0.0]))
    >>> float(m.result())
    4.0
    """

    def __init__(self, name: str = "sum", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable((), "zeros", dtype=self.dtype, name="total")

    def update_state(self, values, sample_weight=None):
        values, _ = _samplewise(values, sample_weight, jnp.sum, self.dtype)
        self.total.assign_add(jnp.sum(values))

    def reset_state(self):
        self.total.assign(0)

    def result(self):
        return jnp.asarray(self.total, self.dtype)


class Mean(Metric):
    """The (weighted) mean of the values given, as `keras.metrics.Mean`: variables `total`, `count`.

    >>> m = Mean(); m.update_state(jnp.array([1.0, 3.0, 5.0, 7.0]), sample_weight=jnp.array([1.0, 1.0, 0.0, 0.0]))
    >>> float(m.result())   # (1 + 3) / 2
    2.0
    """

    def __init__(self, name: str = "mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable((), "zeros", dtype=self.dtype, name="total")
        self.count = self.add_variable((), "zeros", dtype=self.dtype, name="count")

    def update_state(self, values, sample_weight=None):
        values, sample_weight = _samplewise(values, sample_weight, jnp.mean, self.dtype)
        self.total.assign_add(jnp.sum(values))
        if sample_weight is not None:
            count = jnp.sum(sample_weight)
        else:
            count = values.shape[0] if values.ndim >= 1 else 1
        self.count.assign_add(jnp.asarray(count, self.dtype))

    def reset_state(self):
        self.total.assign(0)
        self.count.assign(0)

    def result(self):
        return _divide_no_nan(self.total, self.count)


class MeanMetricWrapper(Mean):
    """The mean of `fn(y_true, y_pred, **kwargs)` over samples, as `keras.metrics.MeanMetricWrapper`:
    an output [B, ...] is averaged over trailing axes, a scalar broadcast to [B]."""

    def __init__(self, fn: Callable, name: str | None = None, dtype=None, **kwargs):
        super().__init__(name=name or _name_of(fn, "custom_metric"), dtype=dtype)
        self.fn, self.kwargs = fn, kwargs

    def call(self, y_true, y_pred):
        """Per-sample values: float32 [B]."""
        return _to_per_sample(self.fn(y_true, y_pred, **self.kwargs), jnp.asarray(y_pred),
                              self.name)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self.call(y_true, y_pred), sample_weight=sample_weight)

    @property
    def per_sample_mean(self) -> bool:
        cls = type(self)
        return (cls.update_state is MeanMetricWrapper.update_state and cls.result is Mean.result
                and cls.reset_state is Mean.reset_state)

    def get_config(self) -> dict:
        fn = {"fn": self.fn} if type(self) is MeanMetricWrapper else {}
        return {**super().get_config(), **fn, **self.kwargs}
