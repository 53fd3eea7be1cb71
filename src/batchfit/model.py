"""Model: Keras's training API (compile, fit, evaluate, predict, *_on_batch) on the shell of _shell.py.

Every method validates its arguments once, delegates to `engine`, and writes the result
back. The trained values live in one Slot on the device; the NNX module is brought up to
date from it when it is read (and when `fit` returns).
"""

from __future__ import annotations

import jax
import numpy as np

from batchfit import _random, saving
from batchfit._handling import Handling
from batchfit._keras_step import KerasStep
from batchfit._settings import check_fit_arguments
from batchfit._shell import NotCompiledError, Shell
from batchfit.callbacks import CallbackList
from batchfit.callbacks.setup import callback_list
from batchfit.data.source import ArraySource, as_source, split_source, validation_source
from batchfit.engine import driver
from batchfit.engine.loop import Cursor, FitPlan, run_evaluate, run_fit, run_predict
from batchfit.engine.validation import Validation
from batchfit.layers.base import run_module

__all__ = ["Model", "NotCompiledError"]


class Model(KerasStep, Shell, Handling):
    """A trainable model, built in one of Keras's ways or around a Flax NNX module.

    * `Model(inputs, outputs)`: the functional API, from `bf.Input` tensors (batchfit/functional.py).
    * `class M(Model)` with layers made in `__init__` and `call(self, x, training=False)`: built on
      its first data (batchfit/_subclass.py).
    * `Model(module)`: any `nnx.Module` called as `module(x)` on a batch [B, ...]. Its `nnx.Param`
      variables are trained; every other variable (batch statistics, RNG streams) is carried
      through the compiled step; NNX's `train()` / `eval()` switch the mode.
    """

    def __new__(cls, *args, **kwargs):
        if cls is Model and (len(args) >= 2 or "inputs" in kwargs or "outputs" in kwargs):
            from batchfit.functional import Functional
            cls = Functional
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):       # load_model finds subclasses by name, as Keras's registry
            saving.MODELS.register(cls.__name__)(cls)

    def __init__(self, module=None, *, name=None, seed=None, **kwargs):
        unknown = set(kwargs) - {"trainable", "dtype"}
        if unknown:
            raise TypeError(f"Model() got unexpected keyword arguments {sorted(unknown)}; it takes a module, or "
                            f"inputs and outputs (functional API), and name=, seed=.")
        super().__init__(module, name=name)
        self.seed = _random.seed_or_next(seed)

    def call(self, inputs, training=False):
        """The forward pass: a subclass defines it; a module model runs its module."""
        return run_module(self.module, inputs, (), {"training": training})

    def _output_names(self):
        """The names of the model's outputs when it has several (a functional model's), else None."""
        names = getattr(self, "output_names", None)
        return tuple(names) if names and len(names) > 1 else None

    def _subclassed(self) -> bool:
        return type(self).call is not Model.call

    def _build_from(self, x) -> None:
        if not self._subclassed():
            return super()._build_from(x)
        from batchfit._subclass import build_subclassed
        self._module = build_subclassed(self, x)
        self._built_on = saving.input_spec(x)      # get_config's build_config: load_model builds on zeros like it

    def _weight_layers(self) -> list:
        if not self._subclassed() or self._module is None:
            return []
        from batchfit.layers.custom import sublayers
        return sublayers(self)

    def build(self, input_shape) -> None:
        """Build a subclassed model for inputs of `input_shape` (Keras's batch shape `(None, 10)`)."""
        shape = tuple(input_shape)[1:] if tuple(input_shape)[:1] == (None,) else tuple(input_shape)
        if not self.built:
            self._executables(np.zeros((1, *shape), np.float32))

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
        self._settings = self._settings_from(optimizer, loss, metrics, output_names=self._output_names(), **kwargs)
        self._outputs, self._layouts = {}, {}     # the new loss checks every layout again
        if self._slot is not None:       # a new optimizer state, started when data arrives
            self._slot.put(self._slot.state._replace(opt_state=None))
        self._exe = None

    @property
    def metrics_names(self) -> list[str]:
        return list(self._settings.names) if self._settings else []

    # ----- data at the boundary ------------------------------------------------------

    def _accept(self, source, what: str = ""):
        """Check a source against the model before any step: x's shapes run through the model, and the
        rule for its targets (arrays: once, here; streams: here on the first batch, then on every chunk).
        `what` names the data in an error ("the validation data")."""
        try:
            rule = self._target_rule(source.sample.x)
            if rule is not None and source.sample.y is not None:
                rule(source.sample.y)
                if not isinstance(source, ArraySource):
                    source.check_targets = rule
        except ValueError as e:
            raise (ValueError(f"In {what}: {e}") if what else e) from None
        return source

    def _steps(self, source, callbacks: CallbackList) -> int:
        """Steps per compiled call: "auto" is a compiled loop, or one step per call (engine/driver.py)."""
        setting = self._settings.steps_per_execution if self._settings else "auto"
        leaves = self._slot.leaves if self._slot is not None else ()
        return driver.steps_per_execution(setting, source, callbacks, self._exe, leaves)

    def _callbacks(self, callbacks, verbose, mode: str, num_batches, epochs=None) -> CallbackList:
        cbs = callback_list(callbacks, verbose, mode, self, num_batches, epochs)
        if mode == "fit":
            self.history = cbs.history
        return cbs

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
        epochs, initial_epoch, accumulate_steps = check_fit_arguments(epochs, initial_epoch, accumulate_steps,
                                                                      validation_split, validation_batch_size)
        x, y, validation_data = self._structure_x(x), self._structure_y(y), self._structure_pair(validation_data)
        resume = self._resume
        seed = resume.seed if resume is not None else _random.seed_or_next(seed)
        options = dict(batch_size=batch_size, shuffle=bool(shuffle), seed=seed, steps=steps_per_epoch,
                       first_key=resume.epoch if resume is not None else initial_epoch,
                       allow_nonfinite=self._settings.allow_nonfinite)
        if validation_split:
            source, val = split_source(x, y, sample_weight, class_weight, validation_split=validation_split,
                                       validation_batch_size=validation_batch_size, **options)
        else:
            source = as_source(x, y, sample_weight, class_weight, need_y=self._needs_targets(), **options)
            val = validation_source(validation_data, validation_batch_size or batch_size, validation_steps,
                                    options["allow_nonfinite"])
        if resume is not None:
            source.reseed(resume.seed, resume.data_seeds)    # a Dataset's order generation and drawn seeds
        self._accept(source)
        self._trace_custom(source.sample)          # a custom train_step: its logs' names (_keras_step.py)
        if val is not None:
            self._accept(val, "the validation data")
        cbs = self._callbacks(callbacks, verbose, "fit", source.num_batches, epochs)
        plan = FitPlan(epochs, initial_epoch, self._steps(source, cbs), self._log_names("train"), accumulate_steps,
                       None if getattr(self._custom_step(), "has_loss", True) is False else "loss")
        validate = None if val is None else Validation(val, lambda slot: run_evaluate(
            self._exe, slot.leaves, val, self._steps(val, cbs), self._log_names("test"), cbs))
        cursor = Cursor(plan, source.seed, resume, source.num_batches, source.drawn_seeds(),
                        None if val is None else validate.start(resume, initial_epoch))
        self.stop_training, self._resume, self._cursor, self._busy = False, None, cursor, "fit"
        try:
            run_fit(self._exe, self._slot, source, cursor, cbs, lambda: self.stop_training, validate)
        finally:
            self._busy = None
        if self._module_is_users:          # a Sequential's module is only reached through .module
            self._sync_module()
        return self.history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """The sample-weighted mean loss (and metrics) over all of x (or `steps` batches), in inference mode."""
        self._require_compiled("evaluate")
        x, y = self._structure_x(x), self._structure_y(y)
        source = self._accept(as_source(x, y, sample_weight, batch_size=batch_size, steps=steps, steps_name="steps",
                                        need_y=self._needs_targets(), allow_nonfinite=self._settings.allow_nonfinite))
        self._trace_custom(source.sample)
        cbs = self._callbacks(callbacks, verbose, "test", source.num_batches)
        logs = run_evaluate(self._exe, self._slot.leaves, source, self._steps(source, cbs), self._log_names("test"),
                            cbs)
        return self._format(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs on all of x (or `steps` batches), as a NumPy array, in inference mode."""
        source = as_source(self._structure_x(x), batch_size=batch_size, steps=steps, need_y=False, steps_name="steps")
        self._target_rule(source.sample.x)
        cbs = self._callbacks(callbacks, verbose, "predict", source.num_batches)
        return self._present(run_predict(self._exe, self._slot.leaves, source, self._steps(source, cbs), cbs))

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
        if self._busy:
            self._refuse_reentry("train_on_batch")
        batch = self._batch(self._structure_x(x), self._structure_y(y), sample_weight, class_weight)
        self._trace_custom(batch)
        if reset_metrics:
            self._running = None
            self._slot.leaves, logs = self._exe.train_batch(self._slot.leaves, batch)
        else:
            self._slot.leaves, self._running, logs = self._exe.train_running(self._slot.leaves, self._running, batch)
        return self._format(logs, return_dict)

    def _compile_defaults(self):        # a Sequential compiles itself with Keras's defaults instead
        self._require_compiled("train_on_batch")

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """The loss (and metrics) of one batch at the current weights, in inference mode; no update."""
        self._require_compiled("test_on_batch")
        batch = self._batch(self._structure_x(x), self._structure_y(y), sample_weight)
        self._trace_custom(batch)
        return self._format(self._exe.test_batch(self._slot.leaves, batch), return_dict)

    def predict_on_batch(self, x):
        """The model's output on one batch, as a NumPy array."""
        batch = self._batch(self._structure_x(x), None, need_y=False)
        return self._present(jax.tree.map(np.asarray, self._exe.predict_step_batch(self._slot.leaves, batch.x)))

    def _format(self, logs: dict, return_dict: bool):
        if return_dict:
            return dict(logs)
        names = self._settings.names
        return logs["loss"] if len(names) == 1 else [logs[name] for name in names if name in logs]

    # ----- weights ---------------------------------------------------------------------

    def save(self, filepath, overwrite=True) -> str:
        """Write the model to one `.keras` file (a zip: config, weights, compile settings and optimizer
        state; no pickle); `bf.models.load_model(filepath)` reads it and trains on exactly."""
        from batchfit import models
        return models.save_model(self, filepath, overwrite)

    def save_weights(self, filepath, overwrite=True) -> str:
        """Write `get_weights()` to `filepath`, which ends in `.weights.h5` as Keras requires (an .npz inside)."""
        from batchfit import models
        return models.save_weights(self, filepath, overwrite)

    def load_weights(self, filepath) -> None:
        """Set the weights from a `.weights.h5` or `.keras` file; ValueError (model unchanged) if they do not fit."""
        from batchfit import models
        models.load_weights(self, filepath)

    def get_config(self) -> dict:
        """Keras's config (JSON). A subclass with constructor arguments adds them to super().get_config()."""
        from batchfit import models
        return models.get_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The model `get_config()` described, with fresh weights."""
        from batchfit import models
        return models.from_config(cls, config, custom_objects)

    def to_json(self, **kwargs) -> str:
        """The model's class and config as JSON; `bf.models.model_from_json` rebuilds it."""
        import json
        from batchfit import models
        return json.dumps(models.model_entry(self), **kwargs)
