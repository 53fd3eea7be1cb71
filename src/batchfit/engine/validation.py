"""fit's validation data: the pass at each epoch's end, and the order and place of its data that a Position keeps.

Validation metrics are sums in the data's order, so a resumed fit reports the `val_*` of a run that was
never stopped only when its validation data reads in the same order: a bf.data.Dataset's order
generation (`source.seed`: how many fit / evaluate calls read it before), the seeds its
shuffle(seed=None) steps drew (data/_seeds.py) and the number of passes done (each pass of a
reshuffling dataset is another order). A Position keeps the first two (validation_seed,
validation_data_seeds); the passes done follow from its epoch, one per epoch since `initial_epoch`.

With `validation_steps`, a stream is read that many batches an epoch, each epoch reading on where the
last one stopped (data/_stream_place.py): the Position keeps that place as it was at the start of its
epoch (validation_place), and a resumed fit skips the batches read before, so that its first validation
reads what the run that was never stopped read at that epoch. A one-shot iterator (a generator) cannot be
read again from a place: resuming it past its start is refused, unless it had run out (without
validation_steps, the first validation reads it to its end): then the one passed to the resumed fit runs
out too, and its epochs report no val_* (with the same warning), as those of the run never stopped did.
A PyDataset's on_epoch_end is not called again for the validations before the position.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Validation"]


class Validation:
    """`validate(slot) -> logs` for the loop (engine/loop.run_fit), over the validation `source`.

    Args:
      source: the validation source (data/source.validation_source): ArraySource or StreamSource.
      run: `run(slot) -> logs`, one evaluation pass over `source` at the slot's weights.
    """

    def __init__(self, source, run: Callable):
        self.source, self._run = source, run
        self._order, self._epoch, self._places = (None, None), 0, {}

    def __call__(self, slot) -> dict:
        """Validate the epoch that just ended; the place the stream reached is the next epoch's."""
        logs = self._run(slot)
        self._epoch += 1
        self._places[self._epoch] = self._place()
        return logs

    def order(self, epoch: int) -> tuple:
        """A Position's (validation_seed, validation_data_seeds, validation_place) at epoch `epoch`.

        The place is the one at that epoch's start, kept for every epoch validated so far: a Position is
        made later than it is taken (a background backup), when validation may have read on.
        """
        return (*self._order, self._places.get(epoch))

    def start(self, position, initial_epoch: int) -> Callable:
        """`order` for a fit starting afresh (position None), else `resume(position, initial_epoch)`."""
        if position is not None:
            return self.resume(position, initial_epoch)
        self._begin(initial_epoch)
        return self.order

    def resume(self, position, initial_epoch: int) -> Callable:
        """Read on in the order, and from the place, of the run that saved `position` (before any step);
        returns `order`.

        Raises ValueError when the position was saved with a validation Dataset that drew another number
        of seeds (another pipeline), when the validation stream now ends before the place it had reached,
        or when that place is inside a one-shot iterator (one that had run out runs out now). A position
        without validation seeds (taken without validation data, or written before they were kept) leaves
        this data's own; one without a place (a re-iterable input without validation_steps, or written
        before it was kept) reads from the start.
        """
        try:
            if position.validation_data_seeds is not None:
                seed = self.source.seed if position.validation_seed is None else position.validation_seed
                self.source.reseed(seed, position.validation_data_seeds)
            if position.validation_place is not None and hasattr(self.source, "put_place"):
                self.source.put_place(position.validation_place)
        except ValueError as e:
            raise ValueError(f"In the validation data: {e}") from None
        if hasattr(self.source, "evaluations"):        # a stream counts its passes: the next is epoch position.epoch's
            self.source.evaluations = max(0, position.epoch - initial_epoch)
        self._begin(position.epoch)
        return self.order

    def _begin(self, epoch: int) -> None:
        """The next validation is epoch `epoch`'s, from the source's order and place now."""
        self._order = (self.source.seed, self.source.drawn_seeds())
        self._epoch, self._places = epoch, {epoch: self._place()}

    def _place(self):
        place = getattr(self.source, "place", None)        # a stream's; arrays have none
        return None if place is None else place()
