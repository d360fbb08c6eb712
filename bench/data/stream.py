"""The streamed input pipeline (``dataset.loader=stream``): grain over ArrayRecord files.

The example order is the :class:`~bench.rules.plan.BatchPlan`'s, exactly as in memory: step t
of replica k reads examples ``plan.indices(t, 1)[0, k]`` (a permutation per data epoch from
the replica's seed, drop-last, batch-size stages with exact offsets). A process reads only its
slice of each global batch -- the rows its devices hold in the mesh (:class:`LocalSlice`) --
and bench.core.source builds the global array with ``jax.make_array_from_process_local_data``. So for
the same seed a dataset that fits gives the same batches streamed or in memory, and 1 or N
processes see the same global batches.

grain runs the reads: one element per training step (the K x B_local examples of that step,
augmented per example, see bench.data.augment), ``num_threads`` reader threads and a prefetch
buffer of steps per process, and optionally ``workers`` worker processes
(``mp_prefetch``), so the next steps are read while the device trains. Evaluation streams the
whole train and test sets in chunks the same way.

Position: the plan is deterministic, so the iterator's position is the step. It is saved in
every orbax checkpoint, one file per process (grain's checkpoint handler,
``process_<i>-of-<n>.json``; see bench.core.checkpoint), and a run saved on N processes resumes
on M: the step is read back and each process re-derives its own slice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np

from bench.data.augment import Augment, example_rng
from bench.rules.plan import BatchPlan

# Per-channel mean and std (of pixel / 255) of the TFDS image datasets read as they are.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


@dataclass(frozen=True)
class Normalize:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (x.astype(np.float32) / np.float32(255.0) - mean) / std


@dataclass(frozen=True)
class StreamOptions:
    """grain settings (none of them changes a result)."""

    threads: int = 8          # reader threads per process (or per worker)
    prefetch: int = 8         # steps read ahead
    workers: int = 0          # grain worker processes (0: threads in this process only)


@dataclass(frozen=True)
class StreamDataset:
    """A dataset read from files as it is used: ArrayDataset's counterpart for streaming
    (same ``name``, ``num_train``, ``num_test``, ``input_shape``, ``num_classes``,
    ``provenance``, ``checksum()``, ``subset()``), plus :meth:`examples`."""

    name: str
    train: Any                       # ExportedSplit | TFDSSplit
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    sha256: str
    augment: Augment = Augment()
    normalize: Normalize | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    train_limit: int | None = None

    @property
    def num_train(self) -> int:
        return len(self.train) if self.train_limit is None else min(self.train_limit, len(self.train))

    @property
    def num_test(self) -> int:
        return len(self.test)

    @property
    def tokens_per_example(self) -> int | None:
        y = getattr(getattr(self.train, "codec", None), "y", None)
        return int(y.shape[0]) if y is not None and len(y.shape) == 1 else None

    @property
    def bytes_per_token(self) -> float:
        value = self.provenance.get("bytes_per_token")  # absent or null: not stated
        return 1.0 if value is None else float(value)

    def subset(self, num_train: int) -> "StreamDataset":
        """The first ``num_train`` training examples (the test set unchanged)."""
        return replace(self, train_limit=num_train)

    def checksum(self) -> str:
        """The data's SHA-256 as stored when it was prepared (exported: ArrayDataset.checksum
        of the source; TFDS: of its name, version and split sizes), cut with num_train."""
        if self.train_limit is None or self.train_limit >= len(self.train):
            return self.sha256
        return hashlib.sha256(f"{self.sha256}:first{self.train_limit}".encode()).hexdigest()

    def examples(self, split: str, indices: Sequence[int], *, seed: int | None = None,
                 epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices`` of ``split`` as model inputs x [n, ...] and labels y [n, ...].
        With ``seed`` (a training step) each is augmented from ``example_rng(seed, epoch,
        index)``; without, the evaluation transform applies."""
        x, y = (self.train if split == "train" else self.test).read(indices)
        train = seed is not None and self.augment.random
        if train:
            x = [self.augment.train(np.asarray(xi), example_rng(seed, epoch, i))
                 for xi, i in zip(x, indices)]
        elif self.augment.image_size is not None:
            x = [self.augment.eval(np.asarray(xi)) for xi in x]
        x = np.stack(x) if isinstance(x, list) else x
        if not len(indices):
            x = np.zeros((0, *self.input_shape), np.float32)
        return (self.normalize(x) if self.normalize is not None else x), np.asarray(y)


