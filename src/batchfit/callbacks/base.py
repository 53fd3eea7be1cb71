"""Callback, LambdaCallback and CallbackList: Keras hook names, exact batch indices.

When several steps run in one compiled call, batch hooks fire once per call with `batch`
the index of the last batch that call ran, never past the end of the epoch.
"""

from __future__ import annotations

import functools

__all__ = ["Callback", "LambdaCallback", "CallbackList", "every_nth"]

_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end")


class Callback:
    """Base class: override the hooks you need. `self.model` is the model being trained.

    A callback that overrides a train-batch hook limits `steps_per_execution="auto"` to 1,
    so it sees every batch; override `max_steps_per_execution` to allow more.
    """

    # Whether epoch e's on_epoch_end (and on_epoch_batch_losses) must run before epoch e + 1
    # starts. A callback that only records (History) says False, so fit may read epoch e's logs
    # once epoch e + 1 is running; one that can stop training or looks at the time must say True.
    epoch_ends_in_order = True

    def __init__(self):
        self.model = None
        self.params: dict = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params: dict):
        self.params = params

    def max_steps_per_execution(self, num_batches: int) -> int | None:
        """The largest number of fused steps this callback tolerates (None: no limit)."""
        cls = type(self)
        return 1 if _overrides(cls, "on_train_batch_begin") or _overrides(cls, "on_train_batch_end") else None

    def control_batches(self, epoch: int, first: int, count: int, seen: int):
        """batchfit addition: the batches of `epoch` among [first, first + count) after which this callback needs
        control (a compiled call ends there, so on_train_batch_end sees exactly that batch; the other steps stay
        fused). `seen`: the batches this fit() ran before `first`, for a count over epochs (every n-th batch is
        `first + (-(seen + 1)) % n`, then every n). Asked once per epoch for in-memory arrays, per batch
        (count 1) for streams. Only callbacks that override it are asked."""
        return ()

    def restore_position(self, resumes_mid_epoch: bool):
        """batchfit addition: a Position for fit to start from (BackupAndRestore), or None. Asked after every
        callback's on_train_begin; `resumes_mid_epoch` says whether the data can restart inside an epoch."""
        return None

    def on_train_interrupt(self):
        """batchfit addition: Ctrl-C stopped fit at a step boundary (the model's state is consistent); runs before
        KeyboardInterrupt propagates."""

    def on_train_exit(self):
        """batchfit addition: fit is leaving, normally or by any exception (after on_train_end or
        on_train_interrupt, if they ran); a callback with background work (checkpoint writes) ends it here."""

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass

    def on_epoch_batch_losses(self, epoch: int, batch_losses: dict):
        """batchfit addition: the raw loss of every batch of `epoch`, as NumPy arrays, before on_epoch_end."""


class LambdaCallback(Callback):
    """A callback from plain functions, as Keras: `LambdaCallback(on_epoch_end=lambda epoch, logs: ...)`."""

    _HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_train_batch_begin", "on_train_batch_end")

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        super().__init__()
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        unknown = sorted(set(given) - set(self._HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hooks {unknown}; known: {list(self._HOOKS)}.")
        self._functions = {k: v for k, v in given.items() if v is not None}
        for name, fn in self._functions.items():
            setattr(self, name, fn)

    def max_steps_per_execution(self, num_batches):
        return 1 if any(h in self._functions for h in _BATCH_HOOKS) else None


class CallbackList:
    """Calls every callback's hook in order; knows whether anyone wants per-batch logs."""

    def __init__(self, callbacks, model=None, params=None):
        self.callbacks = list(callbacks)
        self._listeners = {}          # hook -> the bound hooks that do something, read once per fit
        for cb in self.callbacks:
            if model is not None:
                cb.set_model(model)
            if params is not None:
                cb.set_params(params)

    def max_steps_per_execution(self, num_batches: int) -> int | None:
        limit = None
        for cb in self.callbacks:
            k = cb.max_steps_per_execution(num_batches)
            if k is not None and (limit is None or k < limit):
                limit = k
        return limit

    def control_batches(self):
        """`(epoch, first, count, seen) -> batches` over the callbacks that need control at given batches
        (Callback.control_batches), or None when none does."""
        asking = [cb.control_batches for cb in self.callbacks if _overrides(type(cb), "control_batches")]
        if not asking:
            return None
        return lambda *where: sorted({batch for ask in asking for batch in ask(*where)})

    def listeners(self, hook: str) -> list:
        """The bound `hook` of every callback that defines it (in its class or on the instance), in order.

        Callback's own hooks do nothing, so they are not called: fit runs a handful of hooks
        per call, and on a small model each one costs a visible share of the step.
        """
        found = self._listeners.get(hook)
        if found is None:
            found = self._listeners[hook] = [getattr(cb, hook) for cb in self.callbacks
                                             if _overrides(type(cb), hook) or hook in getattr(cb, "__dict__", ())]
        return found

    def epoch_ends_can_wait(self) -> bool:
        """True when every callback with an epoch hook lets fit end epoch e after epoch e + 1 starts."""
        hooks = ("on_epoch_begin", "on_epoch_end", "on_epoch_batch_losses")
        return not any(cb.epoch_ends_in_order for cb in self.callbacks
                       if any(_overrides(type(cb), h) or h in getattr(cb, "__dict__", ()) for h in hooks))

    def wants(self, hook: str) -> bool:
        """True when some callback overrides `hook` (so its logs are worth a host copy)."""
        return bool(self.listeners(hook))


def every_nth(n: int, first: int, count: int, seen: int) -> range:
    """The batches among [first, first + count) that are the n-th, 2n-th, ... of the fit, when `seen` batches
    ran before `first` (for Callback.control_batches).

    >>> list(every_nth(3, first=0, count=10, seen=5))       # the fit's batches 6 and 9 are this epoch's 0 and 3
    [0, 3, 6, 9]
    """
    return range(first + (-(seen + 1)) % n, first + count, n)


@functools.cache
def _overrides(cls: type, hook: str) -> bool:
    """True when class `cls` defines its own `hook` (read once per class: fit asks on every call)."""
    return getattr(cls, hook, None) is not getattr(Callback, hook)


def _dispatch(hook: str):
    """CallbackList.<hook>(...): call `hook` on every callback that defines it, in order."""
    if hook == "on_epoch_batch_losses":
        def call(self, *args):
            for fn in self.listeners(hook):
                fn(*args)
    else:
        arity = 2 if ("epoch" in hook or "batch" in hook) else 1     # (epoch|batch, logs) or (logs)

        def call(self, *args):                  # Keras always hands over a logs dict
            listeners = self.listeners(hook)
            if listeners:
                args = args[:arity - 1] + ((args[arity - 1] if len(args) >= arity else None) or {},)
                for fn in listeners:
                    fn(*args)
    call.__name__ = hook
    return call


for _hook in [name for name in vars(Callback) if name.startswith("on_")]:
    setattr(CallbackList, _hook, _dispatch(_hook))
