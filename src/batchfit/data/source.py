"""as_source: every input type fit / evaluate / predict accept, turned into one of two sources.

* `ArraySource`: in-memory arrays (NumPy, JAX, pandas, dicts of them, and bf.data Datasets
  that are only rows of arrays, shuffled and batched). Put on the device once; each epoch
  is one gather in the epoch order and contiguous slices in the compiled loop.
* `StreamSource` (data/stream.py): everything else (Datasets with map / filter / ...,
  PyDatasets, generators, iterables, grain, PyTorch DataLoader, NumPy memmaps, arrays with
  steps_per_epoch), assembled into chunks on a background thread.

Both hand the loop `feed(keys, steps_per_execution).epoch(key)`: an iterator of Pieces.
"""

from __future__ import annotations

import collections.abc
import inspect
import itertools
import math
import numbers
from typing import Iterator

import jax
import numpy as np

from batchfit.data import arrays
from batchfit.data.arrays import DeviceData, Piece, epoch_order, plan_chunks
from batchfit.data._ops import fused_plan, without_prefetch
from batchfit.data._py_dataset import from_py_dataset, is_py_dataset
from batchfit.data._seeds import drawn_seeds, put_drawn_seeds
from batchfit.data.dataset import INFINITE_CARDINALITY, Dataset, FusedPlan
from batchfit.data.stream import StreamSource, unpack
from batchfit.errors import check_int, describe

__all__ = ["ArraySource", "fit_key", "as_source", "split_source", "validation_source", "is_batch_list", "is_py_dataset"]


class ArraySource:
    """In-memory samples x [N, ...], y [N, ...], w [N], read in batches of `batch_size`."""

    def __init__(self, x, y, w, batch_size: int, shuffle: bool = False, seed: int = 0,
                 reshuffle: bool = True, drop_remainder: bool = False, order=None):
        """`order(key) -> row indices` (a Dataset's own shuffle, keys from fit_key(seed, epoch)) replaces
        the permutation drawn from (seed, epoch) when given."""
        self.sample = DeviceData(x, y, w)
        self._order_of = order
        self.n = arrays.num_samples(x, y)
        self.batch_size, self.shuffle, self.seed, self.reshuffle = batch_size, shuffle, seed, reshuffle
        self.rows = self.n - self.n % batch_size if drop_remainder else self.n
        if self.rows == 0:
            raise ValueError(f"batch({batch_size}, drop_remainder=True) of {self.n} samples leaves no batch. "
                             f"Use a smaller batch size or drop_remainder=False.")
        self.num_batches = math.ceil(self.rows / batch_size)
        self._device = None
        self._order = None         # (epoch key, its order): the last one drawn

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

    resumes_mid_epoch = True        # any batch of any epoch can be started from

    dataset = None       # a fused bf.data.Dataset (set by _from_dataset): positions keep its drawn shuffle seeds

    def drawn_seeds(self) -> tuple:
        """Its shuffle(seed=None) steps' seeds (data/_seeds.py); () for arrays."""
        return drawn_seeds(self.dataset)

    def reseed(self, seed: int, data_seeds: tuple | None = None) -> None:
        """Draw the epochs' orders from `seed` from now on (a restored position's data order), with a fused
        Dataset's shuffle seeds `data_seeds` (None: keep its own)."""
        if put_drawn_seeds(self.dataset, data_seeds) or seed != self.seed:
            self.seed, self._order = seed, None

    def feed(self, keys, steps_per_execution: int, first_batch: int = 0, control=None) -> "_ArrayFeed":
        """The passes `keys`, the first from batch `first_batch` on. `control(key, first, count, seen)`
        (CallbackList.control_batches) names the batches after which a compiled call must end."""
        return _ArrayFeed(self, list(keys), steps_per_execution, first_batch, control)

    def order(self, key: int):
        """The sample order of epoch `key` (None: in order), drawn once: int32 [n]."""
        if not self.shuffle:
            return None
        key = key if self.reshuffle else 0
        if self._order is None or self._order[0] != key:
            drawn = (epoch_order(self.n, self.seed, key) if self._order_of is None
                     else np.asarray(self._order_of(fit_key(self.seed, key)), np.int32))
            self._order = (key, drawn)
        return self._order[1]

    def data(self, num_calls: int) -> DeviceData:
        """The samples to hand the compiled calls, placed once by arrays.to_device (one device, all
        devices of a DataParallel, or each process's own share)."""
        if self._device is None:
            on_host = any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(self.sample))
            self._device = arrays.to_device(self.sample, on_host and num_calls > 1)
        return self._device


