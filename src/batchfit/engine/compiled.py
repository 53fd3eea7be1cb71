"""The compiled drivers of the one step: jit(step) for *_on_batch, jit(lax.scan(step)) for fit.

A fit chunk is K steps over full batches of an on-device array, optionally followed by the
partial last batch at its true size: one dispatch, fixed shapes, exact numbers.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from batchfit.data.arrays import DeviceData
from batchfit.engine.state import Batch, TrainState, zero_totals
from batchfit.engine.step import Program, eval_step, predict_step, train_step

__all__ = ["Executables", "DeviceData", "build_executables", "results"]


class Executables(NamedTuple):
    """The jitted entry points of one compiled model (each caches one executable per shape)."""

    train_batch: Callable   # (state, totals | None, batch) -> (state, totals, loss, results)
    test_batch: Callable    # (state, totals | None, batch) -> (totals, loss, results)
    predict_batch: Callable  # (state, x) -> y_pred
    fit_chunk: Callable     # (state, totals, data, start, *, num_steps, tail, batch_size)
    eval_chunk: Callable    # (state, totals, data, start, *, ...) -> (totals, losses)
    predict_chunk: Callable  # (state, x, start, *, num_steps, tail, batch_size) -> (full, tail)


def results(totals: dict) -> dict:
    """The running value of every accumulator, as device scalars."""
    return {name: acc.result() for name, acc in totals.items()}


def _slice(tree, start, size):
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _scan_chunk(step, carry, data, start, num_steps, tail, batch_size):
    """Run `step(carry, batch) -> (carry, out)` over num_steps full batches, then the tail.

    `data` is already in epoch order, so every batch is a contiguous slice (no gather).
    """
    outs = []
    if num_steps:
        def body(c, i):
            return step(c, Batch(*_slice(data, start + i * batch_size, batch_size)))
        carry, full = lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(full)
    if tail:
        carry, last = step(carry, Batch(*_slice(data, start + num_steps * batch_size, tail)))
        outs.append(jax.tree.map(lambda a: a[None], last))
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _fit_chunk(program, state, totals, data, start, *, num_steps, tail, batch_size):
    def step(carry, batch):
        s, t, loss = train_step(program, *carry, batch)
        return (s, t), loss
    (state, totals), losses = _scan_chunk(step, (state, totals), data, start, num_steps, tail, batch_size)
    return state, totals, losses


def _eval_chunk(program, state, totals, data, start, *, num_steps, tail, batch_size):
    def step(t, batch):
        return eval_step(program, state, t, batch)
    return _scan_chunk(step, totals, data, start, num_steps, tail, batch_size)


def _predict_chunk(graph, state, x, start, *, num_steps, tail, batch_size):
    outs = []
    if num_steps:
        def body(_, i):
            return None, predict_step(graph, state, _slice(x, start + i * batch_size, batch_size))
        _, full = lax.scan(body, None, jnp.arange(num_steps, dtype=jnp.int32))
        outs.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), full))
    if tail:
        outs.append(predict_step(graph, state, _slice(x, start + num_steps * batch_size, tail)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _train_batch(program, state, totals, batch):
    if totals is None:
        totals = zero_totals(m.name for m in program.metrics)
    state, totals, loss = train_step(program, state, totals, batch)
    return state, totals, loss, results(totals)


def _test_batch(program, state, totals, batch):
    if totals is None:
        totals = zero_totals(m.name for m in program.metrics)
    totals, loss = eval_step(program, state, totals, batch)
    return totals, loss, results(totals)


def build_executables(program: Program) -> Executables:
    """jit every entry point once for `program`; state and totals buffers are donated in training."""
    static = ("num_steps", "tail", "batch_size")
    return Executables(
        train_batch=jax.jit(partial(_train_batch, program), donate_argnums=(0,)),
        test_batch=jax.jit(partial(_test_batch, program)),
        predict_batch=jax.jit(partial(predict_step, program.graph)),
        fit_chunk=jax.jit(partial(_fit_chunk, program), static_argnames=static, donate_argnums=(0, 1)),
        eval_chunk=jax.jit(partial(_eval_chunk, program), static_argnames=static, donate_argnums=(1,)),
        predict_chunk=jax.jit(partial(_predict_chunk, program.graph), static_argnames=static),
    )
