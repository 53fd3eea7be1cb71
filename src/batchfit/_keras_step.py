"""Keras's JAX training-step protocol on bf.Model: the model side of a custom `train_step`.

A subclass that defines `train_step(self, state, data) -> (logs, state)` (and `test_step`) as the
Keras guide "Customizing what happens in fit() with JAX" writes them trains with `fit`, inside
the same compiled loop as the built-in step (engine/custom.py turns the training state into
Keras's four lists and back). This mixin gives the step what it calls: `stateless_call`,
`compute_loss` / `stateless_compute_loss`, `optimizer.stateless_apply`, the variable lists and
`metrics` (the Metric objects the model holds, unless a subclass lists its own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from batchfit import layers as layers_lib
from batchfit import optimizers as optimizers_lib
from batchfit._handling import OptimizerView
from batchfit._metric_base import Mean, Metric
from batchfit._settings import settings_from
from batchfit.engine import custom as custom_lib
from batchfit.engine.compiled import build_executables
from batchfit.engine.state import Batch, split_module
from batchfit.optimizers import _stateless
from batchfit.optimizers._loss_scale import scale_of

__all__ = ["KerasStep", "StepOptimizerView"]


def _orders(graph, handles) -> tuple:
    """(param leaf indices in the order of the trainable handles, state leaf indices in the order of the
    non-trainable ones). A state leaf no handle names (a Dropout's random stream) stays right after the
    named leaf before it in the module's leaf order, so each sub-model's state is one contiguous slice."""
    num_params = graph.params_def.num_leaves
    where = {id(v): i for i, v in enumerate(graph.variables)}
    found = [where[id(h._home)] for h in handles if id(h._home) in where]
    train = [i for i in found if i < num_params]
    train += [i for i in range(num_params) if i not in train]
    rank = {i - num_params: k for k, i in enumerate(i for i in found if i >= num_params)}
    keys, last = [], -1
    for leaf in range(graph.model_state_def.num_leaves):
        last = rank.get(leaf, last)
        keys.append(last if leaf in rank else last + 0.5)
    return tuple(train), tuple(sorted(range(len(keys)), key=keys.__getitem__))


class _StateVariable:
    """A state leaf no weight handle names (a random stream's key or count), listed in
    `non_trainable_variables` as Keras lists a Dropout's seed state: `.value`, `.shape`."""

    def __init__(self, variable):
        self._variable = variable

    @property
    def value(self):
        return self._variable.get_value()

    @property
    def shape(self) -> tuple:
        return tuple(jnp.shape(self.value))


def _regularized(module) -> bool:
    """Whether any layer of `module` has a weight regularizer."""
    from flax import nnx
    return module is not None and any(getattr(node, "weight_regularizers", ()) or getattr(node, "regularized", ())
                                      for _, node in nnx.iter_graph(module))


def _sub_models(model, seen=None) -> list:
    """The models held in `model`'s attributes, and theirs (a GAN's generator and discriminator)."""
    seen = set() if seen is None else seen
    found = []
    for value in vars(model).values():
        if isinstance(value, KerasStep) and id(value) not in seen:
            seen.add(id(value))
            found += [value, *_sub_models(value, seen)]
    return found


class StepOptimizerView(OptimizerView):
    """`model.optimizer` with Keras's `stateless_apply` over the model's trainable variables (lists)."""

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """(new trainable values, new optimizer state leaves): the compiled optimizer's update, as Keras's."""
        model = self._model
        graph, train_order, _, _ = model._keras_cache()
        tx = model._settings.optimizer
        grads, values = list(grads), list(trainable_variables)
        if not len(grads) == len(values) == len(train_order):
            raise ValueError(f"optimizer.stateless_apply(): got {len(grads)} gradients and {len(values)} variables; "
                             f"the model has {len(train_order)} trainable variables. Pass lists in the order of "
                             f"model.trainable_variables (the step's `trainable_variables`).")
        def tree(items):
            leaves = [None] * len(train_order)
            for k, i in enumerate(train_order):
                leaves[i] = jnp.asarray(items[k])
            return jax.tree.unflatten(graph.params_def, leaves)
        params = tree(values)
        layout = jax.tree.structure(jax.eval_shape(tx.init, params))
        state = jax.tree.unflatten(layout, [jnp.asarray(v) for v in optimizer_variables])
        updates, state = tx.update(tree(grads), state, params)
        new = jax.tree.leaves(optax.apply_updates(params, updates))
        return [new[i] for i in train_order], jax.tree.leaves(state)

    def scale_loss(self, loss):
        """Keras's `optimizer.scale_loss`: the loss times the current loss scale when compile() made the
        optimizer a LossScaleOptimizer (a "mixed_float16" policy), else the loss. A custom step that
        differentiates the scaled loss gets the right update: stateless_apply divides by the scale."""
        scale = _stateless.loss_scale()
        if scale is None and self._model.built and not isinstance(loss, jax.core.Tracer):
            scale = scale_of(self._state().opt_state)          # outside a step: the compiled state's
        return loss if scale is None else loss * scale


class KerasStep:
    """Keras's stateless model API, mixed into bf.Model; the custom step is found and traced here."""

    # ----- what the step reads ---------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        """The trainable weights (bf.Variable handles), in the order of the step's `trainable_variables`."""
        return [h for h in self._keras_cache()[3] if h.trainable] if self.built else []

    @property
    def non_trainable_variables(self) -> list:
        """One entry per value of the step's `non_trainable_variables`, in its order: the non-trainable
        weights (handles) and the random streams' state (Keras's seed-generator variables), so that a
        sub-model's slice is `non_trainable[:len(sub.non_trainable_variables)]`, as in Keras."""
        if not self.built:
            return []
        graph, _, state_order, handles = self._keras_cache()
        named = {id(h._home): h for h in handles if not h.trainable}
        state = [graph.variables[graph.params_def.num_leaves + i] for i in state_order]
        in_state = {id(v) for v in state}
        frozen = [h for h in handles if not h.trainable and id(h._home) not in in_state]   # frozen params
        return frozen + [named[id(v)] if id(v) in named else _StateVariable(v) for v in state]

    @property
    def metrics(self) -> list:
        """Keras's list: with a compiled loss and a custom step, Mean("loss") and the compiled metrics; then
        the metric objects the model holds in its attributes (Keras tracks them). Override to list yours."""
        compiled = self.__dict__.get("_compiled_metrics", ())
        return [*compiled, *(v for v in vars(self).values() if isinstance(v, Metric))]

    @property
    def metrics_variables(self) -> list:
        """Every variable of `metrics`, in order: the step's `metrics_variables`."""
        return [v for metric in self.metrics for v in metric.variables]

    @property
    def optimizer(self):
        return None if self._settings is None else StepOptimizerView(self)

    # ----- what the step calls -----------------------------------------------------------

    def _keras_cache(self) -> tuple:
        """(graph, train order, state order, weight handles) of this model's own module (a sub-model:
        its own split). Made outside any trace (_trace_custom warms it): reading handles syncs modules."""
        cache = self.__dict__.get("_keras_cached")
        graph = self._graph if self._graph is not None else (cache[0] if cache else split_module(self.module)[0])
        if cache is None or cache[0] is not graph:
            handles = self._weight_handles()
            cache = self.__dict__["_keras_cached"] = (graph, *_orders(graph, handles), handles)
        return cache

    def stateless_call(self, trainable_variables, non_trainable_variables, *args, training=False,
                       return_losses=False, **kwargs):
        """The model's output at the values given, as a pure function: (y_pred, non_trainable_variables)
        (and the layers' losses, none here, with return_losses=True)."""
        graph, _, state_order, _ = self._keras_cache()
        module = self._merged(trainable_variables, non_trainable_variables, training, "stateless_call")
        y_pred = self._present(module(self._structure_x(args[0]), *args[1:], **kwargs))
        new = jax.tree.leaves(graph.split(module)[1])
        out = (y_pred, [new[i] for i in state_order])
        return (*out, []) if return_losses else out

    def _merged(self, trainable_variables, non_trainable_variables, training, caller: str):
        """This model's module at the values of Keras's two lists (traced code: nnx.merge)."""
        graph, train_order, state_order, _ = self._keras_cache()
        params = [None] * len(train_order)
        state = [None] * len(state_order)
        for values, order, leaves, what in ((trainable_variables, train_order, params, "trainable_variables"),
                                            (non_trainable_variables, state_order, state, "non_trainable_variables")):
            if len(values) != len(order):
                raise ValueError(f"{caller}(): got {len(values)} {what}; model '{self.name}' has {len(order)}. "
                                 f"Pass the lists the step's `state` holds (or model.{what}), in order.")
            for k, i in enumerate(order):
                leaves[i] = jnp.asarray(values[k])
        return graph.merge(params, state, bool(training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The batch loss as Keras's: the compiled loss, sum_i w_i l_i / B, plus the layers' regularization
        penalties R(theta) (Keras's `self.losses`), at the weights stateless_compute_loss was given (outside
        it: the model's current weights)."""
        if self._settings is None or self._settings.loss is None:
            raise ValueError("compute_loss() needs the loss given to compile(loss=...); this model was compiled "
                             "without one. Compute the loss in train_step yourself, or compile with a loss.")
        per_sample = self._settings.loss.per_sample(y, y_pred)
        weighted = per_sample if sample_weight is None else per_sample * sample_weight
        return jnp.sum(weighted) / per_sample.shape[0] + self._penalty(y_pred)

    def _penalty(self, y_pred):
        """R(theta) at the weights stateless_compute_loss bound; 0.0 for a model without regularizers."""
        bound = self.__dict__.get("_loss_at")
        if bound:
            return layers_lib.regularization_penalty(self._merged(*bound[-1], True, "stateless_compute_loss"))
        if not _regularized(self._module):
            return jnp.zeros((), jnp.float32)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(y_pred)):
            raise ValueError("compute_loss() inside a training step cannot know which weights to differentiate "
                             "the regularization penalties at. Call self.stateless_compute_loss(trainable_variables, "
                             "non_trainable_variables, metrics_variables, x=x, y=y, y_pred=y_pred), as Keras's "
                             "JAX guide does.")
        return layers_lib.regularization_penalty(self.module)

    def stateless_compute_loss(self, trainable_variables, non_trainable_variables, metrics_variables, x=None,
                               y=None, y_pred=None, sample_weight=None, training=True):
        """`compute_loss` as Keras's pure form: (loss, (trainable, non_trainable, metrics variables)), its
        regularization penalties at `trainable_variables`."""
        bound = self.__dict__.setdefault("_loss_at", [])
        bound.append((trainable_variables, non_trainable_variables))
        try:
            loss = self.compute_loss(x, y, y_pred, sample_weight, training)
        finally:
            bound.pop()
        return loss, (trainable_variables, non_trainable_variables, metrics_variables)

    # ----- the custom step, found and traced ------------------------------------------------

    def _settings_from(self, optimizer, loss, metrics, **kwargs):
        """compile()'s Settings; a model with its own train_step may leave the loss out (Keras's GAN)."""
        if loss is None and self._has_custom_step():
            settings = settings_from(optimizer, "mse", metrics, **kwargs)
            settings = settings._replace(loss=None, arguments={**settings.arguments, "loss": None})
        else:
            settings = settings_from(optimizer, loss, metrics, **kwargs)
        custom = self._has_custom_step() and settings.loss is not None
        self.__dict__["_compiled_metrics"] = (Mean(name="loss"), *settings.metrics) if custom else ()
        return settings

    def _has_custom_step(self) -> bool:
        return callable(getattr(type(self), "train_step", None))

    def _extra_optimizers(self) -> tuple:
        """(attribute name, optimizer) of the batchfit optimizers the model holds (a GAN's d_optimizer)."""
        return tuple((k, v) for k, v in vars(self).items() if isinstance(v, optimizers_lib.Optimizer))

    def _custom_step(self):
        """The engine's CustomStep for this compile() (traced, or not yet), or None for a model without its
        own train_step. An uncompiled model gets one too: predict runs its predict_step."""
        own = lambda name: getattr(self, name) if callable(getattr(type(self), name, None)) else None
        if not self._has_custom_step():       # a predict_step alone: fit and evaluate stay built in
            predict = own("predict_step")
            return None if predict is None else custom_lib.CustomStep(
                None, None, custom_lib.Layout(*self._keras_cache()[1:3]), predict=predict)
        traced = self.__dict__.get("_custom_traced")
        if traced is not None and traced[0] is self._settings:
            return traced[1]
        layout = custom_lib.Layout(*self._keras_cache()[1:3])
        return custom_lib.CustomStep(self.train_step, own("test_step"), layout, predict=own("predict_step"))

    def _needs_targets(self):
        """fit's `need_y` for as_source: None (optional: Keras passes the step what the data holds) for a
        model with its own train_step."""
        return None if self._has_custom_step() else True

    def _log_names(self, mode: str) -> tuple:
        """The metric names fit ("train") or evaluate and validation ("test") read the Totals rows with."""
        traced = self.__dict__.get("_custom_traced")
        if self._has_custom_step() and traced is not None and traced[0] is self._settings:
            return custom_lib.logged(traced[1], mode)
        return self._settings.names[1:]

    def _trace_custom(self, batch) -> None:
        """Trace the custom step once per compile() on `batch`'s shapes: its log names, the state the other
        optimizers start from; then the compiled entry points are built for them."""
        if not self._has_custom_step() or self._settings is None:
            return
        self._executables(batch.x)
        traced = self.__dict__.get("_custom_traced")
        if traced is not None and traced[0] is self._settings:
            return
        for part in (self, *self._all_layers(), *_sub_models(self)):   # handles and layouts, read before any trace
            if isinstance(part, KerasStep) and part.built:
                part._keras_cache()
        custom = self._custom_step()._replace(metrics_initial=tuple(
            np.asarray(v) for m in self.metrics for v in m.stateless_reset_state()))
        shapes, logs = self._probe(custom, batch)
        test_logs = self._probe_test(custom, batch)
        extras = tuple((name, opt) for name, opt in self._extra_optimizers() if id(opt) in shapes)
        state = self._slot.state
        if extras:
            starts = {name: jax.tree.leaves(opt.to_optax().init([jnp.zeros(s.shape, s.dtype) for s in shapes[id(opt)]]))
                      for name, opt in extras}
            self._slot.put(state._replace(opt_state=(state.opt_state, starts)))
        names = tuple(name for name in logs if name != "loss")
        names += tuple(name for name in test_logs if name != "loss" and name not in names)
        running = frozenset(m.name for m in self.metrics) & (frozenset(logs) | frozenset(test_logs))
        custom = custom._replace(names=names, running=running, has_loss="loss" in logs, extras=extras,
                                 train_logs=frozenset(logs), test_logs=frozenset(test_logs))
        self._settings = self._settings._replace(names=("loss", *names))
        self.__dict__["_custom_traced"] = (self._settings, custom)
        self._exe, self._running = build_executables(self._program(), self._slot.treedef), None

    def _probe(self, custom, batch) -> tuple:
        """jax.eval_shape of the user's train_step: ({id(optimizer): shapes it updated}, the logs' names)."""
        found = {}
        totals = custom_lib.initial_totals(custom)

        def probe(state, batch):
            with _stateless.binding({}) as bound:
                logs, _ = custom.train(custom_lib.to_keras(custom, state, totals.states[0]), custom_lib.as_data(batch))
            found.update(bound.get("shapes", {}))
            return custom_lib.flat_logs(logs)
        logs = jax.eval_shape(probe, self._slot.state, _specs(batch))
        return found, logs

    def _probe_test(self, custom, batch) -> tuple:
        """The names of the logs the model's test_step reports, in its order (() without one)."""
        if custom.test is None:
            return ()
        totals = custom_lib.initial_totals(custom)

        def probe(state, batch):
            trainable, non_trainable, _, metric_values = custom_lib.to_keras(custom, state, totals.states[0])
            logs, _ = custom.test((trainable, non_trainable, metric_values), custom_lib.as_data(batch))
            return custom_lib.flat_logs(logs)
        return tuple(jax.eval_shape(probe, self._slot.state, _specs(batch)))


def _specs(batch) -> Batch:
    """`batch` as shapes and dtypes (for jax.eval_shape)."""
    spec = lambda a: None if a is None else jax.ShapeDtypeStruct(np.shape(a), a.dtype)
    return Batch(*(jax.tree.map(spec, part) for part in batch))