@dataclass(frozen=True)
class LocalSlice:
    """This process's rows of a batch sharded over the mesh's ``data`` axis: its devices are
    positions [first, stop) of the D devices, so of a batch of B it holds rows
    [first * B / D, stop * B / D)."""

    first: int
    stop: int
    devices: int

    @classmethod
    def of_mesh(cls, mesh: Any, process_index: int | None = None) -> "LocalSlice":
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == process_index]
        if mine != list(range(mine[0], mine[-1] + 1)):
            raise ValueError(f"process {process_index}'s devices are not contiguous in the mesh "
                             f"(positions {mine})")
        return cls(mine[0], mine[-1] + 1, mesh.size)

    def rows(self, batch: int) -> tuple[int, int]:
        if batch % self.devices:
            raise ValueError(f"batch {batch} is not divisible by the {self.devices} devices")
        per = batch // self.devices
        return self.first * per, self.stop * per


class TrainStep:
    """grain map: step t -> (x [K, B_local, ...], y [K, B_local, ...]) of this process."""

    def __init__(self, data: StreamDataset, plan: BatchPlan, local: LocalSlice):
        self.data, self.plan, self.local = data, plan, local
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # the plan caches permutations: one thread at a time
            idx = self.plan.indices(int(step), 1)[0]
            epoch, _ = self.plan.data_epoch(int(step))
        lo, hi = self.local.rows(idx.shape[1])
        pairs = [self.data.examples("train", idx[k, lo:hi], seed=seed, epoch=epoch)
                 for k, seed in enumerate(self.plan.seeds)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _iterate(dataset: Any, options: StreamOptions) -> Any:
    import grain

    ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=options.threads,
                                                   prefetch_buffer_size=options.prefetch))
    if options.workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker pool reads absl flags (defaults here)
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.workers))
    return iter(ds)


