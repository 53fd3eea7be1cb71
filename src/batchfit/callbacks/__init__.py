"""Callbacks with Keras hook names."""

from batchfit.callbacks.base import Callback, CallbackList, LambdaCallback
from batchfit.callbacks.history import History
from batchfit.callbacks.progress import ProgbarLogger

__all__ = ["Callback", "CallbackList", "History", "LambdaCallback", "ProgbarLogger"]