class _ArrayFeed:
    """Epochs over in-memory arrays; the next epoch's order is drawn while the device runs."""

    max_in_flight = None          # nothing is allocated per dispatch: let the dispatches run ahead

    def __init__(self, source: ArraySource, keys: list, steps_per_execution: int, first_batch: int, control=None):
        self._source, self._keys, self._first_batch = source, keys, first_batch
        self._next = dict(zip(keys, keys[1:]))
        self._steps, self._control, self._seen = steps_per_execution, control, 0

    def epoch(self, key) -> Iterator[Piece]:
        s, first, self._first_batch = self._source, self._first_batch, 0
        cuts = ()
        if self._control is not None:
            count = s.num_batches - first
            cuts, self._seen = tuple(self._control(key, first, count, self._seen)), self._seen + count
        chunks = plan_chunks(s.rows, s.batch_size, self._steps, first, cuts)
        order, data = s.order(key), s.data(len(chunks) * len(self._keys))
        for chunk in chunks:
            yield Piece(chunk, data, s.batch_size, chunk.rows(order, s.batch_size))
        if key in self._next:
            s.order(self._next[key])          # overlaps with the device running this epoch

    def close(self):
        pass


def fit_key(generation: int, epoch: int) -> tuple:
    """The iteration key of a Dataset's epoch `epoch` in its `generation`-th fit / evaluate call: each call
    draws new shuffle orders (tf.data's reshuffle_each_iteration), the first as fit(shuffle=True) would."""
    return (epoch,) if generation == 0 else (epoch, generation)


class _DatasetPasses:
    """`open(key)` for a StreamSource over a Dataset: the elements of fit_key(generation, key)."""

    def __init__(self, dataset: Dataset, generation: int):
        self.dataset, self.generation = dataset, generation

    def __call__(self, key):
        return self.dataset._elements(fit_key(self.generation, key))


def _next_generation(dataset: Dataset) -> int:
    """How many fit / evaluate / predict calls read `dataset` before this one (its order generation)."""
    generation = getattr(dataset, "_generation", 0)
    dataset._generation = generation + 1
    return generation


def is_batch_list(x) -> bool:
    """A list of (x, y) batches, as opposed to a nested list of numbers (an array)."""
    return (isinstance(x, list) and bool(x) and isinstance(x[0], (tuple, list))
            and any(getattr(v, "ndim", 0) >= 1 for v in x[0]))


def _is_batch_tuple(x) -> bool:
    """A tuple of (x, y) batches (a mistake: Keras reads a tuple as the inputs of one batch)."""
    return isinstance(x, tuple) and len(x) > 1 and all(is_batch_list([item]) for item in x)


def _refuse_mistakes(x) -> None:
    """Inputs that would otherwise be read as arrays without targets ("`y` is required"): say what they are."""
    if isinstance(x, type):
        raise TypeError(f"`x` is the class {x.__name__}, not data. Pass an instance: fit({x.__name__}(...)).")
    if inspect.isgeneratorfunction(x) or (callable(x) and not hasattr(x, "__array__")):
        name = getattr(x, "__name__", type(x).__name__)
        raise TypeError(f"`x` is the function {name!r}, not data. Call it to pass its generator (fit({name}())), "
                        f"or wrap it: Dataset.from_generator({name}).")
    if _is_batch_tuple(x):
        raise ValueError(f"`x` is a tuple of {len(x)} (x, y) batches ({describe(x[0])}, ...); a tuple is read as the "
                         f"inputs of one batch. Pass a list of batches (list(batches)) or a generator instead.")
    if hasattr(x, "__getitem__") and not hasattr(x, "__iter__") and not hasattr(x, "__array__"):
        raise TypeError(f"`x` is a {type(x).__name__} with __getitem__ but no __iter__, so it cannot be read as "
                        f"batches. Subclass bf.utils.PyDataset (define __len__ and __getitem__(index) -> (x, y)), "
                        f"or add __iter__.")


