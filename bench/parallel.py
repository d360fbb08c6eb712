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


def maybe_initialize_distributed(cfg=None) -> None:
    """Join a multi-process job: the explicit ``distributed.*`` settings (one machine; CPU
    collectives through gloo), or SLURM's variables when SLURM launched several tasks."""
    if jax.distributed.is_initialized():
        return
    if cfg is not None and cfg.coordinator is not None:
        # CPU collectives across processes (only the CPU backend reads this; no backend may be
        # initialized before jax.distributed.initialize, so don't ask which one is in use)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=cfg.coordinator,
                                   num_processes=cfg.num_processes, process_id=cfg.process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and jax.process_count() == 1:
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
