"""The Layer config base class, argument checks, dtypes, and the regularized-module mixin."""

from __future__ import annotations

import inspect
import math
import re
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from batchfit.layers import _scope, _symbolic
from batchfit.layers.initializers import initial_value
from batchfit.layers.variable import WeightLists, refuse_freezing
from batchfit.registry import Registry

__all__ = ["Layer", "LAYERS", "layer_from_config"]

LAYERS = Registry("layer")

_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
_INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _positive_int(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int; got {name}={value!r}. "
                         f"Pass e.g. {owner}({name}=32).")
    return int(value)


def _real(value, name: str, owner: str, expected: str, within, example) -> float:
    """`value` as a float, when it is a finite real number (not a bool) for which `within` holds."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or not within(value):
        raise ValueError(f"{owner}: `{name}` must be {expected}; got {name}={value!r}. "
                         f"Pass e.g. {owner}({name}={example!r}).")
    return float(value)


def _sequence(value) -> tuple | None:
    """`value` as a tuple when it is a sequence of entries (not a string), else None."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return tuple(value)
    except TypeError:
        return None


def _pair(value, name: str, owner: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else _sequence(value)
    if pair is None or len(pair) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{owner}: `{name}` must be a positive int or a pair of them; got "
                         f"{name}={value!r}. Pass e.g. {owner}({name}=(3, 3)).")
    return tuple(int(v) for v in pair)


def _padding(value, owner: str) -> str:
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{owner}: `padding` must be 'valid' or 'same'; got padding={value!r}. "
                         "Pass padding='same' to keep the spatial size, 'valid' for no padding.")
    return value.lower()


def _shape(value, name: str, owner: str = "") -> tuple:
    shape = (value,) if isinstance(value, (int, np.integer)) else _sequence(value)
    sizes = [d for d in shape or () if d is not None]
    if shape is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                and d >= 1 for d in sizes):
        raise ValueError(f"{owner + ': ' if owner else ''}`{name}` must be a tuple of positive "
                         f"ints (or None), without the batch axis; got {name}={value!r}. Pass "
                         f"e.g. {name}=(28, 28, 1).")
    return tuple(None if d is None else int(d) for d in shape)


class _DTypePolicy(NamedTuple):
    """A layer's dtypes: its weights are `variable_dtype`, its arithmetic `compute_dtype`.

    A plain dtype name sets both; a mixed policy ("mixed_bfloat16", "mixed_float16") keeps float32
    weights and computes in half precision (bf.mixed_precision.DTypePolicy).
    """

    name: str
    variable_dtype: str
    compute_dtype: str


def _dtype_policy(value, owner: str, accepted: tuple = _FLOAT_DTYPES) -> _DTypePolicy:
    """The policy named by `dtype=`: a name in `accepted` or a mixed one, a DTypePolicy (or Keras's
    serialized one), a NumPy/JAX dtype, or None (the global policy, bf.mixed_precision)."""
    from batchfit import mixed_precision
    if value is None and "float32" in accepted:
        value = mixed_precision.global_policy()
    policy = mixed_precision.DTypePolicy(mixed_precision._policy_name(value, owner, accepted))
    return _DTypePolicy(policy.name, policy.variable_dtype, policy.compute_dtype)


def _jax_dtype(name: str) -> np.dtype:
    """The dtype JAX holds for `name`: float64 and int64 only with jax_enable_x64, else 32-bit."""
    return jax.dtypes.canonicalize_dtype(np.dtype(name))


def _autocast(x, dtype):
    """`x` as the input of a layer computing in `dtype`, as Keras autocasts.

    Floating inputs are cast to a floating `dtype`; other inputs (integer ids, bools) pass as
    they are. An integer `dtype` (an InputLayer declaring ids) converts every input.
    """
    x = jnp.asarray(x)
    if x.dtype == dtype:
        return x
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(dtype)
    return x


def _initial_weight(initializer, rng, shape, dtype):
    """`initializer`'s draw (initializers.initial_value): made at float32 (or wider) and rounded to
    `dtype`, so a half precision layer starts from the float32 layer's weights of the same seed, rounded."""
    return initial_value(initializer, rng, shape, dtype)