def _kind(x) -> str:
    if isinstance(x, Dataset):
        return "dataset"
    if is_py_dataset(x):
        return "py_dataset"
    if is_batch_list(x):
        return "iterable"
    if (x is None or isinstance(x, (np.ndarray, jax.Array, list, tuple, dict, str, bytes, numbers.Number))
            or hasattr(x, "to_numpy") or hasattr(x, "__array__")):
        return "arrays"
    return "iterable" if isinstance(x, collections.abc.Iterable) else "arrays"


def as_source(x, y=None, sample_weight=None, class_weight=None, *, batch_size=None, shuffle=False, seed=0,
              steps=None, need_y=True, allow_nonfinite=False, first_key=0, steps_name="steps_per_epoch"):
    """The source for any accepted input; every check on the data happens here, once.

    Args:
      x: arrays (NumPy, JAX, pandas, a dict of them), a bf.data.Dataset, a PyDataset, or an
        iterable / generator / grain dataset or loader / PyTorch DataLoader of (x, y[, sample_weight])
        batches.
      y, sample_weight, class_weight: with arrays; with batches, only class_weight.
      batch_size: with arrays (default 32); must be None with batches.
      shuffle, seed: with arrays (a Dataset shuffles itself).
      steps: batches per epoch (steps_per_epoch / validation_steps / steps), else one pass.
      need_y: False for predict; None: optional, kept when the data has them (a model's own train_step gets
        x alone or (x, y[, sample_weight]), as Keras passes it). first_key: the first epoch (initial_epoch).
    """
    if steps is not None:
        steps = check_int(steps_name, steps, 1)
    kind = _kind(x)
    if kind == "arrays":
        _refuse_mistakes(x)
        if need_y is None:
            need_y = _optional_targets(y, sample_weight, class_weight)
        return _from_arrays(x, y, sample_weight, class_weight, batch_size=batch_size, shuffle=shuffle,
                            seed=seed, steps=steps, need_y=need_y, allow_nonfinite=allow_nonfinite,
                            first_key=first_key)
    _refuse_array_options(x, y, sample_weight, batch_size)
    if need_y is None:
        x, need_y = _peek_targets(x, kind, first_key)
    options = dict(class_weight=class_weight, allow_nonfinite=allow_nonfinite, need_y=need_y,
                   first_key=first_key, steps=steps)
    if kind == "dataset":
        return _from_dataset(x, options)
    if kind == "py_dataset":
        return from_py_dataset(x, options)
    return _from_iterable(x, options)


def _optional_targets(y, sample_weight, class_weight) -> bool:
    """Whether arrays with optional targets have them; weights without targets are refused."""
    if y is None and (sample_weight is not None or class_weight is not None):
        name = "sample_weight" if sample_weight is not None else "class_weight"
        raise ValueError(f"`{name}` was given without targets `y`; weights apply to (x, y) data. Pass `y` too, "
                         f"or leave `{name}` out.")
    return y is not None


def _peek_targets(x, kind: str, first_key) -> tuple:
    """(the input, whether its batches carry targets), from its first batch; a one-shot iterator gets that
    batch put back in front. An empty input is left for the source to refuse."""
    if kind == "dataset":
        plan = fused_plan(x)
        if plan is not None:
            return x, unpack(plan.tensors)[1] is not None
        first = next(iter(without_prefetch(x)._elements(fit_key(getattr(x, "_generation", 0), first_key))), None)
    elif kind == "py_dataset":
        first = x[0]
    elif isinstance(x, collections.abc.Iterator):
        first = next(x, None)
        x = x if first is None else itertools.chain([first], x)
    else:
        first = next(iter(x), None)
    return x, first is not None and unpack(first)[1] is not None


def split_source(x, y, sample_weight=None, class_weight=None, *, validation_split: float, batch_size=None,
                 validation_batch_size=None, shuffle=False, seed=0, steps=None, allow_nonfinite=False,
                 first_key=0):
    """(training source, validation source): the last `validation_split` of the arrays, before shuffling."""
    if _kind(x) != "arrays":
        raise ValueError(f"`validation_split` needs arrays; got {describe(x)}. With a Dataset or generator, "
                         f"pass `validation_data=` instead.")
    full = _from_arrays(x, y, sample_weight, batch_size=batch_size, allow_nonfinite=allow_nonfinite, stream=False)
    head, tail = full.split(validation_split)
    train = _from_arrays(*head.sample, class_weight, batch_size=batch_size, shuffle=shuffle, seed=seed,
                         steps=steps, allow_nonfinite=allow_nonfinite, first_key=first_key)   # class_weight: training only
    val = _from_arrays(*tail.sample, batch_size=validation_batch_size or batch_size,
                       allow_nonfinite=allow_nonfinite)
    return train, val


