"""Data parallel training on several devices and hosts, with Keras 3's names, on `jax.sharding`.

    >>> import batchfit as bf
    >>> bf.distribution.set_distribution(bf.distribution.DataParallel())   # every device   # doctest: +SKIP
    >>> model.compile(...); model.fit(x, y, batch_size=64)                                  # doctest: +SKIP

With a `DataParallel` distribution set, the training state (weights, optimizer state, metric
accumulators) is replicated on a `Mesh` over the devices and every batch is split along its
first axis inside the compiled step; XLA (GSPMD) adds the reductions over devices. The loss
semantics do not change: sums and counts are reduced over every sample of the global batch,
and a batch the device count does not divide is split unevenly, never padded or dropped (the
*_on_batch calls run such a batch whole on every device instead).
Set the distribution before `compile()`: the state is placed when the model is compiled.

Several hosts: call `initialize()` in every process first (arguments, or the environment a
cluster scheduler sets); docs/distributed.md says how to launch. Each process then passes its own
share of the data (arrays or a stream); step i trains on batch i of every process at once (one
global batch, one global loss), and `predict` gives each process the outputs of its own rows.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from batchfit._keras_names import missing as _missing
from batchfit.errors import describe

__all__ = ["DataParallel", "distribution", "set_distribution", "list_devices", "get_device_count", "initialize"]

_current: list = [None]          # the DataParallel in effect (None: one device, the programs of old)


def _jax_devices(device_type: str | None) -> list:
    try:
        return jax.devices(device_type.lower()) if device_type else jax.devices()
    except RuntimeError as e:
        raise ValueError(f"No {device_type!r} devices: {e}. Known here: {list_devices()}.") from None


def list_devices(device_type: str | None = None) -> list[str]:
    """The devices of every process, as Keras names them ("cpu:0", "gpu:1", ...).

    device_type: "cpu", "gpu" or "tpu"; None: the default backend's.
    """
    return [f"{d.platform}:{d.id}" for d in _jax_devices(device_type)]


def get_device_count(device_type: str | None = None) -> int:
    """The number of devices of every process (Keras's name)."""
    return len(_jax_devices(device_type))


def _resolve(devices) -> list:
    """`devices` (None, or a list of "cpu:0"-style names or jax Devices) as jax Devices, checked."""
    if devices is None:
        return jax.devices()
    if isinstance(devices, (str, jax.Device)) or not hasattr(devices, "__iter__"):
        raise TypeError(f"`devices` must be a list of devices; got {describe(devices)}. "
                        f"Pass e.g. {list_devices()[:2]} (bf.distribution.list_devices()) or None for all.")
    by_name = {f"{d.platform}:{d.id}": d for d in jax.devices()}
    found = []
    for device in devices:
        if isinstance(device, str) and device.lower() in by_name:
            device = by_name[device.lower()]
        if not isinstance(device, jax.Device) or device not in by_name.values():
            raise ValueError(f"Unknown device {device!r} in `devices`. Known: {sorted(by_name)} "
                             f"(bf.distribution.list_devices()).")
        found.append(device)
    if not found or len(set(found)) != len(found):
        raise ValueError(f"`devices` must name at least one device, each once; got {list(devices)!r}.")
    return found


class DataParallel:
    """Data parallelism: the state replicated on every device, each batch split along its first axis.

    devices: the devices to train on, as names from `list_devices()` or jax Devices; None: all of
      them (of every process, after `initialize()`).
    batch_dim_name: the name of the Mesh axis the batch is split over.
    """

    def __init__(self, devices=None, batch_dim_name: str = "batch"):
        if not isinstance(batch_dim_name, str) or not batch_dim_name:
            raise TypeError(f"`batch_dim_name` must be a non-empty string; got {describe(batch_dim_name)}.")
        self._devices = _resolve(devices)
        self.batch_dim_name = batch_dim_name
        self.mesh = Mesh(np.array(self._devices, dtype=object), (batch_dim_name,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())            # weights, optimizer state
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(batch_dim_name))   # [B, ...] split on B
        processes = sorted({d.process_index for d in self._devices})
        self.num_processes = len(processes)
        if self.num_processes > 1:        # each process's rows on its own devices: [P, N, ...] split on P
            by_process = [[d for d in self._devices if d.process_index == p] for p in processes]
            if len({len(group) for group in by_process}) > 1 or self._devices != sum(by_process, []):
                raise ValueError(f"DataParallel over several processes needs the same number of devices from "
                                 f"each, listed process by process; got {self.devices}. Pass devices=None.")
            grid = Mesh(np.array(by_process, dtype=object), ("process", batch_dim_name))
            self.process_sharding = NamedSharding(grid, PartitionSpec("process"))

    @property
    def devices(self) -> list[str]:
        """The mesh's devices, as Keras names them."""
        return [f"{d.platform}:{d.id}" for d in self._devices]

    @contextlib.contextmanager
    def scope(self):
        """`with distribution.scope():` this distribution in effect inside the block (Keras's name)."""
        previous = _current[0]
        set_distribution(self)
        try:
            yield self
        finally:
            _current[0] = previous

    def __repr__(self) -> str:
        return f"DataParallel(devices={self.devices!r})"


def set_distribution(value: DataParallel | None) -> None:
    """Train every model compiled from now on with `value` (None: on one device again)."""
    if value is not None and not isinstance(value, DataParallel):
        raise TypeError(f"set_distribution() takes a bf.distribution.DataParallel or None; got {describe(value)}. "
                        f"Model parallelism (Keras's ModelParallel) is not supported.")
    _current[0] = value


def distribution() -> DataParallel | None:
    """The distribution in effect (None: one device)."""
    return _current[0]


def across_processes() -> bool:
    """Whether the data of compiled calls is [P, N, ...]: row n of each of the P processes' own share."""
    current = _current[0]
    return current is not None and current.num_processes > 1


def constrain_batch(tree):
    """`tree`'s arrays [B, ...] split along B over the distribution's devices, in traced code.

    With no distribution this returns `tree` itself and adds nothing to the program. B need not
    be a multiple of the device count: GSPMD splits unevenly and its reductions stay exact.
    """
    current = _current[0]
    if current is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, current.batch_sharding), tree)


