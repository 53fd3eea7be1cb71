"""batchfit: Keras-style fit and train_on_batch on JAX + Flax NNX + Optax, one compiled step for both."""

from batchfit._cache import enable_compilation_cache

enable_compilation_cache()

from batchfit import (  # noqa: E402
    activations,
    callbacks,
    data,
    distribution,
    errors,
    initializers,
    layers,
    losses,
    metrics,
    mixed_precision,
    models,
    ops,
    optimizers,
    regularizers,
    utils,
)
from batchfit._keras_names import missing as _missing  # noqa: E402
from batchfit.layers import Input, Layer, Variable  # noqa: E402
from batchfit.model import Model, NotCompiledError  # noqa: E402
from batchfit.sequential import Sequential, load_model  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Input",
    "Layer",
    "Model",
    "NotCompiledError",
    "Sequential",
    "Variable",
    "activations",
    "callbacks",
    "data",
    "distribution",
    "errors",
    "initializers",
    "load_model",
    "layers",
    "losses",
    "metrics",
    "mixed_precision",
    "models",
    "ops",
    "optimizers",
    "regularizers",
    "utils",
]

__getattr__ = _missing(__name__, lambda: list(globals()))
