"""Subclassed models: `class M(bf.Model)` with layers made in `__init__` and used in `call(x, training=False)`.

Built on the first data: `call` runs once eagerly on one row of zeros, which builds each layer it
uses (weights drawn from the model's seed). The model's module is then an OwnedModule holding
those layers' modules; it runs the user's `call` with each layer bound to its part, so inside a
compiled step `self.dense(x)` runs the step's copy of Dense.
"""

from __future__ import annotations

import inspect

import jax
import numpy as np
from flax import nnx

from batchfit.errors import describe
from batchfit.layers import _scope
from batchfit.layers.custom import sublayers
from batchfit.layers.initializers import HostRngs

__all__ = ["OwnedModule", "build_subclassed", "training_argument"]


def training_argument(call, training: bool) -> dict:
    """{"training": training} when `call` takes a `training` argument, else {}."""
    return {"training": training} if "training" in inspect.signature(call).parameters else {}


class OwnedModule(nnx.Module):
    """A subclassed model's module: the modules of the layers (and models) it holds, by attribute order."""

    takes_call_arguments = True

    def __init__(self, model):
        self.model, self.deterministic = model, True
        built = [part for part in sublayers(model) if isinstance(getattr(part, "_module", None), nnx.Module)]
        self.children = nnx.List([part._module for part in built])
        self.child_ids = tuple(id(part) for part in built)

    def __call__(self, x, *args, **kwargs):
        call = self.model.call
        kwargs = {**training_argument(call, not self.deterministic), **kwargs}
        with _scope.bind(dict(zip(self.child_ids, self.children))):
            return call(x, *args, **kwargs)


def build_subclassed(model, x) -> OwnedModule:
    """Build `model`'s layers by running its `call` once on one row of zeros shaped like `x`."""
    if x is None:
        raise ValueError(f"{type(model).__name__} is built on its first data: call fit, predict or the model "
                         f"on a batch first (or model.build(input_shape)).")
    zeros = jax.tree.map(lambda a: np.zeros((1, *np.shape(a)[1:]), getattr(a, "dtype", np.float32)),
                         x, is_leaf=lambda a: hasattr(a, "shape"))
    with _scope.building(HostRngs(model.seed)):
        try:
            model.call(zeros, **training_argument(model.call, False))
        except Exception as e:  # noqa: BLE001 - re-raised with the model and the input named
            raise ValueError(f"{type(model).__name__}.call() failed while building the model on inputs shaped "
                             f"like {describe(zeros)}: "
                             f"{type(e).__name__}: {e}") from e
    return OwnedModule(model)
