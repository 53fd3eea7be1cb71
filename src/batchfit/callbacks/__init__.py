"""Callbacks with Keras hook names."""

from batchfit._keras_names import missing as _missing
from batchfit.callbacks.base import Callback, CallbackList, LambdaCallback
from batchfit.callbacks.history import History
from batchfit.callbacks.progress import ProgbarLogger

__all__ = ["Callback", "CallbackList", "History", "LambdaCallback", "ProgbarLogger"]

__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
