"""batchfit: Keras-style fit and train_on_batch on JAX + Flax NNX + Optax, one compiled step for both."""

from batchfit._gc import collector_paused

with collector_paused():
    from batchfit._cache import enable_compilation_cache

    enable_compilation_cache()

    from batchfit import activations, callbacks, data, layers, losses, metrics, optimizers, regularizers
    from batchfit.model import Model, NotCompiledError, Sequential
    from batchfit.saving import load_model

__version__ = "0.1.0"

__all__ = [
    "Model",
    "NotCompiledError",
    "Sequential",
    "activations",
    "callbacks",
    "data",
    "load_model",
    "layers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
]
