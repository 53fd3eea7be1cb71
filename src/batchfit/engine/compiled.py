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
from jax import lax

from batchfit.engine.state import Accumulated, Batch, TrainState
from batchfit.engine.step import (Program, Totals, accumulate_step, apply_accumulated, eval_step, initial_totals,
                                  predict_step, train_step, with_results)

__all__ = ["Executables", "build_executables", "start_state", "results"]

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


def results(totals, names) -> dict:
    """{name: sum / count} of every accumulator row, in traced code (0 where nothing was counted)."""
    total, count = totals[:, 0], totals[:, 1]
    values = jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
    return {name: values[i] for i, name in enumerate(names)}


def _slice(tree, start, size):
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size):
    """Run `step(carry, batch) -> (carry, out)` over num_steps full batches, then the tail.

    The rows are contiguous from `start`, or (a shuffled epoch) gathered by `order` once,
    so every batch is a contiguous slice either way.
    """
    if order is not None:
        data, start = jax.tree.map(lambda a: jnp.take(a, order, axis=0), data), 0
    outs = []
    if num_steps:
        carry, full = lax.scan(lambda c, i: step(c, Batch(*_slice(data, start + i * batch_size, batch_size))),
                               carry, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(full)
    if tail:
        carry, last = step(carry, Batch(*_slice(data, start + num_steps * batch_size, tail)))
        outs.append(jax.tree.map(lambda a: a[None], last))
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _fit_chunk(program, state, totals, acc, data, start, order, first, *, num_steps, tail, batch_size,
               accumulate):
    """The chunk's steps: one update per batch, or with `accumulate` > 1 an update after every
    `accumulate`-th batch of the epoch (batch index first + i), the group in progress carried in `acc`."""
    if accumulate == 1:
        def step(carry, batch):
            s, t = carry
            s, t, loss = train_step(program, s, t, batch)
            return (s, t), loss
        (state, totals), losses = _scan_chunk(step, (state, totals), data, start, order, num_steps, tail,
                                              batch_size)
    else:
        def step(carry, batch):
            s, t, a, j = carry
            s, t, a, loss = accumulate_step(program, s, t, a, batch)
            s, a = lax.cond((j + 1) % accumulate == 0, lambda: apply_accumulated(program, s, a), lambda: (s, a))
            return (s, t, a, j + 1), loss
        carry = (state, totals, acc, jnp.asarray(first, jnp.int32))
        (state, totals, acc, _), losses = _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size)
    totals = with_results(program, totals)
    return state, totals, acc, jnp.concatenate([losses, totals.rows.reshape(-1)])


def _eval_chunk(program, state, totals, data, start, order, *, num_steps, tail, batch_size):
    def step(t, batch):
        return eval_step(program, state, t, batch)
    return with_results(program, _scan_chunk(step, totals, data, start, order, num_steps, tail, batch_size)[0])


def _predict_chunk(program, state, x, start, *, num_steps, tail, batch_size):
    graph, outs = program.graph, []
    if num_steps:
        def body(_, i):
            return None, predict_step(graph, state, _slice(x, start + i * batch_size, batch_size))
        _, full = lax.scan(body, None, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), full))
    if tail:
        outs.append(predict_step(graph, state, _slice(x, start + num_steps * batch_size, tail)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _batch_logs(program, totals: Totals, loss, running: bool) -> dict:
    """The logs *_on_batch return: running means, or this batch's values with the raw loss L_b."""
    names = ("loss", *(m.name for m in program.metrics))
    logs = results(totals.rows, names) if program.metrics or running else {}
    return logs if running else {**logs, "loss": loss}


def _train_batch(program, state, batch, *, initial):
    state, totals, loss = train_step(program, state, initial, batch)
    return state, _batch_logs(program, with_results(program, totals), loss, False)


def _train_running(program, state, totals, batch, *, initial):
    state, totals, loss = train_step(program, state, initial if totals is None else totals, batch)
    totals = with_results(program, totals)
    return state, totals, _batch_logs(program, totals, loss, True)


def _test_batch(program, state, batch, *, initial):
    totals, loss = eval_step(program, state, initial, batch)
    return _batch_logs(program, with_results(program, totals), loss, False)


def _predict_batch(program, state, x):
    return predict_step(program.graph, state, x)


def _zero_accumulated(program, state):
    return Accumulated.zeros(state.params)


def start_state(program: Program, state: TrainState) -> TrainState:
    """`state` at step 0 with the optimizer's initial state, on copies of the weights (the module
    keeps its own buffers; training donates the state's): one compiled call, per compile()."""
    def start(state):
        params, model_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
        return TrainState(params, model_state, program.optimizer.init(params), jnp.zeros((), jnp.int32))
    return jax.jit(start)(state)


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

    initial = initial_totals(program.metrics)      # host arrays: constants of the *_on_batch programs
    return Executables(
        train_batch=jax.jit(updates(functools.partial(_train_batch, initial=initial)), donate_argnums=(0,)),
        train_running=jax.jit(updates(functools.partial(_train_running, initial=initial)), donate_argnums=(0,)),
        test_batch=jax.jit(reads(functools.partial(_test_batch, initial=initial))),
        predict_batch=jax.jit(reads(_predict_batch)),
        fit_chunk=jax.jit(updates(_fit_chunk), static_argnames=_CHUNK_SHAPE + ("accumulate",), donate_argnums=(0,)),
        apply_accumulated=jax.jit(updates(apply_accumulated), donate_argnums=(0,)),
        zero_accumulated=jax.jit(reads(_zero_accumulated)),
        eval_chunk=jax.jit(reads(_eval_chunk), static_argnames=_CHUNK_SHAPE),
        predict_chunk=jax.jit(reads(_predict_chunk), static_argnames=_CHUNK_SHAPE),
        initial_totals=initial,
    )
