"""Model: the thin stateful shell around the pure engine.

Every method validates its arguments once, delegates to `engine`, and writes the result
back. The trained values live in one Slot on the device; the NNX module is brought up to
date from it when it is read (and when `fit` returns).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit import layers as layers_lib
from batchfit._compile import settings_from
from batchfit.callbacks import Callback, CallbackList, History, ProgbarLogger
from batchfit.data import arrays
from batchfit.data.source import ArraySource, as_source, is_batch_list, split_source
from batchfit.data.stream import STREAM_MAX_STEPS, unpack
from batchfit.engine.compiled import build_executables
from batchfit.engine.loop import Cursor, FitPlan, run_evaluate, run_fit, run_predict
from batchfit.engine.state import Batch, Position, Slot, TrainState, split_module
from batchfit.engine.step import Program
from batchfit.errors import check_int, describe

__all__ = ["Model", "NotCompiledError"]


class NotCompiledError(RuntimeError, ValueError):
    """Training or evaluating a model that has not been compiled."""


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
        self._module, self._module_is_users = module, module is not None
        self._settings = self._graph = self._exe = self._slot = None
        self._synced = 0                   # the slot version the module holds
        self._running = None               # train_on_batch's running totals (reset_metrics=False)
        self._outputs: dict = {}           # input signature -> the output's shape
        self._cursor = self._resume = None   # fit's place; a Position set_position() put back
        self._busy = None                  # the training call running, if any
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

    def _check_x(self, x) -> None:
        """A model's own refusals of an input layout (Sequential: a single array)."""

    def _executables(self, x=None):
        """The compiled entry points, built (with the module, from x's shape) once per compile().

        A compiled model's state is started here, when data first arrives: the optimizer's
        initial state and copies of the module's weights, in one compiled call."""
        if not self.built:
            self._build_from(x)
        if self._graph is None:
            self._graph, params, model_state = split_module(self._module)
            self._slot = Slot(TrainState(params, model_state, None, np.zeros((), np.int32)))
            self._synced = self._slot.version
        if self._exe is None:
            s = self._settings
            program = Program(self._graph, s and s.loss, s.metrics if s else (), s and s.optimizer,
                              bool(s and s.weighted_mean), layers_lib.regularization_penalty)
            if s is not None:
                self._slot.put(jax.jit(lambda state: _start(program, state))(self._slot.state))
            self._exe, self._running = build_executables(program, self._slot.treedef), None
        return self._exe

    def _sync_module(self):
        """Write the trained values into the module's variables (copies: the state's buffers get donated)."""
        if self._slot is not None and self._slot.version != self._synced:
            state = self._slot.state
            for variable, value in zip(self._graph.variables, jax.tree.leaves(_copy((state.params, state.model_state)))):
                variable.set_value(value)
            self._synced = self._slot.version

    # ----- compile --------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
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
        Other Keras arguments raise: TypeError for unknown names, ValueError for unsupported values.
        """
        self._refuse_reentry("compile")
        self._settings = settings_from(optimizer, loss, metrics, **kwargs)
        if self._slot is not None:       # a new optimizer state, started when data arrives
            self._slot.put(self._slot.state._replace(opt_state=None))
        self._exe = None

    @property
    def metrics_names(self) -> list[str]:
        return list(self._settings.names) if self._settings else []

    def _require_compiled(self, what: str):
        if self._settings is None:
            raise NotCompiledError(f"You must call compile() before {what}(), e.g. "
                                   f"model.compile(optimizer='adam', loss='mse').")

    def _refuse_reentry(self, what: str):
        if self._busy:
            raise RuntimeError(f"{what}() was called while this model's {self._busy}() is running (from one of "
                               f"its callbacks). Training calls cannot nest: set model.stop_training = True and "
                               f"call {what}() after {self._busy}() returns.")

    # ----- data at the boundary ------------------------------------------------------

    def _accept(self, source):
        """Check a source against the model before any step: x's shapes run through the model, and the
        loss's target rule on y (arrays: once, here; streams: here on the first batch, then on every chunk)."""
        rule = self._target_rule(source.sample.x)
        if rule is not None and source.sample.y is not None:
            rule(source.sample.y)
            if not isinstance(source, ArraySource):
                source.check_targets = rule
        return source

    def _target_rule(self, x):
        """x's shape rule (it runs through the model; once per input signature); the loss's target rule."""
        self._check_x(x)
        exe = self._executables(x)
        signature = tuple((a.shape[1:], a.dtype) for a in arrays.leaves(x))
        if signature not in self._outputs:
            try:
                out = jax.eval_shape(exe.predict_batch, self._slot.leaves, x)
            except Exception as e:  # noqa: BLE001 - re-raised with the user's shapes
                raise ValueError(f"The model cannot run on `x` ({describe(x)}): {e}. "
                                 f"Check the feature shape against the model's input_shape.") from e
            self._outputs[signature] = jax.tree.leaves(out)[0].shape
        if self._settings is None:
            return None
        shape, loss = self._outputs[signature], self._settings.loss
        return lambda y: loss.validate_targets(np.asarray(y), shape[-1] if shape else None)

    def _batch(self, x, y, sample_weight=None, class_weight=None, need_y=True) -> Batch:
        """One batch for *_on_batch, checked by the same rules as fit's arrays."""
        allow = bool(self._settings and self._settings.allow_nonfinite)
        if x is None:
            raise ValueError("`x` is required; got None.")
        if need_y and y is None:
            raise ValueError("`y` is required to train or evaluate; got None. Pass targets as `y`.")
        x, y = arrays.standardize(x, "x", allow), arrays.standardize(y, "y", allow) if need_y else None
        n = arrays.num_samples(x, y)
        w = arrays.sample_weights(y, n, sample_weight, class_weight) if need_y else None
        rule = self._target_rule(x)
        if rule is not None and y is not None:
            rule(y)
        return Batch(x, y, w)

    def _steps(self, source, callbacks: CallbackList) -> int:
        setting = self._settings.steps_per_execution if self._settings else "auto"
        limit = callbacks.max_steps_per_execution(source.num_batches or STREAM_MAX_STEPS) if setting == "auto" else None
        return source.steps_per_execution(setting, limit)

    def _callbacks(self, callbacks, verbose, mode: str, num_batches, epochs=None) -> CallbackList:
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"`callbacks` must be a list of bf.callbacks.Callback; got {describe(callbacks)}. "
                            f"Wrap a single callback in a list: callbacks=[cb].")
        user = list(callbacks or [])
        for cb in user:
            if not isinstance(cb, Callback):
                raise TypeError(f"`callbacks` must hold bf.callbacks.Callback objects; got {describe(cb)}. "
                                f"Subclass bf.callbacks.Callback, or use bf.callbacks.LambdaCallback(...).")
        if verbose not in ("auto", 0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2; got {verbose!r}.")
        verbose = 1 if verbose == "auto" else verbose
        extra = [ProgbarLogger(verbose, mode)] if verbose else []
        if mode == "fit":
            self.history = next((cb for cb in user if isinstance(cb, History)), None) or History()
            user = [cb for cb in user if cb is not self.history] + extra + [self.history]
        params = {"epochs": epochs, "steps": num_batches, "verbose": verbose}
        return CallbackList(user if mode == "fit" else user + extra, model=self, params=params)

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
        stopped. A generator object is consumed once, as in Keras.

        `accumulate_steps=k`: one update per k batches, exactly the update one batch of all
        their samples would give; each batch's loss is measured at the group's weights.
        After `set_position(p)`, fit continues from p (its epoch, batch and data order).
        """
        self._require_compiled("fit")
        self._refuse_reentry("fit")
        epochs, initial_epoch = check_int("epochs", epochs, 0), check_int("initial_epoch", initial_epoch, 0)
        accumulate_steps = check_int("accumulate_steps", accumulate_steps, 1)
        if epochs < initial_epoch:
            raise ValueError(f"`epochs` ({epochs}) must be >= `initial_epoch` ({initial_epoch}): "
                             f"epochs is the index of the last epoch + 1, as in Keras.")
        if isinstance(validation_split, bool) or not (isinstance(validation_split, (int, float))
                                                      and 0.0 <= validation_split < 1.0):
            raise ValueError(f"`validation_split` must be a float in [0, 1); got {validation_split!r}.")
        resume = self._resume
        seed = resume.seed if resume is not None else _seed(seed)
        options = dict(batch_size=batch_size, shuffle=bool(shuffle), seed=seed, steps=steps_per_epoch,
                       first_key=resume.epoch if resume is not None else initial_epoch,
                       allow_nonfinite=self._settings.allow_nonfinite)
        if validation_split:
            source, val = split_source(x, y, sample_weight, class_weight, validation_split=validation_split,
                                       validation_batch_size=validation_batch_size, **options)
        else:
            source = as_source(x, y, sample_weight, class_weight, **options)
            val = self._validation_source(validation_data, validation_batch_size or batch_size, validation_steps)
        self._accept(source)
        if val is not None:
            self._accept(val)
        cbs = self._callbacks(callbacks, verbose, "fit", source.num_batches, epochs)
        plan = FitPlan(epochs, initial_epoch, self._steps(source, cbs), self._settings.names[1:], accumulate_steps)
        cursor = Cursor(plan, source.seed, _check_resume(resume, source, plan))
        validate = None if val is None else (
            lambda slot: run_evaluate(self._exe, slot.leaves, val, self._steps(val, cbs), plan.metric_names, cbs))
        self.stop_training, self._resume, self._cursor, self._busy = False, None, cursor, "fit"
        try:
            run_fit(self._exe, self._slot, source, cursor, cbs, lambda: self.stop_training, validate)
        finally:
            self._busy = None
        if self._module_is_users:          # a Sequential's module is only reached through .module
            self._sync_module()
        return self.history

    def _validation_source(self, data, batch_size, steps):
        """`validation_data`: (x, y[, sample_weight]) arrays, or a Dataset / iterable of batches."""
        if data is None:
            return None
        allow = self._settings.allow_nonfinite
        if isinstance(data, tuple) or (isinstance(data, list) and len(data) <= 3 and not is_batch_list(data)):
            vx, vy, vw = unpack(tuple(data))
            return as_source(vx, vy, vw, batch_size=batch_size, steps=steps, allow_nonfinite=allow)
        return as_source(data, steps=steps, allow_nonfinite=allow)

    def get_position(self) -> Position:
        """Where training stands, as a host copy (waits for the device): the TrainState and the
        loop's place. During fit (from a callback) the batch just run; else where the last fit ended."""
        self._require_compiled("get_position")
        self._executables()
        cursor = self._cursor or Cursor(FitPlan(0, 0, 1, self._settings.names[1:]), 0)
        return cursor.position(self._slot)

    def set_position(self, position: Position) -> None:
        """Put back a Position from get_position(): the next fit continues from it, bitwise as if
        training had never stopped (same data and fit arguments; its epoch, batch and data order)."""
        self._require_compiled("set_position")
        self._refuse_reentry("set_position")
        self._executables()
        if not isinstance(position, Position):
            raise TypeError(f"set_position() takes what get_position() returns; got {describe(position)}.")
        expected = jax.tree.map(lambda a: (np.shape(a), np.result_type(a)), self._slot.state)
        if jax.tree.map(lambda a: (np.shape(a), np.result_type(a)), position.train) != expected:
            raise ValueError("set_position(): the position's training state does not fit this model (other "
                             "layers, weights or optimizer). Put it back into a model built and compiled alike.")
        self._slot.put(jax.tree.map(jnp.array, position.train))
        self._resume = position

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """The sample-weighted mean loss (and metrics) over all of x (or `steps` batches), in inference mode."""
        self._require_compiled("evaluate")
        source = self._accept(as_source(x, y, sample_weight, batch_size=batch_size, steps=steps,
                                        allow_nonfinite=self._settings.allow_nonfinite))
        cbs = self._callbacks(callbacks, verbose, "test", source.num_batches)
        logs = run_evaluate(self._exe, self._slot.leaves, source, self._steps(source, cbs), self._settings.names[1:],
                            cbs)
        return self._format(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs on all of x (or `steps` batches), as a NumPy array, in inference mode."""
        source = as_source(x, batch_size=batch_size, steps=steps, need_y=False)
        self._target_rule(source.sample.x)
        cbs = self._callbacks(callbacks, verbose, "predict", source.num_batches)
        return run_predict(self._exe, self._slot.leaves, source, self._steps(source, cbs), cbs)

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
        self._refuse_reentry("train_on_batch")
        batch = self._batch(x, y, sample_weight, class_weight)
        if reset_metrics:
            self._running = None
            self._slot.leaves, logs = self._exe.train_batch(self._slot.leaves, batch)
        else:
            self._slot.leaves, self._running, logs = self._exe.train_running(self._slot.leaves, self._running, batch)
        return self._format(logs, return_dict)

    def _compile_defaults(self):
        raise NotCompiledError("You must call compile() before train_on_batch(), e.g. "
                               "model.compile(optimizer='adam', loss='mse').")

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """The loss (and metrics) of one batch at the current weights, in inference mode; no update."""
        self._require_compiled("test_on_batch")
        batch = self._batch(x, y, sample_weight)
        return self._format(self._exe.test_batch(self._slot.leaves, batch), return_dict)

    def predict_on_batch(self, x):
        """The model's output on one batch, as a NumPy array."""
        batch = self._batch(x, None, need_y=False)
        return jax.tree.map(np.asarray, self._exe.predict_batch(self._slot.leaves, batch.x))

    def _format(self, logs: dict, return_dict: bool):
        if return_dict:
            return dict(logs)
        names = self._settings.names
        return logs["loss"] if len(names) == 1 else [logs[name] for name in names]

    # ----- weights ---------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """All weights as NumPy arrays, in Keras order (per layer: kernel, bias, ...)."""
        if not self.built:
            return []
        self._sync_module()
        return [np.array(v.get_value()) for v in layers_lib.keras_weight_variables(self._module)]

    def set_weights(self, weights) -> None:
        """Set all weights from NumPy arrays in `get_weights()` order (the optimizer state is kept)."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"set_weights() takes a list of arrays in get_weights() order; got {describe(weights)}.")
        self._sync_module()
        variables = layers_lib.keras_weight_variables(self._module) if self.built else []
        expected = [tuple(v.get_value().shape) for v in variables]
        got = [tuple(np.shape(w)) for w in weights]
        if expected != got:
            raise ValueError(f"set_weights() expects {len(expected)} arrays with shapes {expected}; "
                             f"got {len(got)} with shapes {got}. Use the list get_weights() returns.")
        for var, value in zip(variables, weights):
            var[...] = jnp.asarray(value, var.get_value().dtype)
        if self._graph is not None:
            _, params, model_state = nnx.split(self._module, nnx.Param, ...)
            params, model_state = _copy((nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)))
            self._slot.put(self._slot.state._replace(params=params, model_state=model_state))
            self._synced = self._slot.version

    def save(self, path) -> str:
        raise TypeError(f"save() rebuilds a model from its layers, so it takes a bf.Sequential; got "
                        f"{type(self).__name__}. For bf.Model(module), keep the module's code and save "
                        f"get_weights() with np.savez; set_weights() restores them.")


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _start(program: Program, state: TrainState) -> TrainState:
    """`state` at step 0 with the optimizer's initial state, on copies of the weights (the
    module keeps its own buffers; training donates the state's)."""
    params, model_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
    return TrainState(params, model_state, program.optimizer.init(params), jnp.zeros((), jnp.int32))


def _check_resume(position: Position | None, source, plan: FitPlan) -> Position | None:
    """The position fit resumes from, checked against this call's data and metrics."""
    if position is None:
        return None
    if position.totals.shape != (1 + len(plan.metric_names), 2):
        raise ValueError(f"set_position(): the position was taken with {position.totals.shape[0] - 1} metrics; "
                         f"this model has {len(plan.metric_names)}. Compile it as it was.")
    if source.num_batches is not None and position.batch > source.num_batches:
        raise ValueError(f"set_position(): the position is at batch {position.batch} of epoch {position.epoch}, "
                         f"but an epoch of this data has {source.num_batches} batches. Pass the same data and "
                         f"batch_size as the run it was taken from.")
    return position


def _seed(seed) -> int:
    if seed is None:
        return arrays.fresh_seed()
    return check_int("seed", seed, 0)
