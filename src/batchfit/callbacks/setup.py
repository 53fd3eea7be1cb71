"""The callbacks of one fit / evaluate / predict call: the user's, checked, plus progress and History."""

from __future__ import annotations

from batchfit.callbacks.base import Callback, CallbackList
from batchfit.callbacks.history import History
from batchfit.callbacks.progress import ProgbarLogger
from batchfit.errors import describe

__all__ = ["callback_list"]


def callback_list(callbacks, verbose, mode: str, model, num_batches, epochs=None) -> CallbackList:
    """A CallbackList for `mode` ("fit", "test", "predict"): the user's callbacks, a progress bar
    when `verbose` asks for one, and for fit the History (the user's, if they passed one) last;
    it is the list's `history`."""
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"`callbacks` must be a list of bf.callbacks.Callback; got {describe(callbacks)}. "
                        f"Wrap a single callback in a list: callbacks=[cb].")
    user = list(callbacks or [])
    for cb in user:
        if not isinstance(cb, Callback):
            raise TypeError(f"`callbacks` must hold bf.callbacks.Callback objects; got {describe(cb)}. "
                            f"Subclass bf.callbacks.Callback, or use bf.callbacks.LambdaCallback(...).")
    if isinstance(verbose, bool) or verbose not in ("auto", 0, 1, 2):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2; got {verbose!r}.")
    verbose = 1 if verbose == "auto" else verbose
    progress = [ProgbarLogger(verbose, mode)] if verbose else []
    history = None
    if mode == "fit":
        history = next((cb for cb in user if isinstance(cb, History)), None) or History()
        user = [cb for cb in user if cb is not history] + progress + [history]
    else:
        user = user + progress
    result = CallbackList(user, model=model, params={"epochs": epochs, "steps": num_batches, "verbose": verbose})
    result.history = history
    return result
