"""Callbacks with Keras hook names."""

from batchfit._keras_names import missing as _missing
from batchfit.callbacks.base import Callback, CallbackList, LambdaCallback, every_nth
from batchfit.callbacks.history import History
from batchfit.callbacks.progress import ProgbarLogger
from batchfit.callbacks import backup, checkpoint, logging, monitoring
from batchfit.callbacks.backup import *  # noqa: F401,F403
from batchfit.callbacks.checkpoint import *  # noqa: F401,F403
from batchfit.callbacks.logging import *  # noqa: F401,F403
from batchfit.callbacks.monitoring import *  # noqa: F401,F403

__all__ = ["Callback", "CallbackList", "History", "LambdaCallback", "ProgbarLogger", "every_nth",
           *(name for module in (backup, checkpoint, logging, monitoring) for name in module.__all__)]

__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
