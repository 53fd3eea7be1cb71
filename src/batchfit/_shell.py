"""The stateful shell every model shares: the module, its training state in one Slot, and the checks
at the boundary between the user's data and the compiled calls. model.Model adds Keras's training API."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from batchfit import layers as layers_lib
from batchfit.data import arrays
from batchfit.engine.compiled import build_executables, start_state
from batchfit.engine.loop import Cursor, FitPlan
from batchfit.engine.state import Batch, Position, Slot, TrainState, copy_tree, split_module
from batchfit.engine.step import Program
from batchfit.errors import describe
from batchfit.layers import _scope

__all__ = ["Shell", "NotCompiledError"]


class NotCompiledError(RuntimeError, ValueError):
    """Training or evaluating a model that has not been compiled."""


_PLAIN = (np.dtype(np.float32), np.dtype(np.int32))


def _is_plain(array) -> bool:
    """Whether the data rules take `array` as it is (float32 / int32 with a batch axis), so that
    Shell._batch can look its layout's checks up."""
    return array is None or (array.dtype in _PLAIN and array.ndim > 0)


def _no_rule(y) -> None:
    """The target rule before compile(): nothing to check."""


_no_rule.refuses_nonfinite = False


class Shell:
    """The module, the state it trains (a Slot) and the compiled entry points of the last compile()."""

    checks_layouts_once = True     # *_on_batch: a layout's shape checks on its first batch only

    def __init__(self, module: nnx.Module | None = None, *, name: str | None = None):
        if module is not None and not isinstance(module, nnx.Module):
            raise TypeError(f"`Model(module)` expects a flax.nnx.Module; got {describe(module)}. "
                            f"For Keras-style layers use bf.Sequential([...]).")
        self.name = name or type(self).__name__.lower()
        self._module, self._module_is_users = module, module is not None
        self._settings = self._graph = self._exe = self._slot = None
        self._synced = 0                   # the slot version the module holds
        self._running = None               # train_on_batch's running totals (reset_metrics=False)
        self._outputs: dict = {}           # input signature -> the output's shapes; target layouts checked
        self._layouts: dict = {}           # *_on_batch: the layout of plain arrays checked -> its target rule
        self._cursor = self._resume = None   # fit's place; a Position set_position() put back
        self._busy = None                  # the training call running, if any
        self._edits = 0                    # _scope.edits when the state last read the module
        self._nodes = []                   # calls on symbolic tensors (a model used as a layer)
        self.stop_training = False
        self.history = None                # the History of the last fit

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
            self._synced, self._edits = self._slot.version, _scope.edits
            for layer in self._all_layers():
                layer._owners.add(self)
        else:
            self._take_edits()
        if self._exe is None:
            program = self._program()
            if self._settings is not None:
                self._slot.put(start_state(program, self._slot.state))
            self._exe, self._running = build_executables(program, self._slot.treedef), None
        return self._exe

    def _program(self) -> Program:
        s = self._settings
        custom = self._custom_step()           # the model's own train_step (_keras_step.py), or None
        own = custom is not None and custom.train is not None
        return Program(self._graph, s and s.loss, s.metrics if s and not own else (), s and s.optimizer,
                       bool(s and s.weighted_mean), layers_lib.regularization_penalty, s.weighted if s else (),
                       custom)

    def _custom_step(self):
        """A model with its own Keras-protocol train_step gives it here (see _keras_step.KerasStep)."""
        return None

    def _build_metrics(self, y_pred) -> None:
        """Metrics that make their variables on their first batch, as Keras's F1Score and AUC(multi_label=True)
        do: built here on the model's output `y_pred` (shapes) and reset, so that their state has its layout
        before the first step; the entry points are made again to start from it."""
        lazy = [m for m in self._settings.metrics if not m.per_sample_mean and not m.variables]
        def first_batch(out):
            for metric in lazy:
                metric.update_state(out, out)
        if lazy:
            jax.eval_shape(first_batch, y_pred)
            for metric in lazy:
                metric.reset_state()
            self._exe = build_executables(self._program(), self._slot.treedef)

    def _sync_module(self):
        """Write the trained values into the module's variables (copies: the state's buffers get donated)."""
        if self._slot is not None and self._slot.version != self._synced:
            state = self._slot.state
            for variable, value in zip(self._graph.variables, jax.tree.leaves(copy_tree((state.params, state.model_state)))):
                variable.set_value(value)
            self._synced = self._slot.version

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

    def _target_rule(self, x):
        """x's shape rule (it runs through the model; once per input signature); returns the rule for
        its targets (None before compile()): their shapes fit the loss (once per signature) and their
        values pass the loss's rule (Loss.validate_targets)."""
        self._check_x(x)
        exe = self._executables(x)
        signature = tuple((a.shape[1:], a.dtype) for a in arrays.leaves(x))
        if signature not in self._outputs:
            try:
                self._outputs[signature] = jax.eval_shape(exe.predict_batch, self._slot.leaves, x)
            except Exception as e:  # noqa: BLE001 - re-raised with the user's shapes
                raise ValueError(f"The model cannot run on `x` ({describe(x)}): {e}. "
                                 f"Check the feature shape against the model's input_shape.") from e
        if self._settings is None or self._settings.loss is None:     # no loss: a custom step's data
            return None
        rule = self._outputs.get(("rule", signature))
        if rule is None:                   # once per input signature and compile()
            self._build_metrics(self._outputs[signature])
            rule = self._outputs[("rule", signature)] = self._make_rule(signature)
        return rule

    def _make_rule(self, signature):
        """The rule for the targets of inputs of `signature` (see _target_rule)."""
        out, loss = self._outputs[signature], self._settings.loss
        sizes = jax.tree.map(lambda o: o.shape[-1] if o.shape else None, out)   # per output, for a dict of them

        values = functools.partial(loss.validate_targets, num_outputs=sizes)

        def rule(y):
            key = (signature, tuple((tuple(a.shape[1:]), a.dtype) for a in jax.tree.leaves(y)))
            if key not in self._outputs:
                try:
                    jax.eval_shape(loss.per_sample, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), y), out)
                except Exception as e:  # noqa: BLE001 - re-raised with the user's shapes
                    raise ValueError(f"`y` ({describe(y)}) does not fit the model's output "
                                     f"({describe(out)}) under the loss {loss.name}: {e}") from e
                self._outputs[key] = True
            values(y)
        rule.values, values.refuses_nonfinite = values, loss.refuses_nonfinite_targets
        return rule

    def _batch(self, x, y, sample_weight=None, class_weight=None, need_y=True) -> Batch:
        """One batch for *_on_batch, checked by the same rules as fit's arrays. The checks of a layout
        (types, shapes, the model and the loss on them) run on its first batch; the value rules (finite
        x and y, the loss's targets) on every batch."""
        self._take_edits()
        allow = self._settings is not None and self._settings.allow_nonfinite
        layout = None          # NumPy x and y, no weights: look their layout's checks up (see _is_plain)
        if sample_weight is None and class_weight is None and type(x) is np.ndarray and self.checks_layouts_once:
            if not need_y:
                layout = x.shape, x.dtype
            elif type(y) is np.ndarray:
                layout = x.shape, x.dtype, y.shape, y.dtype
        rule = self._layouts.get(layout)
        if rule is not None:
            arrays.check_finite(x, "x", allow)
            if need_y:
                if not rule.refuses_nonfinite:
                    arrays.check_finite(y, "y", allow)
                rule(y)
            return Batch(x, y, None)
        if x is None:
            raise ValueError("`x` is required; got None.")
        if need_y and y is None:
            raise ValueError("`y` is required to train or evaluate; got None. Pass targets as `y`.")
        x, y = arrays.standardize(x, "x", allow), arrays.standardize(y, "y", allow) if need_y else None
        n = arrays.num_samples(x, y)
        w = arrays.sample_weights(y, n, sample_weight, class_weight) if need_y else None
        rule = self._target_rule(x) or _no_rule
        if y is not None:
            rule(y)
        if layout is not None and _is_plain(x) and _is_plain(y):
            self._layouts[layout] = getattr(rule, "values", rule)     # the layout is checked: its values from now on
        return Batch(x, y, w)

    # ----- the training state -------------------------------------------------------

    def get_position(self) -> Position:
        """Where training stands: a copy of the TrainState (on the device) and the loop's place (on the
        host; reading it waits for the device). During fit (from a callback) the batch just run; else
        where the last fit ended."""
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
        layout = lambda tree: (jax.tree.structure(tree), [(np.shape(a), a.dtype) for a in jax.tree.leaves(tree)])
        if layout(position.train) != layout(self._slot.state):
            raise ValueError("set_position(): the position's training state does not fit this model (other "
                             "layers, weights or optimizer). Put it back into a model built and compiled alike.")
        self._slot.put(copy_tree(position.train))
        self._resume = position

    def _all_layers(self) -> list:
        """Every layer this model runs, sublayers of custom layers included (their weights sync with it)."""
        from batchfit.layers.custom import sublayers
        found, stack = [], list(self._weight_layers())
        while stack:
            layer = stack.pop(0)
            if isinstance(layer, layers_lib.Layer) and layer not in found:
                found.append(layer)
                stack.extend(sublayers(layer))
        return found

    def _weight_layers(self) -> list:
        """The layers whose weights make the model's, in Keras order (none for a plain NNX module)."""
        return []

    def _weight_handles(self) -> list:
        """The model's weights as bf.Variable handles, in Keras's get_weights order, each once."""
        from batchfit.layers.variable import Variable, unique
        layers = self._weight_layers()
        if not layers:
            return [Variable(v, f"variable_{i}") for i, v in enumerate(layers_lib.keras_weight_variables(self._module))]
        return unique(handle for layer in layers for handle in layer.weights)

    def _weight_variables(self) -> list:
        """The model's weights as NNX variables, in Keras's get_weights order."""
        return [handle._home for handle in self._weight_handles()]

    def get_weights(self) -> list[np.ndarray]:
        """All weights as NumPy arrays, in Keras order (per layer: kernel, bias, ...)."""
        if not self.built:
            return []
        self._sync_module()
        return [np.array(v.get_value()) for v in self._weight_variables()]

    def set_weights(self, weights) -> None:
        """Set all weights from NumPy arrays in `get_weights()` order (the optimizer state is kept)."""
        from batchfit.layers.custom import set_weights
        self._sync_module()
        set_weights(self._weight_handles() if self.built else [], weights, f"model '{self.name}'")
        self._pull_module()

    def _take_edits(self) -> None:
        """After weights were set from outside any model (layer.set_weights, a handle's assign): read the
        module again. Its values are brought up to date first, so a model whose layers were not the ones
        set keeps what it trained."""
        if self._edits != _scope.edits and self._graph is not None:
            self._sync_module()
            self._pull_module()

    def _pull_module(self) -> None:
        """Take the module's variables as the training state (after they were set from outside)."""
        if self._graph is not None:
            _, params, model_state = nnx.split(self._module, nnx.Param, ...)
            params, model_state = copy_tree((nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)))
            self._slot.put(self._slot.state._replace(params=params, model_state=model_state))
            self._synced, self._edits = self._slot.version, _scope.edits

