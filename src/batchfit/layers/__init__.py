"""Keras-named layers: config objects that build Flax NNX modules once shapes are known.

`layer.make_module(input_shape, rngs)` returns a fresh NNX module for inputs [B, *input_shape];
`layer(x)` builds it on first use (on arrays, or on bf.Input tensors for a functional model).
Built modules start in inference mode; `module.train()` / `module.eval()` switch Dropout
(`deterministic`) and BatchNormalization (`use_running_average`). Each Dropout holds its own
`nnx.Rngs` stream, whose key and count are NNX state advanced on every training call.
"""

from batchfit.layers.base import Layer, layer_from_config
from batchfit.layers import (
    activation_layers, attention, conv, lambda_layer, noise, pooling, preprocessing, recurrent,
    reshaping, wrappers,
)
from batchfit.layers.activation_layers import *  # noqa: F401,F403
from batchfit.layers.attention import *  # noqa: F401,F403
from batchfit.layers.conv import *  # noqa: F401,F403
from batchfit.layers.lambda_layer import *  # noqa: F401,F403
from batchfit.layers.noise import *  # noqa: F401,F403
from batchfit.layers.pooling import *  # noqa: F401,F403
from batchfit.layers.preprocessing import *  # noqa: F401,F403
from batchfit.layers.recurrent import *  # noqa: F401,F403
from batchfit.layers.reshaping import *  # noqa: F401,F403
from batchfit.layers.wrappers import *  # noqa: F401,F403
from batchfit.layers.core import (
    Activation,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    InputLayer,
)
from batchfit.layers._symbolic import Input, KerasTensor
from batchfit.layers.variable import Variable
from batchfit.layers.initializers import INITIALIZERS, get_initializer
from batchfit.layers.merging import *  # noqa: F401,F403
from batchfit.layers import merging
from batchfit.layers.normalization import BatchNormalization, LayerNormalization
from batchfit.layers.stack import (
    Stack,
    build_stack,
    keras_weight_variables,
    regularization_penalty,
)

__all__ = [
    "INITIALIZERS", "get_initializer", "Layer", "Dense", "Activation", "Dropout", "Flatten",
    "BatchNormalization", "LayerNormalization", "Embedding", "InputLayer", "Input", "KerasTensor", "Variable",
    "Stack", "build_stack", "keras_weight_variables", "regularization_penalty", "layer_from_config",
    *(name for module in (activation_layers, attention, conv, lambda_layer, merging, noise, pooling,
                          preprocessing, recurrent, reshaping, wrappers) for name in module.__all__),
]

from batchfit._keras_names import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__, lambda: list(globals()))
