"""fit's validation data: the pass at each epoch's end, and the order of its data that a Position keeps.

Validation metrics are sums in the data's order, so a resumed fit reports the `val_*` of a run that was
never stopped only when its validation data reads in the same order: a bf.data.Dataset's order
generation (`source.seed`: how many fit / evaluate calls read it before), the seeds its
shuffle(seed=None) steps drew (data/_seeds.py) and the number of passes done (each pass of a
reshuffling dataset is another order). A Position keeps the first two (validation_seed,
validation_data_seeds); the passes done follow from its epoch, one per epoch since `initial_epoch`.
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

    def __call__(self, slot) -> dict:
        return self._run(slot)

    def order(self) -> tuple:
        """(order generation, drawn seeds): a Position's (validation_seed, validation_data_seeds)."""
        return self.source.seed, self.source.drawn_seeds()

    def start(self, position, initial_epoch: int) -> tuple:
        """`order()` for a fit starting afresh (position None), else `resume(position, initial_epoch)`."""
        return self.order() if position is None else self.resume(position, initial_epoch)

    def resume(self, position, initial_epoch: int) -> tuple:
        """Read on in the order of the run that saved `position` (before any step); returns `order()`.

        Raises ValueError when the position was saved with a validation Dataset that drew another number
        of seeds (another pipeline). A position without validation seeds (taken without validation data,
        or written before they were kept) leaves this data's own.
        """
        if position.validation_data_seeds is not None:
            seed = self.source.seed if position.validation_seed is None else position.validation_seed
            try:
                self.source.reseed(seed, position.validation_data_seeds)
            except ValueError as e:
                raise ValueError(f"In the validation data: {e}") from None
        if hasattr(self.source, "evaluations"):        # a stream counts its passes: the next is epoch position.epoch's
            self.source.evaluations = max(0, position.epoch - initial_epoch)
        return self.order()