def constrain_replicated(tree):
    """`tree`'s arrays whole on every device, in traced code (e.g. outputs gathered from the batch split)."""
    current = _current[0]
    if current is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, current.replicated), tree)


def constrain_processes(tree):
    """`tree`'s arrays [P, ...] split along P over the processes, each row whole on its process's
    devices, in traced code (predict's outputs: each process reads back its own rows)."""
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, _current[0].process_sharding), tree)


def from_processes(tree, checked: bool = True):
    """[P, N, ...] global arrays from every process's own [N, ...] (row n of process p at [p, n]).

    checked: gather every process's shapes first and refuse unequal shares (a collective: every
    process must call this at the same point); False when the caller has checked them already.
    """
    current = _current[0]
    leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
    if checked:
        _refuse_unequal_shapes([a.shape for a in leaves])
    placed = [jax.make_array_from_process_local_data(current.process_sharding, a[None],
                                                     (current.num_processes,) + a.shape) for a in leaves]
    return jax.tree.unflatten(jax.tree.structure(tree), placed)


def _refuse_unequal_shapes(shapes: list) -> None:
    """One collective: the arrays' shapes in every process; an error naming the first that differs."""
    from jax.experimental import multihost_utils
    flat = np.array([d for shape in shapes for d in (len(shape), *shape)], np.int64)
    rows = np.asarray(multihost_utils.process_allgather(flat)).reshape(-1, len(flat)).tolist()
    per_process = []
    for row in rows:
        found, i = [], 0
        while i < len(row):
            found.append(tuple(row[i + 1:i + 1 + row[i]]))
            i += 1 + row[i]
        per_process.append(found)
    for leaf in range(len(shapes)):
        got = [found[leaf] for found in per_process]
        if len(set(got)) > 1:
            raise ValueError(f"With several processes each one passes its own share of the data, all of the same "
                             f"shape; got shapes {got} (one per process). Give every process the same number of "
                             f"samples (drop the remainder, or pad with sample weight 0).")


def agree_across_processes(values, describe_row) -> None:
    """Refuse to go on unless every process passes the same `values` (ints), in a collective all of them call.

    describe_row(row) -> str says what one process's values mean, for the error every process raises.
    """
    from jax.experimental import multihost_utils
    rows = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64))).reshape(-1, len(values))
    if len({tuple(row) for row in rows.tolist()}) > 1:
        got = "; ".join(f"process {p}: {describe_row(row)}" for p, row in enumerate(rows.tolist()))
        raise ValueError(f"With several processes, every process's input must give the same batches in step (the "
                         f"same sizes and shapes, the same number of them); got {got}. Give every process a "
                         f"share of the same size and batch it the same way (e.g. Dataset.shard(num_processes, "
                         f"process_index) of a dataset whose size they divide).")


def own_rows(array):
    """This process's row [N, ...] of a [P, N, ...] array split over the processes (constrain_processes)."""
    return array.addressable_shards[0].data[0]


_ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                "KERAS_DISTRIBUTION_PROCESS_ID")


def initialize(job_addresses: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Connect this process to the others of a multi-host job (`jax.distributed.initialize`).

    Call it once per process, before anything else touches JAX. Arguments not given are read
    from Keras's variables KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's "host:port"
    first; a comma-separated list as Keras writes it), KERAS_DISTRIBUTION_NUM_PROCESSES and
    KERAS_DISTRIBUTION_PROCESS_ID; whatever is still missing JAX detects from the cluster
    (SLURM, Open MPI, Kubernetes, Cloud TPU). After it, `list_devices()` names the devices of
    every process and `DataParallel()` spans them all.
    """
    values = [job_addresses, num_processes, process_id]
    for i, name in enumerate(_ENVIRONMENT):
        if values[i] is None and os.environ.get(name):
            values[i] = os.environ[name]
    address, count, index = values
    if address is not None:
        address = str(address).split(",")[0].strip()
    try:
        count = None if count is None else int(count)
        index = None if index is None else int(index)
    except ValueError:
        raise ValueError(f"initialize(): num_processes and process_id must be integers; got {count!r} and "
                         f"{index!r} (arguments or {_ENVIRONMENT[1]} / {_ENVIRONMENT[2]}).") from None
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"initialize(): process_id must be in [0, num_processes); got process_id={index} of "
                         f"num_processes={count}. Number the processes 0 .. {count - 1 if count > 0 else 0}.")
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)


__getattr__ = _missing(__name__, lambda: list(globals()))   # a Keras name batchfit lacks says so
