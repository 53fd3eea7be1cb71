"""The compiled drivers of the one step: jit(step) for *_on_batch, jit(lax.scan(step)) for fit.

A fit chunk is K steps over full batches of an on-device array, optionally followed by the
partial last batch at its true size: one dispatch, fixed shapes, exact numbers. Each jitted
entry point keeps one executable per shape; nothing else is cached.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from batchfit.distribution import (across_processes, constrain_batch, constrain_processes, constrain_replicated,
                                   distribution, from_processes, own_rows)
from batchfit.engine import custom as custom_lib
from batchfit.engine.driver import loop_safe
from batchfit.engine.state import Accumulated, Batch, TrainState
from batchfit.engine.step import (Program, Totals, accumulate_step, apply_accumulated, eval_step, initial_totals,
                                  predict_step, train_step, with_results)

__all__ = ["Executables", "build_executables", "start_state", "results", "device_int"]

_CHUNK_SHAPE = ("num_steps", "tail", "batch_size")


class Executables(NamedTuple):
    """The jitted entry points of one compiled model.

    state: the TrainState's leaves, as a list (see build_executables); totals: step.Totals, the
    float32 [1 + metrics, 2] (sum, count) rows and the stateful metrics' variables (None: start afresh).
    Every totals an entry point returns has its stateful metrics' results in its rows (step.with_results).
    """

    train_batch: Callable   # (state, batch) -> (state, logs): this batch's values, the raw loss L_b
    train_running: Callable  # (state, totals | None, batch) -> (state, totals, logs): running means
    test_batch: Callable    # (state, batch) -> logs
    predict_batch: Callable  # (state, x) -> y_pred
    fit_chunk: Callable     # (state, totals, acc, data, start, order, first, *, num_steps, tail, batch_size,
                            #   accumulate) -> (state, totals, acc, report): report = the chunk's batch
                            #   losses, then totals.rows.ravel(), read by the host in one copy
    apply_accumulated: Callable     # (state, acc) -> (state, empty acc): the update of a group cut short
    zero_accumulated: Callable      # (state) -> an empty group
    eval_chunk: Callable    # (state, totals, data, start, order, *, num_steps, tail, batch_size) -> totals
    predict_chunk: Callable  # (state, x, start, *, num_steps, tail, batch_size) -> y_pred of the chunk
    initial_totals: Totals  # on the host: zero rows, the stateful metrics' reset_state() values
    fresh_totals: Totals    # initial_totals put on the device once: an epoch's or a pass's start sends nothing
    predict_step_batch: Callable | None = None  # (state, x) -> y_pred for predict_on_batch: the model's own
                                                # predict_step if it has one (predict_batch is its call)


def results(totals, names) -> dict:
    """{name: sum / count} of every accumulator row, in traced code (0 where nothing was counted)."""
    total, count = totals[:, 0], totals[:, 1]
    values = jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
    return {name: values[i] for i, name in enumerate(names)}


@functools.lru_cache(maxsize=4096)
def _device_int(i: int):
    return jax.device_put(np.int32(i))


def device_int(i: int):
    """A chunk's start row or first batch `i` as the int32 argument of a compiled call: put on the device
    once per value (a host scalar would be sent with every dispatch); across processes, where arguments
    are global values, the host scalar."""
    return np.int32(i) if across_processes() else _device_int(int(i))


def _fresh(initial: Totals) -> Totals:
    """`initial` on the device, where a compiled call's own host arguments go; across processes, itself."""
    return initial if across_processes() else jax.device_put(initial)


def _slice(tree, start, size):
    """Rows [start, start + size) of every array in `tree`: one batch [size, ...], split over the
    devices when a distribution is set (bf.distribution.constrain_batch; else nothing is added)."""
    if across_processes():          # [P, N, ...]: the rows of every process make one batch [P * size, ...]
        return constrain_batch(jax.tree.map(
            lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=1).reshape((-1,) + a.shape[2:]), tree))
    return constrain_batch(jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree))


