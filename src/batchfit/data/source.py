"""as_source: every input type fit / evaluate / predict accept, turned into one of two sources.

* `ArraySource`: in-memory arrays (NumPy, JAX, pandas, dicts of them, and bf.data Datasets
  that are only rows of arrays, shuffled and batched). Put on the device once; each epoch
  is one gather in the epoch order and contiguous slices in the compiled loop.
* `StreamSource` (data/stream.py): everything else (Datasets with map / filter / ...,
  generators, iterables, grain, PyTorch DataLoader, NumPy memmaps, arrays with
  steps_per_epoch), assembled into chunks on a background thread.

Both hand the loop `feed(keys, steps_per_execution).epoch(key)`: an iterator of Pieces.
"""

from __future__ import annotations

import collections.abc
import math
import numbers
import weakref
from typing import Iterator, NamedTuple

import jax
import numpy as np

from batchfit.data import arrays
from batchfit.data.arrays import DeviceData, Piece, epoch_order, plan_chunks
from batchfit.data._ops import fused_plan, without_prefetch
from batchfit.data.dataset import INFINITE_CARDINALITY, Dataset, FusedPlan
from batchfit.data.stream import StreamSource, unpack
from batchfit.errors import check_int, describe

__all__ = ["ArraySource", "SeenArrays", "as_source", "split_source", "is_batch_list"]


class ArraySource:
    """In-memory samples x [N, ...], y [N, ...], w [N], read in batches of `batch_size`."""

    unchecked = (False, False)     # (x, y): whose values are still to be checked (SeenArrays.again)
    stage = None                   # a Stage for NumPy x and y passed again (SeenArrays.rebuild)

    def __init__(self, x, y, w, batch_size: int, shuffle: bool = False, seed: int = 0,
                 reshuffle: bool = True, drop_remainder: bool = False, n: int | None = None):
        self.sample = DeviceData(x, y, w)
        self.n = arrays.num_samples(x, y, w) if n is None else n
        self.batch_size, self.shuffle, self.seed, self.reshuffle = batch_size, shuffle, seed, reshuffle
        self.rows = self.n - self.n % batch_size if drop_remainder else self.n
        if self.rows == 0:
            raise ValueError(f"batch({batch_size}, drop_remainder=True) of {self.n} samples leaves no batch. "
                             f"Use a smaller batch size or drop_remainder=False.")
        self.num_batches = math.ceil(self.rows / batch_size)
        self._device = None
        self._order = None         # (epoch key, its order): the last one drawn
        self._staged = None        # the stage of data(), for the order of its single call

    def split(self, fraction: float) -> tuple["ArraySource", "ArraySource"]:
        """(the first 1 - fraction of the samples, the last fraction), Keras's validation_split."""
        cut = int(math.floor(self.n * (1.0 - fraction)))
        if cut <= 0 or cut >= self.n:
            raise ValueError(f"`validation_split={fraction}` of {self.n} samples leaves an empty training or "
                             f"validation set. Use more data or a different fraction.")
        head, tail = (arrays.take(self.sample, part) for part in (slice(0, cut), slice(cut, self.n)))
        return (ArraySource(*head, self.batch_size, self.shuffle, self.seed, self.reshuffle),
                ArraySource(*tail, self.batch_size))

    def steps_per_execution(self, setting, callback_limit: int | None) -> int:
        k = (callback_limit or self.num_batches) if setting == "auto" else setting
        return max(1, min(k, self.num_batches))

    def next_key(self) -> int:
        return 0

    def feed(self, keys, steps_per_execution: int) -> "_ArrayFeed":
        return _ArrayFeed(self, list(keys), steps_per_execution)

    def order(self, key: int):
        """The sample order of epoch `key` (None: in order), drawn once: int32 [n], read-only
        (after data() staged the arrays, its copy in the stage, as the compiled call reads it)."""
        if not self.shuffle:
            return None
        key = key if self.reshuffle else 0
        if self._order is None or self._order[0] != key:
            order = epoch_order(self.n, self.seed, key)
            self._order = (key, order if self._staged is None else self._staged.put("order", order))
        return self._order[1]

    def draw_next(self, key: int, later: int | None, first: int) -> None:
        """Call once the device has epoch `key` to run: draws the order of epoch `later`, or
        after the last epoch (`later` None) of fit(seed=None), the one the next fit call
        starting like this one (at epoch `first`) will most likely use."""
        if later is not None:
            self.order(later)
        elif self.shuffle and self.reshuffle and arrays.is_fresh(self.seed):
            arrays.draw_ahead(self.n, 0 if first == 0 else key + 1)

    def data(self, num_calls: int) -> DeviceData:
        """The samples to hand the compiled calls: NumPy arrays go to the device once when
        several calls read them; for a single call, the call's own argument transfer is the
        cheapest copy there is (microseconds, against tens for device_put), or for arrays
        passed again, the copy into their stage (Stage), which then takes the epoch order too."""
        if self._device is None:
            on_host = num_calls > 1 and any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(self.sample))
            if on_host:
                self._device = _to_device(self.sample)
            elif self.stage is not None:
                self._device = DeviceData(self.stage.put("x", self.sample.x), self.stage.put("y", self.sample.y),
                                          self.sample.w)
                self._staged = self.stage
            else:
                self._device = self.sample
        return self._device


