"""Where fit starts: the Position a callback restores (BackupAndRestore), and the place a stream reads on from.

engine/loop.run_fit calls `restore` after on_train_begin and before any step. Everything that can refuse
the position (a one-shot iterator inside an epoch, other validation or training data than it was saved
with) runs before the training state is put back, so a refused fit leaves the model as it was.
"""

from __future__ import annotations

from batchfit.engine.state import copy_tree

__all__ = ["restore"]


def restore(callbacks, slot, source, cursor, validate) -> None:
    """Start from the Position a callback restores, if one does (its data order, validation order and place
    included), else from the cursor's (a set_position() one, or a fresh start); a stream reads on from the
    place that Position keeps (data/_stream_place.py: StepsPlace.read_on), and the cursor's Positions get
    the stream's place at their batch (`cursor.data_place`)."""
    mid_epoch, restored = source.resumes_mid_epoch, None
    for restore_position in callbacks.listeners("restore_position"):
        position = restore_position(mid_epoch)
        if position is None:
            continue
        if position.batch and not mid_epoch:
            raise ValueError(f"{type(restore_position.__self__).__name__} restored a position at batch "
                             f"{position.batch} of epoch {position.epoch}, but this input cannot be read again "
                             f"from an epoch's start (a one-shot iterator: a generator). Pass a re-iterable input "
                             f"(a bf.data.Dataset, a list, a PyDataset), or delete the backup to start over.")
        source.reseed(position.seed, position.data_seeds)    # the saved data order (a Dataset's drawn seeds too)
        if validate is not None:
            cursor.validation_order = validate.resume(position, cursor.plan.initial_epoch)
        place_at = _read_on(source, position.epoch, position.batch, position.data_place)
        cursor.resume(position, source.num_batches)
        restored = position
    if restored is None:
        place_at = _read_on(source, cursor.epoch, cursor.batch, cursor.start_place)
    else:
        slot.put(copy_tree(restored.train))
    cursor.data_place = place_at


def _read_on(source, epoch: int, batch: int, place):
    """A stream's `place_at` once it reads on from `place` at batch `batch` of epoch `epoch`; None for arrays."""
    return source.read_on(epoch, batch, place) if hasattr(source, "read_on") else None