def _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size):
    """Run `step(carry, batch) -> (carry, out)` over num_steps full batches, then the tail.

    The rows are contiguous from `start`, or (a shuffled epoch) gathered by `order` once,
    so every batch is a contiguous slice either way.
    """
    if order is not None:           # several processes: each gathers its own rows [P, N, ...] in the order
        axis = 1 if across_processes() else 0
        data, start = jax.tree.map(lambda a: jnp.take(a, order, axis=axis), data), 0
    outs = []
    if num_steps:
        carry, full = lax.scan(lambda c, i: step(c, Batch(*_slice(data, start + i * batch_size, batch_size))),
                               carry, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(full)
    if tail:
        carry, last = step(carry, Batch(*_slice(data, start + num_steps * batch_size, tail)))
        outs.append(jax.tree.map(lambda a: a[None], last))
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _own_steps(program: Program) -> bool:
    """Whether the model trains and tests with its own train_step / test_step (a predict_step alone: not)."""
    return program.custom is not None and program.custom.train is not None


def _train(program: Program, state, totals, batch):
    """The program's train step: the model's own (Keras's train_step protocol) or the built-in one."""
    if _own_steps(program):
        return loop_safe(functools.partial(custom_lib.custom_train_step, program.custom))(state, totals, batch)
    return loop_safe(functools.partial(train_step, program))(state, totals, batch)


def _eval(program: Program, state, totals, batch):
    """The program's eval step: the model's own test_step, or the built-in one."""
    if _own_steps(program):
        return loop_safe(functools.partial(custom_lib.custom_eval_step, program.custom))(state, totals, batch)
    return loop_safe(functools.partial(eval_step, program))(state, totals, batch)


def _predict(program: Program, state, x):
    """The program's predict step: the model's own predict_step, or the built-in one."""
    if program.custom is not None and program.custom.predict is not None:
        return loop_safe(functools.partial(custom_lib.custom_predict_step, program.custom))(state, x)
    return loop_safe(functools.partial(predict_step, program.graph))(state, x)


def _fit_chunk(program, state, totals, acc, data, start, order, first, *, num_steps, tail, batch_size,
               accumulate):
    """The chunk's steps: one update per batch, or with `accumulate` > 1 an update after every
    `accumulate`-th batch of the epoch (batch index first + i), the group in progress carried in `acc`."""
    if accumulate == 1:
        def step(carry, batch):
            s, t = carry
            s, t, loss = _train(program, s, t, batch)
            return (s, t), loss
        (state, totals), losses = _scan_chunk(step, (state, totals), data, start, order, num_steps, tail,
                                              batch_size)
    else:
        def step(carry, batch):
            s, t, a, j = carry
            s, t, a, loss = loop_safe(functools.partial(accumulate_step, program))(s, t, a, batch)
            s, a = lax.cond((j + 1) % accumulate == 0, lambda: apply_accumulated(program, s, a), lambda: (s, a))
            return (s, t, a, j + 1), loss
        carry = (state, totals, acc, jnp.asarray(first, jnp.int32))
        (state, totals, acc, _), losses = _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size)
    totals = with_results(program, totals)
    return state, totals, acc, jnp.concatenate([losses, totals.rows.reshape(-1)])


def _eval_chunk(program, state, totals, data, start, order, *, num_steps, tail, batch_size):
    def step(t, batch):
        return _eval(program, state, t, batch)
    return with_results(program, _scan_chunk(step, totals, data, start, order, num_steps, tail, batch_size)[0])


def _predict_chunk(program, state, x, start, *, num_steps, tail, batch_size):
    """The outputs of the chunk's rows [rows, ...]; across processes [P, rows, ...], row p on process p's
    devices: the outputs of process p's own rows, which `_own_outputs` hands that process."""
    outs, shared = [], across_processes()
    if num_steps:
        def body(_, i):
            return None, _predict(program, state, _slice(x, start + i * batch_size, batch_size))
        _, full = lax.scan(body, None, jnp.arange(num_steps, dtype=jnp.int32))     # [S, B, ...]
        if shared:                  # [S, P * b, ...] -> [P, S * b, ...]
            outs.append(jax.tree.map(
                lambda a: _by_process(a).swapaxes(0, 1).reshape((_num_processes(), -1) + a.shape[2:]), full))
        else:
            outs.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), constrain_replicated(full)))
    if tail:
        last = _predict(program, state, _slice(x, start + num_steps * batch_size, tail))
        outs.append(jax.tree.map(lambda a: _by_process(a[None])[0], last) if shared else last)
    if shared:
        return constrain_processes(jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _num_processes() -> int:
    return distribution().num_processes


def _by_process(outputs):
    """[S, P * b, ...] outputs of S global batches -> [S, P, b, ...]: the rows of each process apart."""
    return outputs.reshape(outputs.shape[:1] + (_num_processes(), -1) + outputs.shape[2:])


def _own_outputs(predict_chunk):
    """`predict_chunk` as the host calls it: across processes (decided when the model is compiled), each
    process gets the outputs of its own rows [rows, ...] (its part of [P, rows, ...]); else itself."""
    if not across_processes():
        return predict_chunk

    def call(*args, **kwargs):
        return jax.tree.map(own_rows, predict_chunk(*args, **kwargs))
    call.lower = predict_chunk.lower
    return call


def _batch_logs(program, totals: Totals, loss, running: bool, mode: str = "train") -> dict:
    """The logs *_on_batch return: running means, or this batch's values with the raw loss L_b; with a
    custom step, the logs that mode's step ("train" / "test") reports, rows as custom.log_rows left them."""
    if _own_steps(program):
        custom = program.custom
        reported = custom.train_logs if mode == "train" else custom.test_logs
        names = ("loss" if "loss" in reported else None, *custom_lib.logged(custom, mode))
        return {k: v for k, v in results(totals.rows, names).items() if k is not None}
    names = ("loss", *(m.name for m in program.metrics))
    logs = results(totals.rows, names) if program.metrics or running else {}
    return logs if running else {**logs, "loss": loss}


def _split_whole(batch):
    """A *_on_batch batch [B, ...], split over the devices when a distribution is set and B is a multiple
    of their count; else whole on every device (an uneven split of a call's own argument is refused by
    jax.sharding, and padding would change BatchNormalization's statistics). Across processes, the
    [P, b, ...] of every process's own batch (placed by `_from_processes`) joined into one [P * b, ...]."""
    current = distribution()
    if current is None:
        return batch
    if across_processes():
        return constrain_batch(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), batch))
    sizes = {a.shape[0] for a in jax.tree.leaves(batch)}
    return constrain_batch(batch) if len(sizes) == 1 and sizes.pop() % current.mesh.size == 0 else batch


