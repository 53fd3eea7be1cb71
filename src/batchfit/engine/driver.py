"""The driver `steps_per_execution="auto"` picks, and the rewrite that lets a convolution run in a loop.

A compiled loop (jit of a `lax.scan` of K steps) saves K - 1 dispatches, and on most models that
is all it changes. On XLA:CPU it cost far more than it saved on a convnet: XLA:CPU rewrites a
convolution into the layout its fast kernels take (batch, spatial..., feature; kernel spatial...,
in, out: its `convolution-canonicalization` pass) only in a program's top-level computation, not
inside a `while` loop body. The gradients of a convolution are never in that layout (the kernel's
gradient is `f01b_i01o->01bf`), so inside a loop they ran on XLA's naive convolution emitter, many
times slower (benchmarks/RESULTS.md, "Convnet", has the figures).

* `loop_safe(fn)` is that rewrite done before XLA sees the program: it evaluates fn's jaxpr with
  every convolution put in the canonical layout by explicit transposes (on the CPU only), and the
  kernel gradient of a layer with a one-channel input computed as one matmul over its patches (which
  XLA:CPU's convolution kernels, splitting their work over a batch of 1, run slower). The canonical
  convolution is the same arithmetic (bitwise the plain step's numbers); the matmul sums the same
  products in another order (float32 rounding). A loop of the rewritten step runs as fast per step as
  one step per call, and fit and train_on_batch both run it, so they agree bitwise.
* `steps_per_execution(...)` is what "auto" fuses: the callbacks' and the data's limit, or one step
  per call where the model's program holds a primitive that still loses inside a loop on this
  backend (LOOP_LOSERS, less what the compiled steps rewrite). The choice is made from the program
  (its forward pass, traced on abstract inputs once per compiled model), never from timings, so a
  fit's numbers do not depend on the load of the machine.
"""

from __future__ import annotations

import itertools
import logging
import math
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

from batchfit.data.stream import STREAM_MAX_STEPS

__all__ = ["Choice", "LOOP_LOSERS", "LOOP_SAFE_PLATFORMS", "choose", "loop_losers", "loop_safe", "primitives",
           "steps_per_execution"]

logger = logging.getLogger("batchfit")

# backend -> the primitives whose training step runs markedly slower inside a compiled loop body.
LOOP_LOSERS = {"cpu": frozenset({"conv_general_dilated"})}
# backend -> the primitives loop_safe rewrites there (so that they no longer lose in a loop).
LOOP_SAFE_PLATFORMS = {"cpu": frozenset({"conv_general_dilated"})}

_CONV = "conv_general_dilated"
_CALLS = ("pjit", "jit", "closed_call", "core_call")     # calls whose body loop_safe evaluates inline

_LOSERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # predict_batch -> (platform, losers)
_SAID: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # predict_batch -> the choices printed


# ----- loop_safe: every convolution in XLA:CPU's canonical layout ----------------------------------

def _canonical(eqn, lhs, rhs) -> tuple:
    """lhs, rhs of a convolution `eqn` transposed to XLA:CPU's canonical layout: lhs [batch, spatial..., feature],
    rhs [spatial..., in, out]; and the canonical dimension numbers."""
    spec, n = eqn.params["dimension_numbers"], lhs.ndim
    lhs = jnp.transpose(lhs, (spec.lhs_spec[0], *spec.lhs_spec[2:], spec.lhs_spec[1]))
    rhs = jnp.transpose(rhs, (*spec.rhs_spec[2:], spec.rhs_spec[1], spec.rhs_spec[0]))
    spatial = tuple(range(1, n - 1))
    return lhs, rhs, lax.ConvDimensionNumbers((0, n - 1, *spatial), (n - 1, n - 2, *range(n - 2)), (0, n - 1, *spatial))


def _from_canonical(eqn, out):
    """A canonical output [batch, spatial..., feature] in the layout of `eqn`'s out_spec."""
    out_spec, n = eqn.params["dimension_numbers"].out_spec, out.ndim
    source = {out_spec[0]: 0, out_spec[1]: n - 1, **{out_spec[2 + i]: 1 + i for i in range(n - 2)}}
    return jnp.transpose(out, tuple(source[axis] for axis in range(n)))


def _canonical_conv(eqn, lhs, rhs):
    """The convolution of `eqn` on lhs / rhs, computed as transpose -> canonical convolution -> transpose.

    Every parameter but the layout (strides, padding, dilations, groups, precision) is the eqn's own,
    so this is the same arithmetic in another memory order.
    """
    lhs, rhs, canonical = _canonical(eqn, lhs, rhs)
    return _from_canonical(eqn, eqn.primitive.bind(lhs, rhs, **{**eqn.params, "dimension_numbers": canonical}))