class Layer(WeightLists):
    """A Keras layer: `layer(x)` on arrays or on symbolic tensors (bf.Input); its weights live in the NNX
    module `make_module(input_shape, rngs)` builds for [B, *input_shape] when the shape is first known.

    `dtype` (Keras's argument): "float32", "bfloat16", "float16", "float64", a NumPy or JAX dtype
    of these, "mixed_bfloat16" / "mixed_float16" (float32 weights, half precision arithmetic), a
    bf.mixed_precision.DTypePolicy, or None: the global policy when the layer is constructed. The
    built module's weights are `variable_dtype` and it computes in `compute_dtype`, floating inputs
    cast to it. float64 needs `jax.config.update("jax_enable_x64", True)` before building; without
    it JAX holds float32.
    """

    _accepted_dtypes = _FLOAT_DTYPES

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs).arguments
        bound.pop("self")
        extra = bound.pop("kwargs", {})
        self._arguments = {**bound, **extra}  # for get_config
        return self

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LAYERS.register(cls.__name__)(cls)

    def __init__(self, *, input_shape=None, input_dim=None, name=None, dtype=None, trainable=True):
        owner = type(self).__name__
        refuse_freezing(trainable, owner)
        if input_dim is not None:
            input_shape = (_positive_int(input_dim, "input_dim", owner),)
        self.input_shape = None if input_shape is None else _shape(input_shape, "input_shape",
                                                                   owner)
        snake = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", owner)  # as Keras
        self.name = name or _symbolic.unique_name(re.sub(r"([a-z])([A-Z])", r"\1_\2", snake).lower())
        self._dtype_policy = _dtype_policy(dtype, owner, self._accepted_dtypes)
        self._module = None             # the built module: this layer's weights
        self._nodes = []                # its calls on symbolic tensors (functional models)
        self._pending = []              # weights added before the module exists (add_weight in __init__)
        self._owners = weakref.WeakSet()  # the models built on this layer: reading a weight syncs them

    @property
    def dtype(self) -> str:
        """The dtype of the weights, as Keras 3's `layer.dtype`."""
        return self._dtype_policy.variable_dtype

    @property
    def dtype_policy(self):
        """The layer's bf.mixed_precision.DTypePolicy, as Keras 3's `layer.dtype_policy`."""
        from batchfit import mixed_precision
        return mixed_precision.DTypePolicy(self._dtype_policy.name)

    @property
    def variable_dtype(self) -> str:
        """The dtype the built module's weights are created in."""
        return self._dtype_policy.variable_dtype

    @property
    def compute_dtype(self) -> str:
        """The dtype the built module computes in; floating inputs are cast to it."""
        return self._dtype_policy.compute_dtype

    def compute_output_shape(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample `input_shape` (the identity here)."""
        return tuple(input_shape)

    def make_module(self, input_shape, rngs) -> nnx.Module:
        """A fresh module for [B, *input_shape] (a list of shapes for several inputs); weights drawn
        from `rngs.params()`. A layer written as Keras writes one (`build`, `add_weight`, `call`) gets
        a module that runs its `call` (layers/custom.py)."""
        if type(self).call is Layer.call:
            raise NotImplementedError(f"{type(self).__name__} must define call(self, inputs) (and build(self, "
                                      f"input_shape) to create its weights with self.add_weight).")
        from batchfit.layers.custom import CustomModule
        return CustomModule(self, input_shape, rngs)

    # ----- Keras's runtime: layer(x), build, add_weight, weights ---------------------------------

    def __call__(self, inputs, *args, **kwargs):
        """On symbolic tensors (bf.Input): a node of a functional model. On arrays: the layer's output,
        built for their shapes on first use (inside a model's step: that step's copy of the layer)."""
        if _symbolic.is_symbolic(inputs):
            return _symbolic.call_layer(self, inputs, args, kwargs)
        module = _scope.lookup(self) or self._module_for(inputs)
        out = run_module(module, inputs, args, kwargs)
        if hasattr(out, "shape"):
            self._output_shape = (None, *out.shape[1:])       # for summary()
        return out

    def call(self, inputs, *args, **kwargs):
        """The computation of a layer written as Keras writes one (subclasses define it)."""
        raise NotImplementedError(f"{type(self).__name__} does not define call().")

    def build(self, input_shape) -> None:
        """Keras's build(input_shape): create the weights for inputs of `input_shape` (batch axis
        first, None). A custom layer overrides it and calls `self.add_weight`."""
        if self._module is None and type(self).call is Layer.call:
            self._adopt(self.make_module(_per_sample(input_shape), _scope.build_rngs()))

    def _module_for(self, inputs) -> nnx.Module:
        if self._module is None:
            specs = jax.tree.map(lambda a: a if hasattr(a, "shape") else jnp.asarray(a), inputs,
                                 is_leaf=lambda a: hasattr(a, "shape"))
            self._build_inputs = specs          # a custom layer's module runs its call once on zeros of these
            shapes = jax.tree.map(lambda a: tuple(a.shape[1:]), specs, is_leaf=lambda a: hasattr(a, "shape"))
            self._adopt(self.make_module(shapes, _scope.build_rngs()))
        return self._module

    def _module_for_graph(self) -> nnx.Module:
        """The built module (an InputLayer is built here, from its declared shape)."""
        if self._module is None:
            self._adopt(self.make_module(self.input_shape, _scope.build_rngs()))
        return self._module

    def _adopt(self, module: nnx.Module) -> None:
        module.eval()
        self._module = module

    @property
    def built(self) -> bool:
        return self._module is not None

    @built.setter
    def built(self, value) -> None:
        """Keras code sets `self.built = True` at the end of build(); the module says whether it is built."""

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, name=None,
                   regularizer=None, constraint=None, **kwargs):
        """A new weight of this layer (Keras's add_weight), as a handle: use it in `call` like an array."""
        from batchfit.layers.custom import add_weight
        return add_weight(self, shape, initializer, dtype, trainable, name, regularizer, constraint, kwargs)

    @property
    def weights(self) -> list:
        """The layer's weights as Variable handles, in Keras order (trainable ones first for a custom layer)."""
        from batchfit.layers.custom import weight_handles
        return weight_handles(self)

    def __getattr__(self, name):
        """A built layer's weights by their Keras names (`dense.kernel`, `norm.moving_mean`), as handles."""
        if not name.startswith("_") and self.__dict__.get("_module") is not None:
            for handle in self.weights:
                if handle.name == name:
                    return handle
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def get_weights(self) -> list:
        return [w.numpy() for w in self.weights]

    def set_weights(self, weights) -> None:
        from batchfit.layers.custom import set_weights
        set_weights(self.weights, weights, f"{type(self).__name__} '{self.name}'")

    @property
    def output(self):
        """The symbolic output of the layer's one node in a functional model (Keras's layer.output)."""
        return _symbolic.single_node(self, "output").outputs

    @property
    def input(self):
        return _symbolic.single_node(self, "input").inputs

    def get_config(self) -> dict:
        """{"class_name", "config"}: the constructor arguments as given, `dtype` as its name (a mixed
        policy as Keras 3 writes it: {"module": "keras", "class_name": "DTypePolicy", ...})."""
        from batchfit import mixed_precision
        dtype = self._dtype_policy.name
        if dtype.startswith("mixed_"):
            dtype = mixed_precision.serialize(self.dtype_policy)
        config = {**self._arguments, "dtype": dtype}
        return {"class_name": type(self).__name__, "config": config}

    def _fail(self, input_shape, needs: str):
        raise ValueError(f"{type(self).__name__} '{self.name}' needs {needs}; got per-sample "
                         f"shape {tuple(input_shape)}. Reshape the data or add a layer first.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _per_sample(input_shape):
    """Keras's build shape (batch axis first: `(None, 10)`) as the per-sample shape `(10,)`; a list for
    several inputs."""
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
        return [_per_sample(s) for s in input_shape]
    return tuple(input_shape)[1:]


def run_module(module: nnx.Module, inputs, args=(), kwargs=None):
    """`module(inputs)` with Keras's call arguments: `training=` switches the mode for this call only;
    `mask=` reaches a module that takes one (`takes_mask`), and is dropped for the others, as Keras does."""
    kwargs = dict(kwargs or {})
    training = kwargs.pop("training", None)
    mask = kwargs.pop("mask", None)
    if not getattr(module, "takes_call_arguments", False) and (args or kwargs):
        raise TypeError(f"{type(module).__name__} takes only the inputs (and training=, mask=); got "
                        f"{len(args)} more positional and {sorted(kwargs)} keyword arguments.")
    if mask is not None and _takes_mask(module):
        kwargs["mask"] = mask
    if training is None:
        return module(inputs, *args, **kwargs)
    with _mode(module, bool(training)):
        return module(inputs, *args, **kwargs)


def _takes_mask(module) -> bool:
    """Whether `module` takes `mask=`: it says so, or it runs a Keras-style `call(inputs, mask=None)`."""
    layer = getattr(module, "layer", None)
    return getattr(module, "takes_mask", False) or (
        isinstance(layer, Layer) and "mask" in inspect.signature(layer.call).parameters)


class _mode:
    """Within the block, `module` (and its submodules) run in training mode or not."""

    _FLAGS = ("deterministic", "use_running_average")

    def __init__(self, module, training: bool):
        self.module, self.training, self.saved = module, training, []

    def __enter__(self):
        for _, node in nnx.iter_graph(self.module):
            for flag in self._FLAGS:
                if isinstance(node, nnx.Module) and hasattr(node, flag):
                    self.saved.append((node, flag, getattr(node, flag)))
                    setattr(node, flag, not self.training)

    def __exit__(self, *exc):
        for node, flag, value in self.saved:
            setattr(node, flag, value)


def layer_from_config(config: dict) -> Layer:
    """The layer that `layer.get_config()` described."""
    return LAYERS.get(config["class_name"])(**config["config"])


class _Regularized(nnx.Module):
    """Mixin: `penalty()` sums regularizer(weight) over (name, regularizer) pairs."""

    weight_regularizers: tuple = ()

    def penalty(self):
        """Scalar float32: the sum of this module's weight penalties (Keras `layer.losses`).

        Half precision weights are widened first: a sum of squares in bfloat16 loses digits.
        """
        total = jnp.zeros((), jnp.float32)
        for name, regularizer in self.weight_regularizers:
            weight = getattr(self, name)[...]
            wide = weight.astype(jnp.promote_types(weight.dtype, jnp.float32))
            total = total + jnp.asarray(regularizer(wide)).astype(jnp.float32)
        return total
