"""One mesh with a ``data`` axis over every device; batches sharded on it, params replicated.

Multi-process (``jax.distributed``: SLURM's srun tasks, or ``distributed.*`` on one machine):
in memory, global arrays are built with ``jax.make_array_from_callback`` from host data every
process holds identically, each process materializing only its own devices' shards; streamed,
each process reads only its rows and ``jax.make_array_from_process_local_data`` assembles
them (:func:`process_local_array`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(cfg=None, environ: Mapping[str, str] | None = None) -> None:
    """Join a multi-process job: the explicit ``distributed.*`` settings (one machine; CPU
    collectives through gloo), or SLURM's variables when srun started several tasks
    (:func:`slurm_distributed_args`). Must run before anything touches a JAX backend."""
    if jax.distributed.is_initialized():
        return
    if cfg is not None and cfg.coordinator is not None:
        # CPU collectives across processes (only the CPU backend reads this; no backend may be
        # initialized before jax.distributed.initialize, so don't ask which one is in use)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        from bench.core.coordinator import COORDINATOR_TIMEOUT_S, wait_for_coordinator

        wait_for_coordinator(cfg.coordinator, cfg.process_id)  # bounded, one line (not an abort)
        jax.distributed.initialize(coordinator_address=cfg.coordinator,
                                   num_processes=cfg.num_processes, process_id=cfg.process_id,
                                   initialization_timeout=COORDINATOR_TIMEOUT_S)
    elif (args := slurm_distributed_args(os.environ if environ is None else environ)) is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only nodes
        jax.distributed.initialize(**args)


SLURM_STEP_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                        "SLURM_LOCALID", "SLURM_NODEID")


def slurm_distributed_args(env: Mapping[str, str]) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` arguments for a task of an srun step of several tasks;
    None when this is not one.

    What ``jax.distributed.initialize()`` would detect by itself, minus SLURM's known pitfalls:

    - only *step* variables count (``SLURM_STEP_NUM_TASKS``, ``SLURM_STEP_NODELIST``): an
      sbatch script's own shell, or ``python`` run without srun inside ``salloc``, inherits
      the job's ``SLURM_NTASKS`` > 1 and would wait forever for tasks that never start;
      partially set variables (a login shell with a stale ``SLURM_JOB_ID``) mean "not a step";
    - the coordinator port also depends on the step id, so two multi-task steps of one job
      (a sweep inside one allocation) do not collide (``JAX_COORDINATOR_PORT`` overrides);
    - local devices: with one task per node the process drives every visible GPU (JAX alone
      would pick only GPU ``SLURM_LOCALID``); with several tasks per node and every GPU
      visible, task i takes its own share; with ``--gpus-per-task`` (or ``--gpu-bind``)
      SLURM already narrows ``CUDA_VISIBLE_DEVICES`` to the task's GPUs, which all belong to
      it (JAX alone would ask for device ``SLURM_LOCALID``, which does not exist there).
    """
    if any(not env.get(k) for k in SLURM_STEP_VARIABLES):
        return None
    tasks = int(env["SLURM_STEP_NUM_TASKS"])
    if tasks < 2:
        return None
    port = env.get("JAX_COORDINATOR_PORT") or str(
        61440 + (int(env["SLURM_JOB_ID"]) * 131 + int(env.get("SLURM_STEP_ID", "0") or 0)) % 4096)
    node = int(env["SLURM_NODEID"])
    per_node = tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""), node)
    return {"coordinator_address": f"{first_host(env['SLURM_STEP_NODELIST'])}:{port}",
            "num_processes": tasks, "process_id": int(env["SLURM_PROCID"]),
            "local_device_ids": local_gpu_ids(env, per_node, int(env["SLURM_LOCALID"]))}


def local_gpu_ids(env: Mapping[str, str], tasks_here: int, local_id: int) -> list[int] | None:
    """The GPUs (indices among the visible ones) of local task ``local_id`` of ``tasks_here``;
    None: every visible device."""
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if tasks_here <= 1 or not visible:
        return None
    per_task = env.get("SLURM_GPUS_PER_TASK", "").split(":")[-1]
    if (per_task.isdigit() and len(visible) <= int(per_task)) or len(visible) < tasks_here:
        return None  # narrowed by SLURM to this task's GPUs
    share = len(visible) // tasks_here
    return list(range(local_id * share, (local_id + 1) * share))


def tasks_on_node(spec: str, node: int) -> int:
    """Tasks on node ``node`` from SLURM's ``2(x3),1`` notation (0 if unknown)."""
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        value, _, times = part.partition("(x")
        counts += [int(value)] * (int(times.rstrip(")")) if times else 1)
    return counts[node] if node < len(counts) else 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``node[003-005,9],gpu1`` -> ``node003``."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    return prefix + rest.split("]")[0].split(",")[0].split("-")[0]