_to_device = jax.jit(lambda tree: tree)     # one C++ dispatch, not device_put's Python path


_AS_IS = "as is"


class Stage:
    """Host buffers that the same NumPy arrays are copied into on every call, read by the
    compiled call as JAX arrays.

    A NumPy argument costs a compiled call tens of microseconds (JAX wraps it afresh on
    every call, and copies it into fresh memory unless its data is 64-byte aligned: about
    2 ms a call for 4 MB here, 5-10% of the second article's epoch). On the CPU a
    jax.Array made once on an aligned buffer reads that buffer's memory, so the call costs
    what a JAX argument costs, and the copy into the buffer is what the call reads. The
    copy is made on every call, so arrays written in place are read as they are now; the
    buffers are rewritten only by the next call, after this one has finished.
    """

    MAX_BYTES = 64 * 2**20      # arrays larger than this are handed over as they are (no second copy kept)
    SMALL_BYTES = 2**20         # aligned arrays up to this size are copied too: the copy costs less than the wrap

    def __init__(self):
        self._buffers: dict = {}   # name -> (host buffer, what the call reads), or _AS_IS (never the user's array)

    def put(self, name: str, array):
        """What the compiled call is to read for `array`: `array` itself, or its copy in this
        stage's buffer `name`. A stage serves the arrays of one SeenArrays, so what each name
        gets is decided once."""
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = _stage_buffer(array, self.MAX_BYTES, self.SMALL_BYTES)
        if buffer is _AS_IS:
            return array
        host, read = buffer
        np.copyto(host, array)
        return read


