"""Where a stream read `steps` batches an epoch has got to, read and put back for a resumed fit.

With `steps` (fit's validation_steps), each epoch draws `steps` batches from one iterator kept across
epochs (data/stream.py), so each validation reads on where the last one stopped, as in Keras, and a
pass that runs out ends that epoch early; the next opens a new pass (a reshuffling Dataset's next
order). A fit resumed in a new process must read on from the same place: `place()` says where that is
and `put_place()` goes there, opening that pass again and skipping the batches already read.

>>> import numpy as np
>>> from batchfit.data.stream import StreamSource
>>> batches = [(np.full((1, 1), i, np.float32), np.zeros((1, 1), np.float32)) for i in range(5)]
>>> def read(source, epochs):       # each epoch's batches (their x), as fit's validation reads them
...     out = []
...     for _ in range(epochs):
...         feed = source.feed([0], 1)
...         out.append([int(piece.data.x[0, 0]) for piece in feed.epoch()])
...         feed.close()
...     return out
>>> stream = StreamSource(lambda key: iter(batches), reiterable=True, steps=2, num_batches=5, need_y=True)
>>> read(stream, 2), stream.place()      # 4 batches of pass 0 read
([[0, 1], [2, 3]], (1, 4))
>>> again = StreamSource(lambda key: iter(batches), reiterable=True, steps=2, num_batches=5, need_y=True)
>>> again.put_place((1, 4))
>>> read(again, 2), again.place()        # batch 4 ends pass 0; pass 1 begins
([[4], [0, 1]], (2, 2))
"""

from __future__ import annotations

from batchfit.data._ops import inline_prefetch

__all__ = ["StepsPlace"]

_END = object()


class StepsPlace:
    """The place of a StreamSource read `steps` batches an epoch (a mixin of data/stream.StreamSource: it
    reads the source's `_steps`, `_reiterable`, `_passes` and `_current`, and `_read`, the batches drawn
    from `_current`, which StreamSource._batches counts)."""

    _read = 0

    def place(self) -> tuple | None:
        """(passes begun, batches read of the last one; 0 once it ran out): where the next epoch reads on.
        None without `steps` (each epoch is a pass of its own: fit's epoch says which)."""
        if self._steps is None:
            return None
        return self._passes, self._read if self._current is not None else 0

    def put_place(self, place) -> None:
        """Read on from `place` (what `place()` returned for the same input read alike), before any batch.

        A re-iterable input opens pass `passes - 1` again (a Dataset in the order generation and seeds put
        back first: `reseed`) and skips the `batches` read of it. Raises ValueError when that pass now ends
        sooner (other data), or when the input is a one-shot iterator that had been read: it cannot be read
        again from that place, and reading on from its start would give other batches. Without `steps`:
        nothing to do.
        """
        if self._steps is None:
            return
        passes, read = (int(count) for count in place)
        if passes < 0 or read < 0 or (read and not passes):
            raise ValueError(f"A stream's place is (passes begun, batches read of the last one); got {place!r}. "
                             f"Put back a place that place() returned.")
        if not self._reiterable:
            if (passes, read) != (0, 0):
                raise ValueError(
                    f"The position was saved after earlier epochs had read batches of this input ({self._steps} "
                    f"an epoch), but it is a one-shot iterator (a generator): it cannot be read again from that "
                    f"place, and reading it from its start would give other batches than the run that was never "
                    f"stopped. Pass data that can be read again (a bf.data.Dataset, e.g. "
                    f"Dataset.from_generator(function), a list, a PyDataset), or delete the backup to start over.")
            return
        self._passes, self._current, self._read = passes, None, 0
        if read:
            self._current, self._read = self._skipped(passes - 1, read), read

    def _skipped(self, key, count: int):
        """The iterator of pass `key` with its first `count` batches read."""
        with inline_prefetch():                   # as the worker reads it: a dataset's prefetch adds no thread
            iterator = self._iterator(key)
            for index in range(count):
                if next(iterator, _END) is _END:
                    raise ValueError(
                        f"The position was saved after {count} batches of pass {key} of this input had been read, "
                        f"but that pass now ends after {index}: this is other data than the position was saved "
                        f"with. Pass the same data as the run it was taken from, or delete the backup to start "
                        f"over.")
        return iterator
