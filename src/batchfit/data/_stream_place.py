"""Where a stream has got to, read and put back for a resumed fit: its place, and the batches it draws.

With `steps` (steps_per_epoch, validation_steps), each epoch draws `steps` batches from one iterator kept
across epochs (data/stream.py), so each epoch reads on where the last one stopped, as in Keras, and a
pass that runs out ends that epoch early; the next opens a new pass (a reshuffling Dataset's next order).
A fit resumed in a new process must read on from the same place: `place()` says where that is and
`put_place()` goes there, opening that pass again and skipping the batches already read. A one-shot
iterator (a generator) has one pass: its place says how much of it was read, or that it ran out (after
its one pass without `steps`), so that a resumed fit also finds it run out.

fit's training stream reads ahead of training, so its place at a Position is not where the reader is:
`place_at(epoch, batch)` works it out from the place where each epoch's first batch was read (within an
epoch every batch comes from one pass) and the place at each epoch's end (`read_on` notes the place a
resumed fit starts from).

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
>>> generator = iter(batches)
>>> once = StreamSource(lambda key: generator, reiterable=False, steps=None, num_batches=None, need_y=True)
>>> once.place(), read(once, 1), once.place()      # a one-shot iterator without steps: read, it ran out
((0, 0), [[0, 1, 2, 3, 4]], (1, 0))
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator

from batchfit.data._ops import inline_prefetch
from batchfit.data.prefetch import check_stop

__all__ = ["StepsPlace"]

_END = object()


class StepsPlace:
    """The place of a StreamSource (a mixin of data/stream.StreamSource: it reads the source's `_steps`,
    `_reiterable`, `_passes`, `_first_key`, `_current`, `_open`, `_pending` and `_iterator`; `_read` counts
    the batches drawn from `_current`; `_starts` {epoch: the place at its start, noted when a fit starts there
    and when the epoch before ends} and `_firsts` {epoch: (passes, batches read of the last one before the
    epoch's first batch)}, so that its batch b is read at (passes, that + b): a pass that runs out ends the
    epoch)."""

    _read = 0

    def place(self) -> tuple | None:
        """(passes begun, batches read of the last one; 0 once it ran out): where the next epoch reads on.
        A one-shot iterator counts its passes from its start (its one pass, and the empty ones after it ran
        out). None for a re-iterable input without `steps` (each epoch is a pass of its own: fit's epoch
        says which)."""
        if self._reiterable:
            return None if self._steps is None else (self._passes, self._read if self._current is not None else 0)
        return self._passes - self._first_key, self._read if self._current is not None else 0

    def put_place(self, place) -> None:
        """Read on from `place` (what `place()` returned for the same input read alike), before any batch.

        A re-iterable input opens pass `passes - 1` again (a Dataset in the order generation and seeds put
        back first: `reseed`) and skips the `batches` read of it. A one-shot iterator at a place where it had
        run out is made to run out now. Raises ValueError when that pass now ends sooner (other data), or when
        the input is a one-shot iterator that had been read and not run out: it cannot be read again from that
        place, and reading on from its start would give other batches. A re-iterable input without `steps`:
        nothing to do.
        """
        if self.place() is None:
            return
        passes, read = (int(count) for count in place)
        if passes < 0 or read < 0 or (read and not passes) or (read and self._steps is None):
            raise ValueError(f"A stream's place is (passes begun, batches read of the last one); got {place!r}. "
                             f"Put back a place that place() returned.")
        if not self._reiterable:
            if read:
                raise ValueError(
                    f"The position was saved after earlier epochs had read batches of this input ({self._steps} "
                    f"an epoch), but it is a one-shot iterator (a generator): it cannot be read again from that "
                    f"place, and reading it from its start would give other batches than the run that was never "
                    f"stopped. Pass data that can be read again (a bf.data.Dataset, e.g. "
                    f"Dataset.from_generator(function), a list, a PyDataset), or delete the backup to start over.")
            if passes:                        # it had run out: so does the iterator passed now
                self._open, self._pending, self._passes = (lambda key: iter(())), None, self._first_key + passes
            return
        self._passes, self._current, self._read = passes, None, 0
        if read:
            self._current, self._read = self._skipped(passes - 1, read), read

    def read_on(self, epoch: int, batch: int, place) -> Callable:
        """fit's training stream, resumed at batch `batch` of epoch `epoch` from `place` (the Position's
        data_place; None for a fresh fit or a position without one), before any step; returns `place_at`.

        Raises ValueError as put_place does, and for a position inside an epoch of a stream with `steps`
        that has no place (written before it was kept). A one-shot iterator resumed at an epoch boundary after
        batches of it had been read is read on from where it is, with a warning: the run that was never
        stopped read on from its place in the iterator it had.
        """
        if batch and not self._reiterable:
            return self.place_at                  # feed() refuses it: a one-shot iterator restarts no epoch
        if place is not None and not self._reiterable and place[1]:
            warnings.warn(
                f"The position was saved after {place[1]} batches of a one-shot iterator (a generator) had been "
                f"read; the iterator passed now cannot be put at that place, so training reads it on from where it "
                f"is. The batches are those of the run that was never stopped only if it yields what that one "
                f"would have yielded next (e.g. a generator that starts over every steps_per_epoch batches). Pass "
                f"a re-iterable input (a bf.data.Dataset, a list, a PyDataset) to resume exactly.", UserWarning,
                stacklevel=6)
        elif place is not None:
            try:
                self.put_place(place)
            except ValueError as e:
                raise ValueError(f"In the training data: {e}") from None
        elif batch and self._steps is not None and self._reiterable:
            raise ValueError(f"The position is at batch {batch} of epoch {epoch}, but it does not say where this "
                             f"input (read steps_per_epoch={self._steps} batches an epoch, each epoch reading on) "
                             f"had got to: it was saved before batchfit kept that. Resume from an epoch boundary "
                             f"(a backup made at an epoch's end), or delete the backup to start over.")
        self._anchor(epoch, batch)
        return self.place_at

    def place_at(self, epoch: int, batch: int) -> tuple | None:
        """The place of fit's training stream once `batch` batches of epoch `epoch` are trained (None: not known,
        or a re-iterable input without `steps`), wherever the reader has got to since."""
        if batch == 0:
            return self._starts.get(epoch)
        first = self._firsts.get(epoch)
        return None if first is None else (first[0], first[1] + batch)

    def _anchor(self, epoch: int, batch: int) -> None:
        """Note the place now as that of fit's start, at batch `batch` of epoch `epoch`."""
        place = self.place()
        if batch == 0:
            self._starts[epoch] = place
        elif place is not None:
            self._firsts[epoch] = (place[0], place[1] - batch)

    def _drawn(self, key, first_batch: int) -> Iterator:
        """The raw batches of epoch `key` with `steps`, from batch `first_batch` on (the earlier ones were read
        before: a resumed epoch), read on from the iterator the last epoch left."""
        count, fresh = first_batch, False
        while count < self._steps:
            check_stop()                        # a closed feed starts no new draw or pass
            if self._current is None:
                self._current, fresh = self._iterator(self._passes), True
                self._passes, self._read = self._passes + 1, 0
            try:
                batch = next(self._current)
            except StopIteration:
                self._current = None
                if count == 0 and self._reiterable and not fresh:
                    continue                                    # ran out at an epoch boundary
                if count:
                    warnings.warn(f"The input ran out of data after {count} of steps={self._steps} batches "
                                  f"in this epoch. Make it yield at least steps_per_epoch * epochs batches "
                                  f"(e.g. Dataset.repeat()).", UserWarning, stacklevel=2)
                return
            fresh, count, self._read = False, count + 1, self._read + 1
            if count == first_batch + 1:
                self._firsts[key] = (self._passes, self._read - count)
            yield batch

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