class TrainStream:
    """The process-local training batches of a plan, read ahead by grain.

    :meth:`take` returns steps [start, start + count) stacked ([count, K, B_local, ...]);
    asking for another start than the next step re-opens the iterator there. ``get_state`` /
    ``set_state`` / ``start_prefetch`` are what grain's orbax checkpoint handler calls.
    """

    def __init__(self, data: StreamDataset, plan: BatchPlan, local: LocalSlice,
                 options: StreamOptions = StreamOptions()):
        self.data, self.plan, self.local, self.options = data, plan, local, options
        self.next_step = 0
        self._it: Any = None

    def _open(self, step: int) -> None:
        import grain

        self.close()
        steps = grain.MapDataset.range(step, self.plan.total_steps).map(
            TrainStep(self.data, self.plan, self.local))
        self._it, self.next_step = _iterate(steps, self.options), step

    def take(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if self._it is None or start != self.next_step:
            self._open(start)
        elements = [next(self._it) for _ in range(count)]
        self.next_step += count
        return np.stack([e[0] for e in elements]), np.stack([e[1] for e in elements])

    def get_state(self) -> bytes:
        import jax

        return json.dumps({"step": self.next_step, "process_index": jax.process_index(),
                           "process_count": jax.process_count(),
                           "rows_of_devices": [self.local.first, self.local.stop, self.local.devices],
                           "grain": self._it.get_state() if self._it is not None else None}).encode()

    def set_state(self, state: bytes) -> None:
        """Position at the saved step (the iterator re-opens there on the next ``take``)."""
        self.close()
        self.next_step = int(json.loads(state)["step"])

    def start_prefetch(self) -> None:
        """Reading starts with the first ``take`` (it knows which step is wanted)."""

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


class EvalChunk:
    """grain map: chunk j -> (x [c_local, ...], y [c_local, ...], mask [c_local]) of a split."""

    def __init__(self, data: StreamDataset, split: str, idx: np.ndarray, mask: np.ndarray,
                 local: LocalSlice):
        self.data, self.split, self.idx, self.mask, self.local = data, split, idx, mask, local

    def __call__(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.local.rows(self.idx.shape[1])
        x, y = self.data.examples(self.split, self.idx[j, lo:hi])
        return x, y, self.mask[j, lo:hi]


def eval_chunks(data: StreamDataset, split: str, idx: np.ndarray, mask: np.ndarray,
                local: LocalSlice, options: StreamOptions = StreamOptions()) -> Iterator[tuple[np.ndarray, ...]]:
    """This process's rows of every evaluation chunk of ``split`` (``idx``, ``mask``: [C, c]
    from bench.core.source.eval_indices), read ahead by grain."""
    import grain

    chunks = grain.MapDataset.range(len(idx)).map(EvalChunk(data, split, idx, mask, local))
    return _iterate(chunks, replace(options, workers=0))


def exported_stream(path: str, augment: Augment = Augment(), num_classes: int | None = None) -> StreamDataset:
    """An exported directory (bench.data.export) as a StreamDataset."""
    from bench.data.arrayrecord import ExportedSplit, read_metadata

    meta = read_metadata(path)
    train, test = ExportedSplit(path, "train", meta), ExportedSplit(path, "test", meta)
    shape = tuple(meta["features"]["x"]["shape"])
    if augment.image_size is not None:
        shape = (augment.image_size, augment.image_size, *shape[2:])
    return StreamDataset(meta["name"], train, test, num_classes or int(meta["num_classes"]),
                         shape, meta["sha256"], augment,
                         provenance={**meta.get("provenance", {}), "arrayrecord": str(path)})


def tfds_stream(name: str, data_dir: str | None, augment: Augment, *, eval_split: str | None = None,
                normalize: Normalize | None = None) -> StreamDataset:
    """A prepared TFDS image dataset (by name under ``data_dir``, or a prepared directory's
    path) as a StreamDataset; ``train`` and ``eval_split`` (default: ``test``, ImageNet's
    ``validation``)."""
    from pathlib import Path

    from bench.data.arrayrecord import TFDS_EVAL_SPLIT, TFDSSplit, tfds_num_classes

    tfds_name = Path(name).name if not Path(name).expanduser().is_dir() else _tfds_dir_name(name)
    eval_split = eval_split or TFDS_EVAL_SPLIT.get(tfds_name, "test")
    train, test = TFDSSplit(name, "train", data_dir), TFDSSplit(name, eval_split, data_dir)
    if normalize is None:
        mean, std = NORMALIZATION.get(tfds_name, ((0.5,), (0.5,)))
        normalize = Normalize(mean, std)
    sample = np.asarray(train.read([0])[0][0])
    size = augment.image_size
    shape = (size, size, sample.shape[-1]) if size is not None else tuple(sample.shape)
    fingerprint = {"tfds": tfds_name, "splits": {"train": len(train), eval_split: len(test)}}
    sha = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    provenance = {"source": f"tfds {tfds_name} (prepared ArrayRecord, read as it is)",
                  **fingerprint, "normalize": {"mean": list(normalize.mean), "std": list(normalize.std)}}
    return StreamDataset(tfds_name, train, test, tfds_num_classes(name, data_dir), shape, sha,
                         augment, normalize, provenance)


def _tfds_dir_name(path: str) -> str:
    """The dataset name of a prepared TFDS directory (<data_dir>/<name>/<version>)."""
    from pathlib import Path

    info = Path(path).expanduser() / "dataset_info.json"
    if info.is_file():
        return json.loads(info.read_text()).get("name", Path(path).parent.name)
    return Path(path).expanduser().parent.name


# ------------------------------------------------------------------------ in memory (loader=memory)


def memory_available() -> dict[str, int]:
    """Bytes free for a dataset held in memory: the host's, and (accelerators) one device's,
    since the in-memory path keeps a copy on every device."""
    import psutil

    out = {"host": int(psutil.virtual_memory().available)}
    try:
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            out["device"] = int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 -- no backend statistics (CPU): the host bound applies
        pass
    return out


def require_fits_in_memory(name: str, nbytes: int, what: str,
                           available: dict[str, int] | None = None) -> None:
    """ConfigError (one line) when a dataset of ``nbytes`` cannot be held in memory; half of
    what is free is left for the model, the compiled programs and the host's copies."""
    available = memory_available() if available is None else available
    for where, free in available.items():
        if nbytes > free // 2:
            from bench.schema import ConfigError

            raise ConfigError(
                f"dataset={name} does not fit in memory: {nbytes / 2**30:.1f} GiB ({what}) and "
                f"the {where} has {free / 2**30:.1f} GiB free (at most half of it is used for "
                f"data); use dataset.loader=stream")


def load_in_memory(data: StreamDataset, chunk: int = 4096,
                   available: dict[str, int] | None = None) -> "ArrayDataset":
    """Every example of both splits, read once (no augmentation) into an ArrayDataset; an
    exported directory is checked against the SHA-256 in its metadata."""
    from bench.data.base import ArrayDataset
    from bench.schema import ConfigError

    sample_x, sample_y = data.examples("train", [0])
    per_example = sample_x[0].nbytes + sample_y[0].nbytes
    n = len(data.train) + len(data.test)
    require_fits_in_memory(data.name, n * per_example,
                           f"{n} examples of {sample_x[0].nbytes + sample_y[0].nbytes} bytes", available)

    def read_all(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [data.examples(split, np.arange(lo, min(lo + chunk, size))) for lo in range(0, size, chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    (x_train, y_train), (x_test, y_test) = read_all("train", len(data.train)), read_all("test", len(data.test))
    out = ArrayDataset(data.name, x_train, y_train, x_test, y_test, data.num_classes,
                       provenance=dict(data.provenance))
    if data.normalize is None and out.checksum() != data.sha256:
        raise ConfigError(f"dataset {data.provenance.get('arrayrecord', data.name)}: the examples' "
                          f"SHA-256 differs from its metadata ({data.sha256[:12]}...): the files "
                          f"changed since the export; export again")
    return out
