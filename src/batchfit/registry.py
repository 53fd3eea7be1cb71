"""Name -> factory registries: strings are looked up, objects pass through."""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

__all__ = ["Registry"]


class Registry:
    """A case-insensitive map from names to objects, with did-you-mean errors.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("mse", "mean_squared_error")
    ... def mse(y_true, y_pred): ...
    >>> LOSSES.get("MSE") is mse
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, object] = {}

    def register(self, *names: str) -> Callable:
        def add(obj):
            for name in names:
                self._items[name.lower()] = obj
            return obj
        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def get(self, name: str):
        key = name.lower() if isinstance(name, str) else name
        if key in self._items:
            return self._items[key]
        raise ValueError(unknown_name_message(self.kind, name, self.names()))


def unknown_name_message(kind: str, name, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Known {kind} names: {', '.join(known)}."