def _from_processes(entry_point):
    """`entry_point(leaves, ..., batch)` as the host calls it: across processes (decided when the model is
    compiled), every process's own batch [b, ...] placed as one [P, b, ...] first (the shares must have equal
    shapes: checked in a collective, so every process calls it together); else itself."""
    if not across_processes():
        return entry_point

    def call(*args):
        return entry_point(*args[:-1], from_processes(args[-1]))
    call.lower = entry_point.lower
    return call


def _train_batch(program, state, batch, *, initial):
    state, totals, loss = _train(program, state, initial, _split_whole(batch))
    return state, _batch_logs(program, with_results(program, totals), loss, False)


def _train_running(program, state, totals, batch, *, initial):
    state, totals, loss = _train(program, state, initial if totals is None else totals, _split_whole(batch))
    totals = with_results(program, totals)
    return state, totals, _batch_logs(program, totals, loss, True)


def _test_batch(program, state, batch, *, initial):
    totals, loss = _eval(program, state, initial, _split_whole(batch))
    return _batch_logs(program, with_results(program, totals), loss, False, "test")


def _predict_batch(program, state, x):
    """The outputs of x [B, ...]. Across processes x is this process's own rows, whole on every device (the
    call also infers output shapes, so it takes host arrays as they are): each process gets its own outputs."""
    return predict_step(program.graph, state, x if across_processes() else _split_whole(x))


def _predict_step_batch(program, state, x):
    """predict_on_batch's outputs of x [B, ...]: _predict_batch, through the model's own predict_step."""
    return _predict(program, state, x if across_processes() else _split_whole(x))


def _zero_accumulated(program, state):
    return Accumulated.zeros(state.params)


def start_state(program: Program, state: TrainState) -> TrainState:
    """`state` at step 0 with the optimizer's initial state, on copies of the weights (the module
    keeps its own buffers; training donates the state's): one compiled call, per compile()."""
    def start(state):
        params, model_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
        return TrainState(params, model_state, program.optimizer.init(params), jnp.zeros((), jnp.int32))
    current = distribution()        # data parallel: the state replicated on every device of the mesh
    return (jax.jit(start) if current is None else jax.jit(start, out_shardings=current.replicated))(state)


def build_executables(program: Program, state_def) -> Executables:
    """jit every entry point once for `program`; the state's buffers are donated in training.

    The state crosses every jit boundary as a flat list of its leaves, rebuilt into the
    TrainState (structure `state_def`) inside, so the host never flattens the nested pytree.
    """
    def reads(fn):                  # fn(program, state, ...) -> outputs
        return lambda leaves, *a, **k: fn(program, jax.tree.unflatten(state_def, leaves), *a, **k)

    def updates(fn):                # fn(program, state, ...) -> (state, *outputs)
        def flat(leaves, *a, **k):
            state, *outs = fn(program, jax.tree.unflatten(state_def, leaves), *a, **k)
            return (jax.tree.leaves(state), *outs)
        return flat

    initial = (initial_totals(program.metrics) if not _own_steps(program)     # host arrays: constants of
               else custom_lib.initial_totals(program.custom))                # the *_on_batch programs
    return Executables(
        train_batch=_from_processes(jax.jit(updates(functools.partial(_train_batch, initial=initial)),
                                            donate_argnums=(0,))),
        train_running=_from_processes(jax.jit(updates(functools.partial(_train_running, initial=initial)),
                                              donate_argnums=(0,))),
        test_batch=_from_processes(jax.jit(reads(functools.partial(_test_batch, initial=initial)))),
        predict_batch=jax.jit(reads(_predict_batch)),
        fit_chunk=jax.jit(updates(_fit_chunk), static_argnames=_CHUNK_SHAPE + ("accumulate",), donate_argnums=(0,)),
        apply_accumulated=jax.jit(updates(apply_accumulated), donate_argnums=(0,)),
        zero_accumulated=jax.jit(reads(_zero_accumulated)),
        eval_chunk=jax.jit(reads(_eval_chunk), static_argnames=_CHUNK_SHAPE),
        predict_chunk=_own_outputs(jax.jit(reads(_predict_chunk), static_argnames=_CHUNK_SHAPE)),
        initial_totals=initial,
        fresh_totals=_fresh(initial),
        predict_step_batch=jax.jit(reads(_predict_step_batch)),
    )
