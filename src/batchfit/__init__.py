"""batchfit: Keras-style fit and train_on_batch on JAX + Flax NNX + Optax, one compiled step for both."""

from batchfit._cache import enable_compilation_cache

enable_compilation_cache()

from batchfit import activations, callbacks, data, layers, losses, metrics, optimizers, regularizers  # noqa: E402
from batchfit.model import Model, NotCompiledError  # noqa: E402
from batchfit.sequential import Sequential, load_model  # noqa: E402

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
