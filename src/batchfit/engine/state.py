"""What every step carries (TrainState, Batch, the (sum, count) accumulators), and where training stands.

`Position` is the training state plus the loop's place in it: one pytree that can be copied
out (`model.get_position()`) and put back (`model.set_position(...)`), after which `fit`
continues bitwise as if it had never stopped.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["TrainState", "Batch", "Accumulated", "Position", "Slot", "ModelGraph", "split_module",
           "copy_tree", "zero_totals", "read_totals", "to_host", "place_record", "place_from_record"]


class Batch(NamedTuple):
    """One batch: inputs `x` (array or dict) [B, ...], targets `y` [B, ...], weights `w` [B] float32.

    `w` is None when every sample weighs 1 (no sample or class weights): nothing to transfer.
    """

    x: Any
    y: Any
    w: jax.Array


class TrainState(NamedTuple):
    """Everything one training step reads and writes, as plain dicts of arrays.

    params: the trainable nnx.Param values (a pure nested dict, so optax masks see names);
    model_state: every other variable (batch statistics, RNG keys and counts);
    opt_state: the optax state; step: the number of updates done (int32).
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array


class Accumulated(NamedTuple):
    """A gradient-accumulation group so far: the sum over its batches of d(sum_i w_i l_i)/d(theta),
    and its normalizer (the sum of n_b; of w_i with loss_reduction="weighted_mean")."""

    grads: Any
    count: jax.Array

    @staticmethod
    def zeros(params) -> "Accumulated":
        return Accumulated(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))


class Position(NamedTuple):
    """Where training stands: the TrainState and the loop's place, as one pytree.

    epoch: the epoch in progress (or the next one, when `batch` is 0);
    batch: the batches of `epoch` already trained;
    seed: the seed of the data order (shuffled arrays draw epoch e's order from (seed, e));
    totals: float32 [1 + metrics, 2], the epoch's running (sum, count) rows so far;
    batch_losses: float32 [batch], the raw loss of each batch of the epoch so far;
    accumulated: the gradient-accumulation group in progress (None without accumulate_steps);
    metric_states: the stateful metrics' variables so far, one tuple of arrays per metric (None:
    as their reset_state() leaves them);
    data_seeds: the seeds a bf.data.Dataset's shuffle(seed=None) steps drew (data/_seeds.py), put back
    on resume so that the dataset built again by a restarted job reads in the same order;
    validation_seed, validation_data_seeds: the same for fit's validation data (its order generation, its
    Dataset's drawn seeds; engine/validation.py), None where the position was taken without validation data.
    validation_place: (passes begun, batches read of the last one; 0 once it ran out) of validation data read
    `validation_steps` batches an epoch, each epoch reading on where the last stopped, at epoch `epoch`'s start
    (engine/validation.py); None for re-iterable validation data without validation_steps (for a one-shot
    iterator, a generator, it says how much of it was read or that it ran out: a resumed fit finds it run out).
    data_place: the same for the training data at (`epoch`, `batch`) (data/_stream_place.py): where a stream
    read `steps_per_epoch` batches an epoch, each epoch reading on, resumes; None for arrays and re-iterable
    streams without steps_per_epoch, which resume by skipping `batch` batches of epoch `epoch`.
    """

    train: TrainState
    epoch: int
    batch: int
    seed: int
    totals: np.ndarray
    batch_losses: np.ndarray
    accumulated: Accumulated | None = None
    metric_states: tuple | None = None
    data_seeds: tuple = ()
    validation_seed: int | None = None
    validation_data_seeds: tuple | None = None
    validation_place: tuple | None = None
    data_place: tuple | None = None


_PLACES = ("validation_place", "data_place")


def place_record(position: Position) -> dict:
    """A Position's `validation_place` and `data_place` as JSON for a checkpoint's record: [passes, batches]
    or None each."""
    places = {name: getattr(position, name) for name in _PLACES}
    return {name: None if place is None else [int(count) for count in place] for name, place in places.items()}


def place_from_record(record: dict) -> dict | None:
    """The fields `place_record` wrote, as tuples (None where a record written before a field was kept lacks
    it); None when one is not two counts (a damaged record)."""
    places = {}
    for name in _PLACES:
        place = record.get(name)
        counts = place is None or isinstance(place, list) and len(place) == 2 and all(
            isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in place)
        if not counts:
            return None
        places[name] = None if place is None else tuple(place)
    return places


