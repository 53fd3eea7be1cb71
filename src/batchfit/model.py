"""Model and Sequential: the thin stateful shell around the pure engine.

Every method validates its arguments once, delegates to `engine`, and writes the result
back. The trained values live in one `TrainState` on the device; the NNX module is brought
up to date from it when it is read (and when `fit` returns).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from batchfit import activations as activations_lib
from batchfit import layers as layers_lib
from batchfit import losses as losses_lib
from batchfit import metrics as metrics_lib
from batchfit import optimizers as optimizers_lib
from batchfit.callbacks import CallbackList, History, ProgbarLogger
from batchfit.data import arrays
from batchfit.data.source import ArraySource, SeenArrays, as_source, is_batch_list as _is_batches, split_source
from batchfit.data.stream import STREAM_MAX_STEPS, unpack
from batchfit.engine.compiled import Executables, build_executables
from batchfit.engine.loop import (DataRefused, FitPlan, QuietPlan, prepare_quiet, run_evaluate, run_fit,
                                  run_predict, run_quiet)
from batchfit.engine.state import Batch, ModelGraph, TrainState, split_module
from batchfit.engine.step import Program
from batchfit.errors import check_int, describe

__all__ = ["Model", "Sequential", "NotCompiledError"]

_REDUCTIONS = ("sum_over_batch_size", "weighted_mean")


class NotCompiledError(RuntimeError, ValueError):
    """Training or evaluating a model that has not been compiled."""


class _Settings(NamedTuple):
    loss: Any
    metrics: tuple
    names: tuple                      # "loss", then each metric's name
    optimizer: optax.GradientTransformation
    steps_per_execution: int | str
    weighted_mean: bool
    allow_nonfinite: bool


class _Repeat(NamedTuple):
    """The last quiet fit call on plain arrays, kept so that the same call again skips its setup."""

    call: tuple            # its arguments (_quiet_call), but the seed
    seen: SeenArrays       # its x and y (held weakly), their layout and source
    quiet: QuietPlan       # its plan, with the value checks of those arrays when passed again


class Model:
    """A trainable model around any Flax NNX module: `Model(module).compile(...).fit(x, y)`.

    Args:
      module: an `nnx.Module` called as `module(x)` on a batch [B, ...]. Its `nnx.Param`
        variables are trained; every other variable (batch statistics, RNG streams) is
        carried through the compiled step. Training and inference mode are switched with
        NNX's `train()` / `eval()`.
    """

    def __init__(self, module: nnx.Module | None = None, *, name: str | None = None):
        if module is not None and not isinstance(module, nnx.Module):
            raise TypeError(f"`Model(module)` expects a flax.nnx.Module; got {describe(module)}. "
                            f"For Keras-style layers use bf.Sequential([...]).")
        self.name = name or type(self).__name__.lower()
        self._module = module
        self._module_is_users = module is not None
        self._settings: _Settings | None = None
        self._graph: ModelGraph | None = None
        self._exe: Executables | None = None
        self._leaves: list | None = None   # the TrainState's leaves (what the compiled calls take)
        self._state_def = None             # ... and its structure
        self._stale = False                # the module lags behind the state
        self._running = None           # train_on_batch accumulators (reset_metrics=False)
        self._checked: set = set()     # input signatures already checked against the model
        self._last_batch = None        # (shapes, dtypes) of the last *_on_batch batch that passed every check
        self._quick_tests = (None, None)   # its value tests for the batches after it (_value_tests)
        self._seen: tuple[SeenArrays, ...] = ()   # the x, y of the last sources that passed every check
        self._repeat: _Repeat | None = None       # the last quiet fit, to replay
        self.stop_training = False
        self.history: History | None = None

    # ----- building -------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> nnx.Module:
        """The NNX module, up to date with training."""
        self._sync_module()
        return self._module

    def _build_from(self, x) -> None:
        raise ValueError(f"{type(self).__name__} has no module to run; pass one to Model(module).")

    def _ensure_ready(self, x=None):
        if not self.built:
            self._build_from(x)
        if self._graph is None:
            self._graph, params, model_state = split_module(self._module)
            self._state = TrainState(params, model_state, None, np.zeros((), np.int32))
            self._setup_program(copy=True)     # the module keeps its own buffers

    @property
    def _state(self) -> TrainState:
        return jax.tree.unflatten(self._state_def, self._leaves)

    @_state.setter
    def _state(self, state: TrainState):
        self._leaves, self._state_def = jax.tree.flatten(state)

    def _setup_program(self, copy: bool = False):
        s = self._settings
        if s is not None or copy:
            self._state = _starting_state(self._state, s.optimizer if s else None, copy)
        program = Program(self._graph, s.loss if s else None, s.metrics if s else (),
                          s.optimizer if s else None, bool(s and s.weighted_mean))
        self._exe = build_executables(program, self._state_def)
        self._running, self._last_batch = None, None
        self._seen, self._repeat = (), None   # checked against the last compile()'s loss and settings

    def _sync_module(self):
        """Write the trained values into the module's variables (copies: the state's buffers get donated)."""
        if self._stale and self._graph is not None:
            values = _copy_tree((self._state.params, self._state.model_state))
            for variable, value in zip(self._graph.variables, jax.tree.leaves(values)):
                variable.set_value(value)
            self._stale = False

    def _publish(self, leaves: list):
        self._leaves, self._stale = leaves, True

    # ----- compile --------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, *, steps_per_execution="auto",
                loss_reduction="sum_over_batch_size", allow_nonfinite=False, **unused):
        """Choose the optimizer, loss and metrics; nothing is traced until data arrives.

        Args:
          optimizer: a name ("sgd", "adam", "adamw", "rmsprop", "adagrad"), a
            `bf.optimizers.*` object (Keras defaults and formulas) or an optax transformation.
          loss: a name, a `bf.losses.*` object, or `fn(y_true, y_pred) -> [B]` per-sample losses.
          metrics: names ("accuracy", "mae", ...), `bf.metrics.*` objects or callables.
          steps_per_execution: steps fused into one compiled call; "auto" fuses as many as
            the callbacks in use allow (the whole epoch when none needs per-batch logs).
          loss_reduction: "sum_over_batch_size" (Keras: sum(w*l)/B) or "weighted_mean" (/ sum(w)).
          allow_nonfinite: accept NaN or inf in x and y instead of refusing them.
        """
        if loss is None:
            raise ValueError("compile() needs a `loss`, e.g. loss='mse' or loss=bf.losses.BinaryCrossentropy().")
        if loss_reduction not in _REDUCTIONS:
            raise ValueError(f"`loss_reduction` must be one of {_REDUCTIONS}; got {loss_reduction!r}.")
        if steps_per_execution != "auto":
            check_int("steps_per_execution", steps_per_execution, 1)
        loss_obj = losses_lib.get(loss)
        metric_objs = tuple(metrics_lib.get(m, loss_obj) for m in _as_list(metrics))
        names = [m.name for m in metric_objs]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"Metric names must be unique and not 'loss'; got {names}.")
        named = isinstance(optimizer, str) and isinstance(loss, str) and all(isinstance(m, str) for m in _as_list(metrics))
        self._compile_names = dict(optimizer=optimizer, loss=loss, metrics=_as_list(metrics),  # for save()
                                   steps_per_execution=steps_per_execution, loss_reduction=loss_reduction,
                                   allow_nonfinite=allow_nonfinite) if named else None
        self._settings = _Settings(loss_obj, metric_objs, ("loss", *names), optimizers_lib.get(optimizer),
                                   steps_per_execution, loss_reduction == "weighted_mean", allow_nonfinite)
        if self._graph is not None:
            self._setup_program()
        return None

    @property
    def metrics_names(self) -> list[str]:
        return list(self._settings.names) if self._settings else []

    def _compile_defaults(self):
        """train_on_batch before compile(): Keras's default optimizer, a loss read off the output layer.

        Keras raises here; the articles users learn from call train_on_batch on uncompiled
        Sequential models, so batchfit compiles them as Keras would by default, and says so.
        """
        loss = _default_loss(self)
        if loss is None:
            self._require_compiled("train_on_batch")
        warnings.warn(f"train_on_batch() before compile(): compiling with optimizer='rmsprop' (Keras's "
                      f"default) and loss='{loss}' (from the output layer). Call compile() to choose.",
                      UserWarning, stacklevel=3)
        self.compile(optimizer="rmsprop", loss=loss)

    def _require_compiled(self, what: str):
        if self._settings is None:
            raise NotCompiledError(f"You must call compile() before {what}(), e.g. "
                                   f"model.compile(optimizer='adam', loss='mse').")

    # ----- data at the boundary ------------------------------------------------------

    def _check_inputs(self, x, y=None):
        """Trace the model on x's signature once (no step runs): shape errors surface here."""
        signature = tuple((a.shape[1:], a.dtype) for a in arrays.leaves(x))
        if signature not in self._checked:
            try:
                out = jax.eval_shape(self._exe.predict_batch, self._leaves, x)
            except Exception as e:  # noqa: BLE001 - re-raised with the user's shapes
                raise ValueError(f"The model cannot run on `x` ({describe(x)}): {e}. "
                                 f"Check the feature shape against the model's input_shape.") from e
            self._checked.add(signature)
            self._output_shape = jax.tree.leaves(out)[0].shape
        self._check_targets(y)

    def _check_targets(self, y):
        """The loss's checks on the values of `y` (label range), on every batch."""
        if y is not None and self._settings is not None:
            losses_lib.validate_targets(self._settings.loss, np.asarray(y), self._output_shape[-1])

    def _check_values(self, x, y, check_x=True, check_y=True):
        """The checks on the values of arrays whose layout was checked before: NaN / inf, label range."""
        allow = self._settings.allow_nonfinite
        if check_x:
            arrays.check_finite(x, "x", allow)
        if check_y:
            arrays.check_finite(y, "y", allow)
            self._check_targets(y)

    def _arrays(self, x, y, sample_weight=None, class_weight=None, need_y=True):
        """One batch for *_on_batch, checked. A batch shaped like the last one (plain NumPy
        arrays of the same shapes and dtypes, no weights) has only its values checked."""
        if (type(x) is np.ndarray and type(y) is np.ndarray and sample_weight is None and class_weight is None
                and (x.shape, x.dtype, y.shape, y.dtype) == self._last_batch):
            self._recheck(x, y)
            return x, y, None, x.shape[0]
        allow = bool(self._settings and self._settings.allow_nonfinite)
        raw_x, raw_y = x, y
        x = arrays.standardize(x, "x", allow)
        if x is None:
            raise ValueError("`x` is required; got None.")
        if need_y and y is None:
            raise ValueError("`y` is required to train or evaluate; got None. Pass targets as `y`.")
        y = arrays.standardize(y, "y", allow)
        n = arrays.num_samples(x, y, sample_weight)
        w = arrays.sample_weights(y, n, sample_weight, class_weight) if need_y else None
        self._ensure_ready(x)
        self._check_inputs(x, y)
        if (x is raw_x and y is raw_y and type(x) is np.ndarray and type(y) is np.ndarray and w is None
                and self._settings is not None):
            self._last_batch = (x.shape, x.dtype, y.shape, y.dtype)
            self._quick_tests = self._value_tests(x.dtype, y.dtype)
        return x, y, w, n

    def _value_tests(self, x_dtype, y_dtype) -> tuple:
        """Fast tests of x and y values (each None, or `a -> bool`: True proves its checks pass),
        for the batches after this one: one NumPy call per array."""
        allow, loss = self._settings.allow_nonfinite, self._settings.loss
        targets = losses_lib.quick_target_test(loss, y_dtype, self._output_shape[-1])
        return (arrays.quick_finite_test(x_dtype, allow),
                targets if targets is not None else arrays.quick_finite_test(y_dtype, allow))

    def _recheck(self, x, y):
        """The value checks of a batch laid out like the last one: the quick tests, and where they
        prove nothing the full checks, which raise with the reason."""
        test_x, test_y = self._quick_tests
        if not ((test_x is None or test_x(x)) and (test_y is None or test_y(y))):
            self._check_values(x, y)

    def _source(self, x, y=None, sample_weight=None, class_weight=None, *, split=0.0, defer=False, **options):
        """The input as a source (data/source.py), checked against the model once.

        The NumPy x and y of the last sources, passed again, have only their values checked
        (JAX arrays, which cannot change, nothing); with `defer`, the caller checks them
        (`source.unchecked`).
        """
        plain = not split and sample_weight is None and class_weight is None
        for seen in self._seen if plain else ():
            source = seen.again(x, y, options)
            if source is not None:
                if not defer:
                    self._check_values(x, y, *source.unchecked)
                return source
        allow = bool(self._settings and self._settings.allow_nonfinite)
        if split:
            source, val = split_source(x, y, sample_weight, class_weight, validation_split=split,
                                       allow_nonfinite=allow, **options)
        else:
            source, val = as_source(x, y, sample_weight, class_weight, allow_nonfinite=allow, **options), None
        self._ensure_ready(source.sample.x)
        self._check_inputs(source.sample.x, source.sample.y)
        seen = SeenArrays.of(source, x, y, options) if plain else None
        if seen is not None:                # two: fit's training and validation arrays
            self._seen = (seen, *self._seen[:1])
        return (source, val) if split else source

    def _steps(self, source, callbacks: CallbackList | None = None) -> int:
        setting = self._settings.steps_per_execution if self._settings else "auto"
        limit = None
        if callbacks is not None and setting == "auto":
            limit = callbacks.max_steps_per_execution(source.num_batches or STREAM_MAX_STEPS)
        return source.steps_per_execution(setting, limit)

    # ----- fit / evaluate / predict --------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, seed=None, accumulate_steps=1):
        """Train for `epochs` epochs; returns the `History` (see shared/API.md for the loss semantics).

        `x`: arrays (NumPy, JAX, pandas, a dict for a multi-input model; a NumPy memmap is
        streamed from disk), a bf.data.Dataset, or an iterable of (x, y[, sample_weight])
        batches (generator, list, grain, PyTorch DataLoader); with batches, `y`,
        `sample_weight`, `batch_size` and `validation_split` are not given. An epoch is one
        pass over the data, or `steps_per_epoch` batches drawn on from where the last epoch
        stopped. A generator object is consumed once, as in Keras: give it enough batches
        for every epoch (and steps_per_epoch), or pass something re-iterable.

        `accumulate_steps=k`: one update per k batches, exactly the update one batch of all
        their samples would give (sizes, sample weights and the epoch's last, shorter group
        included); each batch's loss is measured at the group's weights. BatchNormalization
        statistics and dropout masks stay per batch.
        """
        self._require_compiled("fit")
        quiet = not callbacks and verbose == 0
        call = _quiet_call(batch_size, epochs, initial_epoch, shuffle, validation_split, validation_data, class_weight,
                           sample_weight, steps_per_epoch, accumulate_steps) if quiet else None
        repeat = self._repeat
        if call is not None and repeat is not None and repeat.call == call and repeat.seen.holds(x, y):
            source = repeat.seen.rebuild(x, y, _seed(seed))     # the same call again: only the values to check
            return self._fit_quietly(source, repeat.quiet, x, y)
        epochs, initial_epoch = check_int("epochs", epochs, 0), check_int("initial_epoch", initial_epoch, 0)
        accumulate_steps = check_int("accumulate_steps", accumulate_steps, 1)
        if epochs < initial_epoch:
            raise ValueError(f"`epochs` ({epochs}) must be >= `initial_epoch` ({initial_epoch}): "
                             f"epochs is the index of the last epoch + 1, as in Keras.")
        if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
            raise ValueError(f"`validation_split` must be a float in [0, 1); got {validation_split!r}.")
        options = dict(batch_size=batch_size, shuffle=bool(shuffle), seed=_seed(seed), steps=steps_per_epoch,
                       first_key=initial_epoch)
        if validation_split:
            source, val = self._source(x, y, sample_weight, class_weight, split=validation_split,
                                       validation_batch_size=validation_batch_size, **options)
        else:
            source = self._source(x, y, sample_weight, class_weight, defer=True, **options)
            val = self._validation_source(validation_data, validation_batch_size, batch_size, validation_steps)
        check = self._values_left(source, quiet)
        if call is not None and isinstance(source, ArraySource):   # no callback, validation or accumulation
            plan = FitPlan(epochs, initial_epoch, self._steps(source), self._settings.names[1:])
            history = self._fit_quietly(source, prepare_quiet(self._exe, plan, source.rows, source.batch_size, check),
                                        x, y)
            if self._seen and self._seen[0].holds(x, y):
                seen = self._seen[0]
                again = prepare_quiet(self._exe, plan, source.rows, source.batch_size, self._check_bits(*seen.writable))
                self._repeat = _Repeat(call, seen, again)
            return history
        previous, cbs = self.history, self._callbacks(callbacks, verbose, epochs, source.num_batches)
        plan = FitPlan(epochs, initial_epoch, self._steps(source, cbs), self._settings.names[1:],
                       accumulate_steps)
        validate = None
        if val is not None:
            val_steps = self._steps(val)
            validate = lambda s: run_evaluate(self._exe, s, val, val_steps, plan.metric_names)
        return self._train(lambda: run_fit(self._exe, self._leaves, source, plan, cbs, self._publish,
                                           lambda: self.stop_training, validate, check), previous, x, y, source)

    def _fit_quietly(self, source: ArraySource, quiet: QuietPlan, x, y) -> History:
        """fit with no callback, no validation and an update per batch, on in-memory arrays
        (engine.loop.run_quiet). A call that repeats the last one (the same arrays and
        arguments, any seed: model._repeat) comes straight here, with only the values of
        NumPy arrays to check again (in the first compiled call): on a small model, fit's
        setup would cost a tenth of the epoch."""
        previous, history = self.history, History()
        history.set_model(self)
        history.set_params({"epochs": quiet.plan.epochs, "steps": source.num_batches, "verbose": 0})
        self.history = history
        return self._train(lambda: run_quiet(quiet, self._leaves, source, history, self._publish),
                           previous, x, y, source)

    def _train(self, run, previous, x, y, source) -> History:
        """`run()` the training loop and publish its state; returns the History.

        When the compiled call refuses the data (DataRefused: no step ran), `model.history`
        goes back to `previous` and the host checks raise the reason."""
        self.stop_training = False
        try:
            leaves = run()
        except DataRefused:
            self.history = previous
            self._check_values(x, y, *source.unchecked)     # raises the reason
            raise ValueError("fit refused `x` or `y`: their values failed the checks inside its compiled call, "
                             "but pass them now. Was the data written to while fit ran?") from None
        self._publish(leaves)
        if self._module_is_users:          # a Sequential's module is only reached through .module
            self._sync_module()
        return self.history

    def _values_left(self, source, quiet: bool) -> int:
        """The value checks of arrays passed again (`source.unchecked`), as the bits of
        compiled._data_ok for fit's first compiled call to run, or run here (then 0).

        On a quiet fit (no callbacks, verbose=0) the compiled call checks the values itself and
        refuses them without running a step: in Python, right after the device ran, these few
        reductions cost a tenth of a small model's epoch. Callbacks would see the train begin
        before the refusal, so with callbacks they run here, before anything else."""
        check_x, check_y = getattr(source, "unchecked", (False, False))   # a stream checks its own batches
        if not quiet:
            self._check_values(source.sample.x, source.sample.y, check_x, check_y)
            return 0
        return self._check_bits(check_x, check_y)

    def _check_bits(self, check_x: bool, check_y: bool) -> int:
        """compiled._data_ok's bits for the value checks of x and / or y (0: nothing to check)."""
        allow, targets = self._settings.allow_nonfinite, losses_lib.checks_targets(self._settings.loss)
        return (check_x and not allow) | (check_y and not allow) << 1 | (check_y and targets) << 2

    def _validation_source(self, data, batch_size, fit_batch_size, steps):
        """`validation_data`: (x, y[, sample_weight]) arrays, or a Dataset / iterable of batches."""
        if data is None:
            return None
        if isinstance(data, tuple) or (isinstance(data, list) and len(data) <= 3 and not _is_batches(data)):
            vx, vy, vw = unpack(tuple(data))
            return self._source(vx, vy, vw, batch_size=batch_size or fit_batch_size, steps=steps)
        return self._source(data, batch_size=batch_size, steps=steps)

    def _callbacks(self, callbacks, verbose, epochs, num_batches) -> CallbackList:
        verbose = 1 if verbose == "auto" else int(verbose)
        user = list(callbacks) if callbacks else []
        self.history = next((cb for cb in user if isinstance(cb, History)), None) or History()
        extra = [ProgbarLogger(verbose)] if verbose else []
        all_cbs = [cb for cb in user if cb is not self.history] + extra + [self.history]
        params = {"epochs": epochs, "steps": num_batches, "verbose": verbose}
        return CallbackList(all_cbs, model=self, params=params)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 return_dict=False, callbacks=None, steps=None):
        """The sample-weighted mean loss (and metrics) over all of x (or `steps` batches), in inference mode."""
        self._require_compiled("evaluate")
        source = self._source(x, y, sample_weight, batch_size=batch_size, steps=steps)
        logs = run_evaluate(self._exe, self._leaves, source, self._steps(source), tuple(self.metrics_names[1:]))
        return self._format(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", callbacks=None, steps=None):
        """The model's outputs on all of x (or `steps` batches), as a NumPy array, in inference mode."""
        source = self._source(x, batch_size=batch_size, steps=steps, need_y=False)
        return run_predict(self._exe, self._leaves, source, self._steps(source))

    # ----- one batch at a time -------------------------------------------------------

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, reset_metrics=True,
                       return_dict=False):
        """One update on one batch; returns the raw loss L_b of this batch, before the update.

        With `reset_metrics=False` the values are running means over the calls since the last
        reset, weighted as fit weights them. The returned scalars are device values: reading
        them (float(), print) waits for the step; not reading them lets steps overlap.
        """
        if self._settings is None:
            self._compile_defaults()
        if (type(x) is np.ndarray and type(y) is np.ndarray and sample_weight is None and class_weight is None
                and (x.shape, x.dtype, y.shape, y.dtype) == self._last_batch):    # _arrays' quick path, inlined
            self._recheck(x, y)
            w = None
        else:
            x, y, w, _ = self._arrays(x, y, sample_weight, class_weight)
        if reset_metrics:
            self._running = None
            leaves, logs = self._exe.train_batch(self._leaves, Batch(x, y, w))
        else:
            leaves, self._running, logs = self._exe.train_running(self._leaves, self._running, Batch(x, y, w))
        self._publish(leaves)
        return self._format(logs, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, reset_metrics=True, return_dict=False):
        """The loss (and metrics) of one batch at the current weights, in inference mode; no update."""
        self._require_compiled("test_on_batch")
        x, y, w, _ = self._arrays(x, y, sample_weight)
        return self._format(self._exe.test_batch(self._leaves, Batch(x, y, w)), return_dict)

    def predict_on_batch(self, x):
        """The model's output on one batch, as a NumPy array."""
        x, _, _, _ = self._arrays(x, None, need_y=False)
        return jax.tree.map(np.asarray, self._exe.predict_batch(self._leaves, x))

    def _format(self, logs: dict, return_dict: bool):
        if return_dict:
            return dict(logs)
        names = self._settings.names
        return logs["loss"] if len(names) == 1 else [logs[name] for name in names]

    # ----- weights ---------------------------------------------------------------------

    def save(self, path) -> str:
        """Write the model to the folder `path` (JSON and .npz, no pickle); `bf.load_model(path)` reads it.

        Saved: the layers, the weights, and the compile settings when they were given by name.
        Not saved: the optimizer's state. See batchfit/saving.py.
        """
        from batchfit.saving import save_model
        return save_model(self, path)

    def get_weights(self) -> list[np.ndarray]:
        """All weights as NumPy arrays, in Keras order (per layer: kernel, bias, ...)."""
        if not self.built:
            return []
        self._sync_module()
        return [np.array(v.get_value()) for v in layers_lib.keras_weight_variables(self._module)]

    def set_weights(self, weights) -> None:
        """Set all weights from NumPy arrays in `get_weights()` order (the optimizer state is kept)."""
        self._sync_module()
        variables = layers_lib.keras_weight_variables(self._module) if self.built else []
        weights = list(weights)
        expected = [tuple(v.get_value().shape) for v in variables]
        got = [tuple(np.shape(w)) for w in weights]
        if expected != got:
            raise ValueError(f"set_weights() expects {len(expected)} arrays with shapes {expected}; "
                             f"got {len(got)} with shapes {got}. Use the list get_weights() returns.")
        for var, value in zip(variables, weights):
            var[...] = jnp.asarray(value, var.get_value().dtype)
        if self._graph is not None:
            _, params, model_state = nnx.split(self._module, nnx.Param, ...)
            params, model_state = _copy_tree((nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)))
            self._state = self._state._replace(params=params, model_state=model_state)