def validation_source(data, batch_size, steps, allow_nonfinite: bool):
    """fit's `validation_data`: (x, y[, sample_weight]) arrays, or a Dataset / iterable of batches (or None)."""
    if data is None:
        return None
    options = dict(steps=steps, allow_nonfinite=allow_nonfinite, steps_name="validation_steps")
    try:
        if isinstance(data, tuple) or (isinstance(data, list) and len(data) <= 3 and not is_batch_list(data)):
            vx, vy, vw = unpack(tuple(data))
            return as_source(vx, vy, vw, batch_size=batch_size, **options)
        return as_source(data, **options)
    except ValueError as e:
        raise ValueError(f"`validation_data`: {e}") from None


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
    n = arrays.num_samples(x, y)
    w = arrays.sample_weights(y, n, sample_weight, class_weight) if need_y else None
    if stream is False or not (on_disk or arrays.is_memmap(y) or steps is not None):
        return ArraySource(x, y, w, batch_size, bool(shuffle), seed)
    # On disk (or with steps_per_epoch): the same rows, in the same order, streamed in chunks.
    dataset = Dataset.from_tensor_slices((x,) if not need_y else (x, y) if w is None else (x, y, w))
    if shuffle:
        dataset = dataset.shuffle(n, seed=seed)
        dataset.drawn = True         # fit's seed, carried by a Position as a drawn one (data_seeds, data/_seeds.py)
    return _from_dataset(dataset.batch(batch_size), dict(
        allow_nonfinite=allow_nonfinite, need_y=need_y, first_key=first_key, steps=steps, class_weight=None))


def _from_dataset(dataset: Dataset, options: dict):
    if dataset._batched is False:
        raise ValueError(f"The dataset yields single samples ({dataset!r}); fit, evaluate and predict take "
                         f"batches. Add .batch(batch_size) to the pipeline.")
    generation = _next_generation(dataset)
    plan = fused_plan(dataset)
    if plan is not None and options["steps"] is None:
        source = _fused_source(plan, options, generation)
        source.dataset = dataset
        return source
    dataset = without_prefetch(dataset)
    n = dataset.cardinality()
    if n == INFINITE_CARDINALITY and options["steps"] is None:
        raise ValueError("The dataset is infinite (repeat() without a count); pass steps_per_epoch "
                         "(validation_steps, steps) to say how many batches make an epoch.")
    source = StreamSource(_DatasetPasses(dataset, generation), reiterable=True,
                          num_batches=n if n >= 0 else None, what="The dataset", **options)
    source.seed = generation
    return source


def _fused_source(plan: FusedPlan, options: dict, generation: int) -> ArraySource:
    x, y, w = unpack(plan.tensors)
    if options["need_y"] and y is None:
        raise ValueError(f"The dataset has x only ({describe(x)}); training and evaluating need "
                         f"from_tensor_slices((x, y)) or ((x, y, sample_weight)).")
    allow = options["allow_nonfinite"]
    x = arrays.standardize(x, "x", allow)
    y = arrays.standardize(y, "y", allow) if options["need_y"] else None
    n = arrays.num_samples(x, y)
    w = arrays.sample_weights(y, n, w, options["class_weight"]) if options["need_y"] else None
    return ArraySource(x, y, w, plan.batch_size, plan.order is not None, generation, True, plan.drop_remainder,
                       order=plan.order)


def _from_iterable(data, options: dict) -> StreamSource:
    one_shot = isinstance(data, collections.abc.Iterator)
    try:
        num_batches = None if one_shot else len(data)
    except (TypeError, NotImplementedError):    # no length (an IterableDataset's loader, grain IterDataset)
        num_batches = None
    opener = (lambda key: data) if one_shot else (lambda key: iter(data))
    return StreamSource(opener, reiterable=not one_shot, num_batches=num_batches, what="The input", **options)