def make_mesh(devices: list | None = None) -> Mesh:
    """The ``data`` mesh over ``devices`` (default: every device, process by process, so each
    process's devices hold one contiguous block of every batch: the rows it reads)."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, batch_axis: int, ndim: int) -> NamedSharding:
    """Shard axis ``batch_axis`` of an ``ndim``-dimensional array over the data axis."""
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def process_local_array(local: np.ndarray, sharding: NamedSharding,
                        global_shape: tuple[int, ...]) -> jax.Array:
    """The global jax.Array of ``global_shape`` from this process's part of it: the rows its
    own devices hold (bench.data.stream.LocalSlice), read by this process only."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(local), tuple(global_shape))


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host array identical on every process (each sends its shards)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(tree, mesh: Mesh):
    """Place a pytree of host arrays on every device."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: global_array(np.asarray(x), sharding), tree)


def same_on_all_processes(text: str) -> str:
    """Process 0's ``text``, on every process (a collective: all must call it)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.int32(len(data)))))
    padded = np.zeros(longest + 1, np.uint8)  # + 1: a zero ends the text
    padded[:len(data)] = data
    chosen = np.asarray(multihost_utils.broadcast_one_to_all(padded))
    return bytes(chosen[:int(np.argmin(chosen))]).decode() if 0 in chosen else bytes(chosen).decode()


def tree_sum(parts: list):
    """The pairwise sum of pytrees ``parts`` in one fixed tree (left half + right half): the
    order never depends on where the parts were computed."""
    if len(parts) == 1:
        return parts[0]
    half = len(parts) // 2
    return jax.tree.map(jax.numpy.add, tree_sum(parts[:half]), tree_sum(parts[half:]))


@dataclass(frozen=True)
class FixedOrderReduction:
    """``parallel.deterministic_reduction``: a batch's mean over ``blocks`` fixed blocks of
    consecutive examples, each computed whole on one device, all-gathered (a copy, no
    arithmetic) and summed in one fixed tree. XLA's all-reduce sums per-device partials in an
    order that depends on the topology (in-process vs gloo ring across processes), and SGD
    amplifies the last-bit differences (about 1e-2 in the weights after 200 steps of the
    default CNN); here the sum is the same for any number of processes and devices that
    divides ``blocks``, one device included."""

    mesh: Mesh
    blocks: int

    def __call__(self, fn: Callable) -> Callable:
        """``fn(params, stats, x, y, key) -> (loss, acc, grads, stats)`` of one block turned
        into the same function of the whole (sharded) batch: every output the block mean."""
        devices, blocks = self.mesh.size, self.blocks
        if blocks % devices:
            raise ValueError(f"{blocks} reduction blocks cannot be split over {devices} devices")
        per_device = blocks // devices

        def local(params, stats, x, y, key):
            first = jax.lax.axis_index(DATA_AXIS) * per_device
            split = lambda a: a.reshape((per_device, a.shape[0] // per_device) + a.shape[1:])
            keys = jax.vmap(lambda j: jax.random.fold_in(key, first + j))(jax.numpy.arange(per_device))
            # vmapped, not a Python loop: one program per step whatever the block count (an
            # unrolled loop of blocks inside unrolled steps took minutes to compile)
            stacked = jax.vmap(fn, in_axes=(None, None, 0, 0, 0))(params, stats, split(x), split(y), keys)
            every = jax.lax.all_gather(stacked, DATA_AXIS, tiled=True)   # [blocks, ...]
            total = tree_sum([jax.tree.map(lambda leaf, j=j: leaf[j], every) for j in range(blocks)])
            return jax.tree.map(lambda s: s / blocks, total)

        data = P(DATA_AXIS)
        return jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(), data, data, P()),
                             out_specs=P(), check_vma=False)

    def total(self, values: jax.Array) -> jax.Array:
        """The sum of a per-example vector sharded over the data axis: each device's part
        summed, the parts all-gathered and added in one fixed tree (evaluation sums)."""
        def local(v):
            parts = jax.lax.all_gather(jax.numpy.sum(v)[None], DATA_AXIS, tiled=True)
            return tree_sum([parts[j] for j in range(parts.shape[0])])
        return jax.shard_map(local, mesh=self.mesh, in_specs=P(DATA_AXIS), out_specs=P(),
                             check_vma=False)(values)


def reduction_for(cfg: Any, mesh: Mesh) -> FixedOrderReduction | None:
    """The job's fixed-order reduction (``cfg``: its ``parallel`` section), None when off."""
    return FixedOrderReduction(mesh, cfg.reduction_blocks) if cfg.deterministic_reduction else None