class Slot:
    """The one place the training state lives between compiled calls, as their flat list of leaves.

    The loop reads it before every dispatch and writes it after, so a weight set by a callback
    is what the next step trains; `version` counts the writes (the model syncs its module
    when it is behind).
    """

    def __init__(self, state: TrainState):
        self.version = -1
        self.put(state)

    def put(self, state: TrainState) -> None:
        leaves, self.treedef = jax.tree.flatten(state)
        self.leaves = leaves

    @property
    def leaves(self) -> list:
        return self._leaves

    @leaves.setter
    def leaves(self, leaves: list) -> None:
        self._leaves = leaves
        self.version += 1

    @property
    def state(self) -> TrainState:
        return jax.tree.unflatten(self.treedef, self._leaves)


class ModelGraph(NamedTuple):
    """The static half of a split NNX module: one graphdef per mode plus the state layouts.

    `variables`: the module's own nnx.Variable objects in the leaf order of (params,
    model_state), so trained values are written back one `set_value` each.
    """

    train: Any
    eval: Any
    params_def: Any
    model_state_def: Any
    variables: tuple = ()

    def merge(self, params, model_state, training: bool):
        """Rebuild the module inside traced code from pure-dict params and model state."""
        graph = self.train if training else self.eval
        p = jax.tree.unflatten(self.params_def, jax.tree.leaves(params))
        s = jax.tree.unflatten(self.model_state_def, jax.tree.leaves(model_state))
        return nnx.merge(graph, p, s, copy=True)

    def split(self, module):
        """The pure-dict (params, model_state) of a module built by `merge`."""
        _, p, s = nnx.split(module, nnx.Param, ...)
        return nnx.to_pure_dict(p), nnx.to_pure_dict(s)


def split_module(module: nnx.Module):
    """Split `module` once: (ModelGraph, params, model_state) with params and state as pure dicts."""
    module.train()
    train_graph, params, model_state = nnx.split(module, nnx.Param, ...)
    module.eval()
    eval_graph, _, _ = nnx.split(module, nnx.Param, ...)
    is_variable = lambda v: isinstance(v, nnx.Variable)
    variables = tuple(v for part in (params, model_state) for v in jax.tree.leaves(part, is_leaf=is_variable))
    graph = ModelGraph(train_graph, eval_graph, jax.tree.structure(params), jax.tree.structure(model_state),
                       variables)
    return graph, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))   # fresh device buffers (PRNG keys included)


def zero_totals(num_metrics: int) -> np.ndarray:
    """Fresh accumulators: float32 [1 + num_metrics, 2] of (sum, count) rows for the loss and each metric.

    One host array, so starting an epoch dispatches nothing and reading the logs is one copy.
    Row 0 is the loss (sum of n_b * L_b, sum of n_b); row 1 + j metric j (sum of w_i v_i, sum of w_i).
    """
    return np.zeros((1 + num_metrics, 2), np.float32)


WAIT_BEFORE_BLOCKING = 1e-3    # seconds; to_host's polling, bounded so a long computation costs little


def to_host(array, dtype=None) -> np.ndarray:
    """`np.asarray(array, dtype)`, polling the device value for up to WAIT_BEFORE_BLOCKING seconds
    before blocking on it. A thread that blocks sleeps, and on a virtual machine a sleeping core
    wakes slowly and with cold caches: on a small model that is a large share of a fit call, and
    every line of Python after it runs slower. Polling keeps the thread awake through a short wait."""
    is_ready = getattr(array, "is_ready", None)          # a host array has none: it is ready
    if is_ready is not None and not is_ready():
        end = time.perf_counter() + WAIT_BEFORE_BLOCKING
        while not is_ready() and time.perf_counter() < end:
            pass
    return np.asarray(array, dtype)


def read_totals(totals, names) -> dict:
    """{name: sum / count} from accumulators read to the host (0.0 where nothing was counted); a row
    named None is not reported."""
    rows = to_host(totals, np.float64)
    return {name: float(t / c) if c > 0 else 0.0 for name, (t, c) in zip(names, rows.tolist()) if name is not None}