class Sequential(Model):
    """A stack of Keras-style layers: `Sequential([Dense(16, activation="relu", input_shape=(10,)), ...])`.

    Built when the input shape is known: from the first layer's `input_shape`, or from the
    first batch it sees. `seed` fixes the initial weights and the dropout masks.
    """

    def __init__(self, layers=None, seed: int | None = None, name: str | None = None):
        super().__init__(name=name)
        self.layers = []
        self.seed = _seed(seed)
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, layers_lib.Layer):
            raise TypeError(f"Sequential takes batchfit layers (bf.layers.Dense, ...); got {describe(layer)}. "
                            f"Wrap an NNX module with bf.Model(module) instead.")
        if self._graph is not None:
            raise ValueError("Cannot add layers to a Sequential that has already run; build a new one.")
        self.layers.append(layer)
        self._module = None                     # built again, from the same seed, when first used

    @property
    def built(self) -> bool:
        if self._module is None and self.layers and self.layers[0].input_shape is not None:
            self._build_for(self.layers[0].input_shape)
        return self._module is not None

    def build(self, input_shape):
        """Create the weights for inputs of `input_shape`: Keras's batch shape, `(None, 10)`, or
        the per-sample shape, `(10,)`. A model built already keeps its weights."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:             # Keras: the batch axis first, left open
            shape = shape[1:]
        if self._module is not None:
            if shape != tuple(self._module.input_shape):
                raise ValueError(f"This Sequential is built for per-sample inputs of shape "
                                 f"{tuple(self._module.input_shape)}; build({tuple(input_shape)}) asks for "
                                 f"{shape}. Build a new Sequential for other inputs.")
            return
        self._build_for(shape)

    def _build_for(self, shape):
        if not self.layers:
            raise ValueError("Sequential has no layers; add at least one before using it.")
        self._module = layers_lib.build_stack(self.layers, tuple(shape), self.seed)

    def _build_from(self, x):
        if x is None:
            raise ValueError("This Sequential has no input_shape yet; pass data or set input_shape.")
        if isinstance(x, dict):
            raise ValueError(f"Sequential takes a single input array; got {describe(x)}. Use bf.Model for many.")
        self._build_for(x.shape[1:])


def _default_loss(model) -> str | None:
    last = getattr(model, "layers", None)
    if not last:
        return None
    activation = getattr(last[-1], "activation", None)
    for name, loss in (("sigmoid", "binary_crossentropy"), ("softmax", "categorical_crossentropy")):
        if activation is activations_lib.get(name):
            return loss
    return "mse"


_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _starting_state(state: TrainState, optimizer, copy: bool) -> TrainState:
    """`state` at step 0 with `optimizer`'s initial state (None: no optimizer yet) and, with
    `copy`, copies of the weights: one compiled call, where eagerly each copy and each zeros
    would be compiled on its own (10-40 ms a program in a fresh process)."""
    def start(params, model_state):
        if copy:
            params, model_state = _copy_tree((params, model_state))
        opt_state = None if optimizer is None else optimizer.init(params)
        return TrainState(params, model_state, opt_state, jnp.zeros((), jnp.int32))
    return jax.jit(start)(state.params, state.model_state)


def _as_list(metrics):
    if metrics is None:
        return []
    return list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]


def _quiet_call(batch_size, epochs, initial_epoch, shuffle, validation_split, validation_data, class_weight,
                sample_weight, steps_per_epoch, accumulate) -> tuple | None:
    """The arguments of a quiet fit that _fit_quietly can run (the others at their defaults), typed:
    32.0 must not pass for the 32 checked before. None for any other fit."""
    if (type(validation_split) in (int, float) and validation_split == 0 and validation_data is None
            and class_weight is None and sample_weight is None and steps_per_epoch is None and accumulate == 1):
        return batch_size, epochs, initial_epoch, bool(shuffle), type(batch_size), type(epochs), type(initial_epoch)
    return None


def _seed(seed) -> int:
    if seed is None:
        return arrays.fresh_seed()
    return check_int("seed", seed, 0)