def _stage_buffer(array, max_bytes: int, small_bytes: int):
    """Stage.put's buffer for `array`: (a 64-byte aligned copy, the jax.Array on its memory,
    or the copy itself where a jax.Array would be a copy of it: an accelerator, a dtype JAX
    converts), or _AS_IS for an array handed over as it is (not NumPy, too large, or aligned
    and too large for a copy to pay)."""
    if (type(array) is not np.ndarray or array.nbytes > max_bytes
            or (array.ctypes.data % 64 == 0 and array.flags.c_contiguous and array.nbytes > small_bytes)):
        return _AS_IS
    raw = np.empty(array.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    host = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    read = jax.device_put(host)
    return host, (read if read.unsafe_buffer_pointer() == host.ctypes.data else host)


class SeenArrays(NamedTuple):
    """The NumPy or JAX x and y an ArraySource was last built on (held weakly), to build the next one fast.

    A training loop calling fit(x, y) again and again on the same arrays pays for the type,
    dtype, sample-count and model-shape checks once. The values of NumPy arrays are not
    remembered: the caller checks them again on every call (`writable`), since NumPy arrays
    can be written in place. JAX arrays cannot, so theirs are checked once.
    """

    x: weakref.ref
    y: weakref.ref
    shapes: tuple
    options: tuple
    source: tuple          # (n, batch_size, shuffle) of the source built on them
    writable: tuple        # (x is NumPy, y is NumPy): whose values to check again
    stage: Stage           # where the sources built again copy them (Stage)

    @staticmethod
    def of(source, x, y, options: dict) -> "SeenArrays | None":
        """What to remember of `source`, built from `x`, `y` and `options`; None unless it holds
        plain NumPy or JAX x and y as given (no copy, no weights)."""
        if not (isinstance(source, ArraySource) and _plain(x) and _plain(y)
                and source.sample.x is x and source.sample.y is y and source.sample.w is None):
            return None
        return SeenArrays(weakref.ref(x), weakref.ref(y), (x.shape, x.dtype, y.shape, y.dtype), _options_key(options),
                          (source.n, source.batch_size, source.shuffle),
                          (type(x) is np.ndarray, type(y) is np.ndarray), Stage())

    def holds(self, x, y) -> bool:
        """True when `x` and `y` are the arrays seen, with the same shapes and dtypes."""
        return self.x() is x and self.y() is y and (x.shape, x.dtype, y.shape, y.dtype) == self.shapes

    def again(self, x, y, options: dict) -> "ArraySource | None":
        """The source for `x`, `y` and `options` when they are the ones seen (with any seed), else None.

        Its `unchecked` is `writable`: the caller checks those values before training on them."""
        if not self.holds(x, y) or _options_key(options) != self.options:
            return None
        return self.rebuild(x, y, options.get("seed", 0))

    def rebuild(self, x, y, seed: int) -> "ArraySource":
        """The source on `x`, `y` (the arrays seen: `holds`) drawing its epoch orders from `seed`."""
        n, batch_size, shuffle = self.source
        source = ArraySource(x, y, None, batch_size, shuffle, seed, n=n)
        source.unchecked, source.stage = self.writable, self.stage
        return source


def _plain(array) -> bool:
    return type(array) is np.ndarray or isinstance(array, jax.Array)


def _options_key(options: dict) -> tuple:
    """The options that shape a source (not its seed), typed: 32.0 must not pass for the 32 checked before."""
    batch_size = options.get("batch_size")
    return (type(batch_size), batch_size, bool(options.get("shuffle")), options.get("steps"),
            options.get("need_y", True))


class _ArrayFeed:
    """Epochs over in-memory arrays; the next epoch's order is drawn while the device runs."""

    max_in_flight = None          # nothing is allocated per dispatch: let the dispatches run ahead

    def __init__(self, source: ArraySource, keys: list, steps_per_execution: int):
        self._source, self._keys = source, keys
        self._next = dict(zip(keys, keys[1:]))
        self._chunks = plan_chunks(source.rows, source.batch_size, steps_per_execution)

    def epoch(self, key) -> Iterator[Piece]:
        s = self._source
        order, data = s.order(key), s.data(len(self._chunks) * len(self._keys))
        for chunk in self._chunks:
            yield Piece(chunk, data, s.batch_size, chunk.rows(order, s.batch_size))
        s.draw_next(key, self._next.get(key), self._keys[0])     # overlaps with the device running

    def close(self):
        pass


def is_batch_list(x) -> bool:
    """A list of (x, y) batches, as opposed to a nested list of numbers (an array)."""
    return (isinstance(x, list) and bool(x) and isinstance(x[0], (tuple, list))
            and any(getattr(v, "ndim", 0) >= 1 for v in x[0]))


def _kind(x) -> str:
    if isinstance(x, Dataset):
        return "dataset"
    if is_batch_list(x):
        return "iterable"
    if (x is None or isinstance(x, (np.ndarray, jax.Array, list, tuple, dict, str, bytes, numbers.Number))
            or hasattr(x, "to_numpy") or hasattr(x, "__array__")):
        return "arrays"
    return "iterable" if isinstance(x, collections.abc.Iterable) else "arrays"


def as_source(x, y=None, sample_weight=None, class_weight=None, *, batch_size=None, shuffle=False, seed=0,
              steps=None, need_y=True, allow_nonfinite=False, first_key=0):
    """The source for any accepted input; every check on the data happens here, once.

    Args:
      x: arrays (NumPy, JAX, pandas, a dict of them), a bf.data.Dataset, or an iterable /
        generator / grain dataset or loader / PyTorch DataLoader of (x, y[, sample_weight]) batches.
      y, sample_weight, class_weight: with arrays; with batches, only class_weight.
      batch_size: with arrays (default 32); must be None with batches.
      shuffle, seed: with arrays (a Dataset shuffles itself).
      steps: batches per epoch (steps_per_epoch / validation_steps / steps), else one pass.
      need_y: False for predict. first_key: the first epoch's index (fit's initial_epoch).
    """
    if steps is not None:
        steps = check_int("steps_per_epoch", steps, 1)
    kind = _kind(x)
    if kind == "arrays":
        return _from_arrays(x, y, sample_weight, class_weight, batch_size=batch_size, shuffle=shuffle,
                            seed=seed, steps=steps, need_y=need_y, allow_nonfinite=allow_nonfinite,
                            first_key=first_key)
    _refuse_array_options(x, y, sample_weight, batch_size)
    options = dict(class_weight=class_weight, allow_nonfinite=allow_nonfinite, need_y=need_y,
                   first_key=first_key, steps=steps)
    if kind == "dataset":
        return _from_dataset(x, options)
    return _from_iterable(x, options)


def split_source(x, y, sample_weight=None, class_weight=None, *, validation_split: float, batch_size=None,
                 validation_batch_size=None, shuffle=False, seed=0, steps=None, allow_nonfinite=False,
                 first_key=0):
    """(training source, validation source): the last `validation_split` of the arrays, before shuffling."""
    if _kind(x) != "arrays":
        raise ValueError(f"`validation_split` needs arrays; got {describe(x)}. With a Dataset or generator, "
                         f"pass `validation_data=` instead.")
    full = _from_arrays(x, y, sample_weight, class_weight, batch_size=batch_size,
                        allow_nonfinite=allow_nonfinite, stream=False)
    head, tail = full.split(validation_split)
    train = _from_arrays(*head.sample, batch_size=batch_size, shuffle=shuffle, seed=seed, steps=steps,
                         allow_nonfinite=allow_nonfinite, first_key=first_key)
    val = _from_arrays(*tail.sample, batch_size=validation_batch_size or batch_size,
                       allow_nonfinite=allow_nonfinite)
    return train, val


def _refuse_array_options(x, y, sample_weight, batch_size):
    what = "a bf.data.Dataset" if isinstance(x, Dataset) else f"an iterable of batches ({describe(x)})"
    for name, value, fix in (("y", y, "yield (x, y) pairs from it"),
                             ("sample_weight", sample_weight, "yield (x, y, sample_weight) triples"),
                             ("batch_size", batch_size, "the batches come from the data; .batch(n) sets it")):
        if value is not None:
            raise ValueError(f"`{name}` must not be given when `x` is {what}: {fix}.")


def _from_arrays(x, y, sample_weight=None, class_weight=None, *, batch_size=None, shuffle=False, seed=0,
                 steps=None, need_y=True, allow_nonfinite=False, first_key=0, stream=None):
    batch_size = check_int("batch_size", 32 if batch_size is None else batch_size, 1)
    if x is None:
        raise ValueError("`x` is required; got None.")
    if need_y and y is None:
        raise ValueError("`y` is required to train or evaluate; got None. Pass targets as `y`.")
    on_disk = arrays.is_memmap(x)
    x = x if on_disk else arrays.standardize(x, "x", allow_nonfinite)
    y = None if not need_y else y if arrays.is_memmap(y) else arrays.standardize(y, "y", allow_nonfinite)
    n = arrays.num_samples(x, y, sample_weight)
    w = arrays.sample_weights(y, n, sample_weight, class_weight) if need_y else None
    if stream is False or not (on_disk or arrays.is_memmap(y) or steps is not None):
        return ArraySource(x, y, w, batch_size, bool(shuffle), seed)
    # On disk (or with steps_per_epoch): the same rows, in the same order, streamed in chunks.
    dataset = Dataset.from_tensor_slices((x,) if not need_y else (x, y) if w is None else (x, y, w))
    if shuffle:
        dataset = dataset.shuffle(n, seed=seed)
    return _from_dataset(dataset.batch(batch_size), dict(
        allow_nonfinite=allow_nonfinite, need_y=need_y, first_key=first_key, steps=steps, class_weight=None))


def _from_dataset(dataset: Dataset, options: dict):
    if dataset._batched is False:
        raise ValueError(f"The dataset yields single samples ({dataset!r}); fit, evaluate and predict take "
                         f"batches. Add .batch(batch_size) to the pipeline.")
    plan = fused_plan(dataset)
    if plan is not None and options["steps"] is None:
        return _fused_source(plan, options)
    dataset = without_prefetch(dataset)
    n = dataset.cardinality()
    if n == INFINITE_CARDINALITY and options["steps"] is None:
        raise ValueError("The dataset is infinite (repeat() without a count); pass steps_per_epoch "
                         "(validation_steps, steps) to say how many batches make an epoch.")
    return StreamSource(lambda key: dataset._elements((key,)), reiterable=True,
                        num_batches=n if n >= 0 else None, what="The dataset", **options)


def _fused_source(plan: FusedPlan, options: dict) -> ArraySource:
    x, y, w = unpack(plan.tensors)
    if options["need_y"] and y is None:
        raise ValueError(f"The dataset has x only ({describe(x)}); training and evaluating need "
                         f"from_tensor_slices((x, y)) or ((x, y, sample_weight)).")
    allow = options["allow_nonfinite"]
    x = arrays.standardize(x, "x", allow)
    y = arrays.standardize(y, "y", allow) if options["need_y"] else None
    n = arrays.num_samples(x, y, w)
    w = arrays.sample_weights(y, n, w, options["class_weight"]) if options["need_y"] else None
    return ArraySource(x, y, w, plan.batch_size, plan.seed is not None, plan.seed or 0, plan.reshuffle,
                       plan.drop_remainder)


def _from_iterable(data, options: dict) -> StreamSource:
    one_shot = isinstance(data, collections.abc.Iterator)
    try:
        num_batches = None if one_shot else len(data)
    except (TypeError, NotImplementedError):    # no length (an IterableDataset's loader, grain IterDataset)
        num_batches = None
    opener = (lambda key: data) if one_shot else (lambda key: iter(data))
    return StreamSource(opener, reiterable=not one_shot, num_batches=num_batches, what="The input", **options)
