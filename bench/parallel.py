"""One mesh with a ``data`` axis over every device; batches sharded on it, params replicated.

Multi-process (SLURM + ``jax.distributed.initialize()``) needs no change here: global arrays
are built with ``jax.make_array_from_callback``, so each process materializes only the shards
its own devices hold, from host data that every process derives identically from the seed.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Join a multi-process job when SLURM launched several tasks (reads SLURM's variables)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and jax.process_count() == 1:
        jax.distributed.initialize()


def make_mesh(devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, batch_axis: int, ndim: int) -> NamedSharding:
    """Shard axis ``batch_axis`` of an ``ndim``-dimensional array over the data axis."""
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host array identical on every process (each sends its shards)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(tree, mesh: Mesh):
    """Place a pytree of host arrays on every device."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: global_array(np.asarray(x), sharding), tree)
