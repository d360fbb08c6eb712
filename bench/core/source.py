"""Where a job's examples come from: one :class:`DataSource` Protocol, two implementations.

- :class:`InMemorySource`: the dataset lives on every device; a training call receives example
  indices [n, K, B] and gathers its batches there, evaluation gathers its chunks the same way.
- :class:`StreamedSource` (``dataset.loader=stream``): grain reads this process's rows of every
  batch and evaluation chunk (bench.data.stream); a call receives the batches themselves.

The compiled programs (bench.core.step) are the same for both: each source hands them ``data``
(device arrays every call receives), ``inputs`` (what changes per call) and a pure ``take``
that turns one step's (one chunk's) inputs into the batch, so the in-memory vs streamed choice
is made once, here. Either way a batch is sharded over the mesh's ``data`` axis.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator, Protocol

import jax
import numpy as np
from jax.sharding import Mesh

from bench.data import ArrayDataset
from bench.rules.plan import BatchPlan
from bench.data.stream import LocalSlice, StreamDataset, TrainStream, eval_chunks
from bench.core.parallel import batch_sharded, global_array, process_local_array, put_replicated
from bench.rng import RngStream
from bench.schema import ConfigError

SPLITS = ("train", "test")


def eval_indices(n: int, chunk: int, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunked indices over a whole set, padded to full chunks, with a validity mask."""
    chunk = min(chunk, n)
    chunk = int(math.ceil(chunk / num_devices) * num_devices)
    num_chunks = int(math.ceil(n / chunk))
    idx = np.zeros(num_chunks * chunk, np.int32)
    idx[:n] = np.arange(n)
    mask = np.zeros(num_chunks * chunk, np.float32)
    mask[:n] = 1.0
    return idx.reshape(num_chunks, chunk), mask.reshape(num_chunks, chunk)


def gather_chunk(mesh: Mesh):
    """``take((x_all, y_all), (idx[c], mask[c])) -> (x, y, mask)``: one evaluation chunk gathered
    from a device-resident set, its examples sharded over the data axis."""
    def take(data, inputs_c):
        (x_all, y_all), (i, m) = data, inputs_c
        return jax.lax.with_sharding_constraint(x_all[i], batch_sharded(mesh, 0, x_all.ndim)), y_all[i], m
    return take