def _by_matmul(eqn) -> bool:
    """Whether `eqn` (a convolution) is the case _matmul_conv computes: a plain sliding window (stride,
    dilations and groups 1, no negative padding) over a batch of one, with fewer output positions than window
    taps. That is the kernel gradient of a layer whose input has one channel (a first layer on grey images):
    XLA:CPU's convolution kernels split their work over the batch and the output positions, here 1 and a few."""
    params, rhs, out = eqn.params, eqn.invars[1].aval, eqn.outvars[0].aval
    spec = params["dimension_numbers"]
    plain = (all(v == 1 for v in (*params["window_strides"], *params["lhs_dilation"], *params["rhs_dilation"]))
             and params["feature_group_count"] == params["batch_group_count"] == 1
             and all(p >= 0 for pair in params["padding"] for p in pair))
    positions = math.prod(out.shape[d] for d in spec.out_spec[2:])
    return (plain and out.shape[spec.out_spec[0]] == 1
            and positions < math.prod(rhs.shape[d] for d in spec.rhs_spec[2:]))


def _matmul_conv(eqn, lhs, rhs):
    """A plain convolution (_by_matmul) as one matmul over its patches: out[o, n, f] = sum over (c, k) of
    lhs[c, o + k, n] * rhs[c, k, f], the patches [c, k..., o, n] gathered by one slice per output position o.

    The products are the same as the convolution's; their sums run in another order (float32 rounding).
    lhs goes to [feature, spatial..., batch] and rhs to [in, spatial..., out]: for the kernel gradient of a
    channels-last layer these are the layouts its input and its output's gradient already have.
    """
    spec = eqn.params["dimension_numbers"]
    lhs = jnp.transpose(lhs, (spec.lhs_spec[1], *spec.lhs_spec[2:], spec.lhs_spec[0]))     # [C, S..., N]
    rhs = jnp.transpose(rhs, (spec.rhs_spec[1], *spec.rhs_spec[2:], spec.rhs_spec[0]))     # [C, K..., F]
    lhs = jnp.pad(lhs, ((0, 0), *eqn.params["padding"], (0, 0)))
    window = rhs.shape[1:-1]
    outputs = [s - k + 1 for s, k in zip(lhs.shape[1:-1], window)]
    patches = jnp.stack([lhs[(slice(None), *(slice(o, o + k) for o, k in zip(position, window)))]
                         for position in itertools.product(*map(range, outputs))], axis=-2)   # [C, K..., O, N]
    out = lax.dot_general(patches.reshape(math.prod(rhs.shape[:-1]), -1), rhs.reshape(-1, rhs.shape[-1]),
                          (((0,), (0,)), ((), ())), precision=eqn.params["precision"],
                          preferred_element_type=eqn.params["preferred_element_type"])        # [O * N, F]
    out = jnp.moveaxis(out.reshape(*outputs, lhs.shape[-1], rhs.shape[-1]), -2, 0)           # [N, O..., F]
    return _from_canonical(eqn, out.astype(eqn.outvars[0].aval.dtype))


def _rewrite_conv(eqn, lhs, rhs):
    """The convolution of `eqn` in a form XLA:CPU runs fast, in a loop body too: one matmul over its patches
    where _by_matmul says so, else the canonical convolution."""
    return (_matmul_conv if _by_matmul(eqn) else _canonical_conv)(eqn, lhs, rhs)


def _evaluate(jaxpr, consts, args) -> list:
    """jax.core.eval_jaxpr with every convolution rewritten (_rewrite_conv), calls to jitted functions
    that hold one evaluated inline; every other equation is bound as it is."""
    env = {}
    read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = eqn.params.get("jaxpr")
        if eqn.primitive.name == _CONV:
            outs = [_rewrite_conv(eqn, *values)]
        elif eqn.primitive.name in _CALLS and isinstance(inner, jax_core.ClosedJaxpr) and _CONV in primitives(inner):
            outs = _evaluate(inner.jaxpr, inner.consts, values)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def loop_safe(fn, platform: str | None = None):
    """`fn` (arrays in, arrays out, traced under jit) with its convolutions in forms XLA:CPU runs fast
    in a loop body too (_rewrite_conv); `fn` itself on other backends (`platform`: default,
    jax.default_backend()).

    The convolutions of fn's own code and of the jitted functions it calls are rewritten; those inside
    its own control flow (a scan, cond or remat in the model) are left as they are. In a `lax.scan` the
    result is bitwise that of loop_safe(fn) at the top level of a program; it is bitwise fn's own where
    no input has one channel, else within float32 rounding (tests/test_driver.py,
    tests/test_convnet_fast.py; benchmarks/convnet.py).
    """
    rewrites = LOOP_SAFE_PLATFORMS.get(platform or jax.default_backend(), frozenset())
    if _CONV not in rewrites:
        return fn

    def safe(*args):                # fn's Python runs once, here: its jaxpr is what gets evaluated
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shapes), outs)
    return safe


