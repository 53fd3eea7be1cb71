"""The compiled drivers of the one step: jit(step) for *_on_batch, jit(lax.scan(step)) for fit.

A fit chunk is K steps over full batches of an on-device array, optionally followed by the
partial last batch at its true size: one dispatch, fixed shapes, exact numbers.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from batchfit import losses as losses_lib
from batchfit.data.arrays import DeviceData
from batchfit.engine.state import Batch, zero_totals
from batchfit.engine.step import (Program, accumulate_step, apply_accumulated, eval_step, predict_step,
                                  train_step, zero_accumulated)

__all__ = ["Executables", "DeviceData", "build_executables", "results"]


class Executables(NamedTuple):
    """The jitted entry points of one compiled model (each caches one executable per shape).

    state: the TrainState's leaves, as a list (see build_executables); totals: the float32
    [1 + metrics, 2] accumulators of state.py (None: start from zero).
    """

    train_batch: Callable   # (state, batch) -> (state, logs): this batch's values, the raw loss L_b
    train_running: Callable  # (state, totals | None, batch) -> (state, totals, logs): running means
    test_batch: Callable    # (state, batch) -> logs
    predict_batch: Callable  # (state, x) -> y_pred
    fit_chunk: Callable     # (*, num_steps, tail, batch_size) -> jitted (state, totals, data, start, order, check)
                            #   -> (state, totals, report): report = the K batch losses, totals.ravel(), ok;
                            #   check: the value checks to run on data first (_data_ok); ok 0.0: refused, no step
    fit_chunk_accumulate: Callable  # (state, totals, acc, data, start, order, check, first, *, accumulate, ...)
                                    #   -> (state, totals, acc, report)
    apply_accumulated: Callable     # (state, acc) -> (state, empty acc): the update of a group cut short
    zero_accumulated: Callable      # (state) -> an empty group
    eval_chunk: Callable    # (state, totals, data, start, order, *, ...) -> (totals, losses)
    predict_chunk: Callable  # (state, x, start, *, num_steps, tail, batch_size) -> (full, tail)


def results(totals, names) -> dict:
    """{name: sum / count} of every accumulator row, in traced code (0 where nothing was counted)."""
    total, count = totals[:, 0], totals[:, 1]
    values = jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
    return {name: values[i] for i, name in enumerate(names)}


def _slice(tree, start, size):
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size, run=None):
    """Run `step(carry, batch) -> (carry, out)` over num_steps full batches, then the tail;
    none of them when `run` (a traced bool) is False (the carry comes back as it was, the
    outputs are zeros; with `run`, each step's output is one scalar, stacked as float32).

    The rows are contiguous from `start`, or (a shuffled epoch) gathered by `order` once,
    so every batch is a contiguous slice either way.
    """
    if order is not None:
        data, start = jax.tree.map(lambda a: jnp.take(a, order, axis=0), data), 0
    elif run is not None:    # copied out of the argument first: slicing batches from an argument inside
        data, start = _slice(data, start, num_steps * batch_size + tail), 0   # the while below is slower

    def chunk(carry):
        outs = []
        if num_steps:
            carry, full = lax.scan(lambda c, i: step(c, Batch(*_slice(data, start + i * batch_size, batch_size))),
                                   carry, jnp.arange(num_steps, dtype=jnp.int32))
            outs.append(full)
        if tail:
            carry, last = step(carry, Batch(*_slice(data, start + num_steps * batch_size, tail)))
            outs.append(jax.tree.map(lambda a: a[None], last))
        return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
    if run is None:
        return chunk(carry)

    def once(c):                       # the chunk, run once or never
        done, c, _ = c
        c, outs = chunk(c)
        return done + 1, c, outs.astype(jnp.float32)
    # A while loop updates its carry in place (a cond around the scan copies the state), and
    # the scan inside keeps its static trip count (a dynamic one makes XLA's loop slower).
    _, carry, outs = lax.while_loop(lambda c: c[0] < run.astype(jnp.int32), once,
                                    (jnp.int32(0), carry, jnp.zeros(num_steps + (tail > 0), jnp.float32)))
    return carry, outs


def _zero_if_finite(tree):
    """0.0 when every float leaf of `tree` is free of NaN and inf, else NaN (integer leaves always are).

    The sum of a * 0 is exactly 0 for finite values, whatever their size, and NaN as soon as
    one is NaN or inf: one exact test, no overflow to fall back from. It compiles to the kind
    of sum the step already has; an and-reduction of is-finite compiles kernels of its own,
    each compiled apart in a fresh process (the first article's epoch: 73 kernels with those,
    66 with these sums).
    """
    floats = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
    return sum((jnp.sum(a * jnp.zeros((), a.dtype), dtype=jnp.promote_types(a.dtype, jnp.float32)) for a in floats),
               jnp.float32(0.0))


def _data_ok(program, state, data, check):
    """The value checks the host left to this call, as a traced bool: `check` bit 1 x finite,
    2 y finite, 4 y valid targets for the loss (losses.num_invalid_targets). Computed only when asked.

    For a loss that checks its targets, valid targets are finite and bit 2 never comes without
    bit 4 (model._check_bits): the count of invalid targets is y's only test."""
    def checked():
        x_ok = (_zero_if_finite(data.x) == 0) | (check & 1 == 0)
        if not losses_lib.checks_targets(program.loss):
            return x_ok & ((_zero_if_finite(data.y) == 0) | (check & 2 == 0))
        outputs = jax.eval_shape(lambda x: predict_step(program.graph, state, x), data.x)
        invalid = losses_lib.num_invalid_targets(program.loss, data.y, jax.tree.leaves(outputs)[0].shape[-1])
        return x_ok & ((invalid == 0) | (check & 4 == 0))
    return lax.cond(check != 0, checked, lambda: jnp.bool_(True))


def _fit_chunk(program, state, totals, data, start, order, check, *, num_steps, tail, batch_size):
    def step(carry, batch):
        s, t, loss = train_step(program, *carry, batch)
        return (s, t), loss
    run = _data_ok(program, state, data, check)
    (state, totals), losses = _scan_chunk(step, (state, totals), data, start, order, num_steps, tail, batch_size,
                                          run)
    return state, totals, _report(losses, totals, run)


def _report(losses, totals, run):
    """One array the host reads in one copy: the K batch losses, totals.ravel(), then 1.0 (0.0: refused)."""
    return jnp.concatenate([losses, totals.reshape(-1), run.astype(jnp.float32)[None]])


def _fit_chunk_accumulate(program, state, totals, acc, data, start, order, check, first, *, accumulate, num_steps,
                          tail, batch_size):
    """fit_chunk with gradient accumulation: an update after every `accumulate`-th batch of the
    epoch (batch index first + i); the group in progress is carried out in `acc`."""
    def step(carry, batch):
        s, t, a, j = carry
        s, t, a, loss = accumulate_step(program, s, t, a, batch)
        s, a = lax.cond((j + 1) % accumulate == 0, lambda: apply_accumulated(program, s, a), lambda: (s, a))
        return (s, t, a, j + 1), loss
    carry = (state, totals, acc, jnp.asarray(first, jnp.int32))
    run = _data_ok(program, state, data, check)
    (state, totals, acc, _), losses = _scan_chunk(step, carry, data, start, order, num_steps, tail, batch_size, run)
    return state, totals, acc, _report(losses, totals, run)


def _zero_accumulated(program, state):
    return zero_accumulated(state)


def _eval_chunk(program, state, totals, data, start, order, *, num_steps, tail, batch_size):
    def step(t, batch):
        return eval_step(program, state, t, batch)
    return _scan_chunk(step, totals, data, start, order, num_steps, tail, batch_size)


def _predict_chunk(program, state, x, start, *, num_steps, tail, batch_size):
    graph = program.graph
    outs = []
    if num_steps:
        def body(_, i):
            return None, predict_step(graph, state, _slice(x, start + i * batch_size, batch_size))
        _, full = lax.scan(body, None, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), full))
    if tail:
        outs.append(predict_step(graph, state, _slice(x, start + num_steps * batch_size, tail)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _batch_logs(program, totals, loss, running: bool) -> dict:
    """The logs *_on_batch return: running means, or this batch's values with the raw loss L_b."""
    names = ("loss", *(m.name for m in program.metrics))
    logs = results(totals, names) if program.metrics or running else {}
    return logs if running else {**logs, "loss": loss}


def _train_batch(program, state, batch):
    state, totals, loss = train_step(program, state, zero_totals(len(program.metrics)), batch)
    return state, _batch_logs(program, totals, loss, False)


def _train_running(program, state, totals, batch):
    if totals is None:
        totals = zero_totals(len(program.metrics))
    state, totals, loss = train_step(program, state, totals, batch)
    return state, totals, _batch_logs(program, totals, loss, True)


def _test_batch(program, state, batch):
    totals, loss = eval_step(program, state, zero_totals(len(program.metrics)), batch)
    return _batch_logs(program, totals, loss, False)


def _predict_batch(program, state, x):
    return predict_step(program.graph, state, x)


def build_executables(program: Program, state_def) -> Executables:
    """jit every entry point once for `program`; the state's buffers are donated in training.

    The state crosses every jit boundary as a flat list of its leaves, rebuilt into the
    TrainState (structure `state_def`) inside: flattening and rebuilding the nested pytree
    at each call costs several microseconds, a tenth of a small model's train_on_batch.
    For the same reason fit_chunk is one jit per chunk shape, not one with static keyword
    arguments (those add about 10 us to every dispatch).
    """
    def reads(fn):                  # fn(program, state, ...) -> outputs
        return lambda leaves, *a, **k: fn(program, jax.tree.unflatten(state_def, leaves), *a, **k)

    def updates(fn):                # fn(program, state, ...) -> (state, *outputs)
        def flat(leaves, *a, **k):
            state, *outs = fn(program, jax.tree.unflatten(state_def, leaves), *a, **k)
            return (jax.tree.leaves(state), *outs)
        return flat

    def per_shape(fn):              # fit's hot call: jitted without static keyword arguments (below)
        @functools.lru_cache(maxsize=None)
        def shaped(*, num_steps, tail, batch_size):
            return jax.jit(functools.partial(updates(fn), num_steps=num_steps, tail=tail, batch_size=batch_size),
                           donate_argnums=(0,))
        return shaped

    static = ("num_steps", "tail", "batch_size")
    return Executables(
        train_batch=jax.jit(updates(_train_batch), donate_argnums=(0,)),
        train_running=jax.jit(updates(_train_running), donate_argnums=(0,)),
        test_batch=jax.jit(reads(_test_batch)),
        predict_batch=jax.jit(reads(_predict_batch)),
        fit_chunk=per_shape(_fit_chunk),
        fit_chunk_accumulate=jax.jit(updates(_fit_chunk_accumulate), static_argnames=static + ("accumulate",),
                                     donate_argnums=(0,)),
        apply_accumulated=jax.jit(updates(apply_accumulated), donate_argnums=(0,)),
        zero_accumulated=jax.jit(reads(_zero_accumulated)),
        eval_chunk=jax.jit(reads(_eval_chunk), static_argnames=static),
        predict_chunk=jax.jit(reads(_predict_chunk), static_argnames=static),
    )