class DataSource(Protocol):
    """The examples of one job, as the compiled train and evaluation programs consume them."""

    dataset: ArrayDataset | StreamDataset
    pipeline: TrainStream | None  # the input pipeline whose position a checkpoint saves

    def train_data(self) -> Any:
        """Device arrays every training call receives (the whole set in memory, else ())."""

    def train_inputs(self, start: int, count: int) -> tuple[Any, float]:
        """Inputs [count, K, B, ...] of steps [start, start + count) and the seconds the device
        waited for them (counted as training time)."""

    def take_train(self, data: Any, inputs_t: Any) -> tuple[jax.Array, jax.Array]:
        """Pure: one step's batch x, y [K, B, ...] from ``data`` and its inputs."""

    def eval_parts(self, split: str) -> Iterator[tuple[Any, Any]]:
        """(data, inputs [C, ...]) of the evaluation calls covering ``split``, in order."""

    def take_eval(self, data: Any, inputs_c: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Pure: one evaluation chunk's x, y and padding mask from ``data`` and its inputs."""

    def eval_total(self, split: str) -> np.float32:
        """How many examples of ``split`` are evaluated (the masks' total)."""

    def probe_examples(self, subset_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The training examples curvature is measured on (host arrays)."""

    def close(self) -> None:
        """Stop readers (streamed)."""


def eval_sets(data: ArrayDataset | StreamDataset, batch_size: int, train_examples: int | None,
              num_devices: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Chunked indices and masks of every evaluated split (the train set capped at
    ``train_examples``)."""
    sizes = {"train": min(data.num_train, train_examples or data.num_train), "test": data.num_test}
    return {split: eval_indices(n, batch_size, num_devices) for split, n in sizes.items()}


class InMemorySource:
    """The dataset on every device; programs gather batches there from indices."""

    pipeline = None

    def __init__(self, dataset: ArrayDataset, plan: BatchPlan, mesh: Mesh,
                 sets: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.dataset, self.plan, self.mesh = dataset, plan, mesh
        self.arrays = {"train": put_replicated((dataset.x_train, dataset.y_train), mesh),
                       "test": put_replicated((dataset.x_test, dataset.y_test), mesh)}
        self.sets = {split: tuple(global_array(a, batch_sharded(mesh, 1, 2)) for a in arrays)
                     for split, arrays in sets.items()}
        self.totals = {split: np.float32(mask.sum()) for split, (_, mask) in sets.items()}

    def train_data(self) -> tuple[jax.Array, jax.Array]:
        return self.arrays["train"]

    def train_inputs(self, start: int, count: int) -> tuple[jax.Array, float]:
        """Example indices [count, K, B], sharded over B (ready at once: no wait)."""
        return global_array(self.plan.indices(start, count), batch_sharded(self.mesh, 2, 3)), 0.0

    def take_train(self, data: tuple[jax.Array, jax.Array], idx_t: jax.Array):
        return tuple(jax.lax.with_sharding_constraint(a[idx_t], batch_sharded(self.mesh, 1, a.ndim + 1))
                     for a in data)

    def eval_parts(self, split: str) -> Iterator[tuple[Any, Any]]:
        yield self.arrays[split], self.sets[split]  # one call: the program scans the chunks

    def take_eval(self, data: tuple[jax.Array, jax.Array], inputs_c: tuple[jax.Array, jax.Array]):
        return gather_chunk(self.mesh)(data, inputs_c)

    def eval_total(self, split: str) -> np.float32:
        return self.totals[split]

    def probe_examples(self, subset_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.x_train, self.dataset.y_train  # all of it (the probe subsets it)

    def close(self) -> None:
        pass


class StreamedSource:
    """grain reads this process's rows of every batch; programs receive the batches."""

    def __init__(self, dataset: StreamDataset, plan: BatchPlan, mesh: Mesh,
                 sets: dict[str, tuple[np.ndarray, np.ndarray]], options: Any):
        self.dataset, self.plan, self.mesh, self.sets, self.options = dataset, plan, mesh, sets, options
        self.local = LocalSlice.of_mesh(mesh)
        self.pipeline = TrainStream(dataset, plan, self.local, options)

    def train_data(self) -> tuple[()]:
        return ()

    def train_inputs(self, start: int, count: int) -> tuple[tuple[jax.Array, jax.Array], float]:
        """The global batches x, y [count, K, B, ...], assembled from every process's rows."""
        t = time.perf_counter()
        x, y = self.pipeline.take(start, count)
        b = self.plan.batch_size(start)
        batches = tuple(process_local_array(a, batch_sharded(self.mesh, 2, a.ndim), (*a.shape[:2], b, *a.shape[3:]))
                        for a in (x, y))
        return batches, time.perf_counter() - t

    @staticmethod
    def take_train(data: tuple[()], xy_t: tuple[jax.Array, jax.Array]):
        return xy_t

    def eval_parts(self, split: str) -> Iterator[tuple[Any, Any]]:
        """One call per chunk, each process reading its rows (a leading axis of one chunk)."""
        idx, mask = self.sets[split]
        c = idx.shape[1]
        for chunk in eval_chunks(self.dataset, split, idx, mask, self.local, self.options):
            yield (), tuple(process_local_array(a[None], batch_sharded(self.mesh, 1, a.ndim + 1), (1, c, *a.shape[1:]))
                            for a in chunk)

    @staticmethod
    def take_eval(data: tuple[()], xym_c: tuple[jax.Array, jax.Array, jax.Array]):
        return xym_c

    def eval_total(self, split: str) -> np.float32:
        return np.float32(self.sets[split][1].sum())

    def probe_examples(self, subset_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed random subset of ``subset_size`` examples, read into memory (the seed is
        replica 0's)."""
        n = self.dataset.num_train
        if not 0 < subset_size < n:
            raise ConfigError(f"metrics.subset_size={subset_size} with dataset.loader=stream: curvature "
                              f"reads its subset into memory; use a size below {n}")
        rng = np.random.default_rng([seed, int(RngStream.PROBES)])
        return self.dataset.examples("train", np.sort(rng.choice(n, subset_size, replace=False)))

    def close(self) -> None:
        self.pipeline.close()


def open_source(dataset: ArrayDataset | StreamDataset, plan: BatchPlan, mesh: Mesh,
                eval_cfg: Any, dataset_cfg: Any) -> DataSource:
    """The source of ``dataset`` (streamed when it is a StreamDataset), evaluating in chunks of
    ``eval_cfg.batch_size``; streamed, grain reads with ``dataset_cfg.stream_options()``."""
    sets = eval_sets(dataset, eval_cfg.batch_size, eval_cfg.train_examples, mesh.size)
    if isinstance(dataset, StreamDataset):
        return StreamedSource(dataset, plan, mesh, sets, dataset_cfg.stream_options())
    return InMemorySource(dataset, plan, mesh, sets)