# ----- the choice of driver -----------------------------------------------------------------------

class Choice(NamedTuple):
    """The driver for one compiled model and input: `steps_per_execution` steps per call.

    driver: "loop" (a compiled loop over the steps of a call) or "step" (one step per call, no loop).
    reason: one line saying why, for `verbose=2` and the log.
    """

    steps_per_execution: int
    driver: str
    reason: str


def primitives(jaxpr) -> set:
    """The names of every primitive in `jaxpr` (a Jaxpr or ClosedJaxpr), nested ones (scan, cond, pjit) included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names, pending = set(), [jaxpr]
    while pending:
        for eqn in pending.pop().eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for inner in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(inner, jax_core.ClosedJaxpr):
                        pending.append(inner.jaxpr)
                    elif isinstance(inner, jax_core.Jaxpr):
                        pending.append(inner)
    return names


def loop_losers(jaxpr, platform: str, rewritten: frozenset = frozenset()) -> tuple:
    """The primitives of `jaxpr` that make a training step lose inside a compiled loop on `platform`, sorted,
    less those `rewritten` by loop_safe in the compiled steps."""
    return tuple(sorted(primitives(jaxpr) & (LOOP_LOSERS.get(platform, frozenset()) - rewritten)))


def _rewritten(platform: str) -> frozenset:
    """What loop_safe rewrites in the compiled steps on `platform` (compiled.py runs every step through it)."""
    return LOOP_SAFE_PLATFORMS.get(platform, frozenset())


def choose(fused_steps: int, losers: tuple, platform: str) -> Choice:
    """The driver for a model whose program holds `losers` (see loop_losers), given the `fused_steps`
    that "auto" would fuse (the callbacks' and the data's limit)."""
    if fused_steps > 1 and losers:
        return Choice(1, "step", f"one step per call: {', '.join(losers)} runs slower inside a compiled loop "
                                 f"on {platform} than at the top level of a program")
    return Choice(fused_steps, "loop", f"{fused_steps} step(s) per call in one compiled loop")


def _platform(leaves) -> str:
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            return next(iter(leaf.devices())).platform
    return jax.default_backend()


def _model_losers(exe, leaves, x) -> tuple:
    """(platform, loop_losers of the model's forward pass on inputs like `x` [N, ...]), traced once per model."""
    predict = exe.predict_batch
    known = _LOSERS.get(predict)
    if known is None:
        platform = _platform(leaves)
        rewritten, losers = _rewritten(platform), ()
        if LOOP_LOSERS.get(platform, frozenset()) - rewritten:       # something to look for: trace the forward
            spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), x)
            losers = loop_losers(jax.make_jaxpr(predict)(leaves, spec), platform, rewritten)
        known = _LOSERS[predict] = (platform, losers)
    return known


def _say(exe, choice: Choice, verbose) -> None:
    """Log the choice (logging.INFO, logger "batchfit"); with verbose=2 also print a choice of one step per
    call, once per compiled model (a fused loop is what "auto" means: Keras's verbose=2 lines stay as they are)."""
    logger.info("steps_per_execution='auto': %s.", choice.reason)
    said = _SAID.setdefault(exe.predict_batch, set())
    if verbose == 2 and choice.driver == "step" and choice.driver not in said:
        said.add(choice.driver)
        print(f"steps_per_execution='auto': {choice.reason}.")


def steps_per_execution(setting, source, callbacks, exe=None, leaves=()) -> int:
    """The steps each compiled call of `exe` runs over `source`: `setting` when it is a number, else the
    steps "auto" fuses (the callbacks' limit, the data's size) or 1 where a compiled loop loses (choose)."""
    if setting != "auto":
        return source.steps_per_execution(setting, None)
    limit = callbacks.max_steps_per_execution(source.num_batches or STREAM_MAX_STEPS)
    fused = source.steps_per_execution("auto", limit)
    if fused == 1 or exe is None:
        return fused
    platform, losers = _model_losers(exe, leaves, source.sample.x)
    if not losers:                      # the common case, decided once per model: logged once
        if exe.predict_batch not in _SAID:
            _SAID[exe.predict_batch] = set()
            logger.info("steps_per_execution='auto': compiled loops (nothing in this model runs slower in one "
                        "on %s).", platform)
        return fused
    choice = choose(fused, losers, platform)
    _say(exe, choice, _verbose(callbacks))
    return choice.steps_per_execution


def _verbose(callbacks):
    for cb in getattr(callbacks, "callbacks", ()):
        if "verbose" in getattr(cb, "params", {}):
            return cb.params["verbose"]
    return None
