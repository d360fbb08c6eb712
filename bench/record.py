"""Run records: the unit of truth. One JSON file per trained replica, written atomically.

The schema is the typed definitions below (:class:`RunRecord` and the dicts it holds):
``bench.core.loop`` writes exactly these keys and ``analysis`` reads them. Every key is always
present; ``history`` rows carry, beyond :class:`EvalRow`, the curvature keys at steps where
curvature was measured: each registered curvature metric declares its own, typed
(:func:`curvature_row_keys`, from ``bench.metrics.suite``).
gap_loss = test_loss - train_loss; gap_accuracy = train_accuracy - test_accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import secrets
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypedDict, get_type_hints

SCHEMA = "batch-bench/run-record/v2"
# v1 (before 2026-11-29) lacks config_hash, experiment.warmup_steps and the SLURM array id;
# analysis reads both.
READABLE_SCHEMAS = (SCHEMA, "batch-bench/run-record/v1")
Status = Literal["running", "finished", "diverged", "failed"]
STATUSES: tuple[str, ...] = ("running", "finished", "diverged", "failed")
TRACKED_PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "hydra-core", "wandb",
    "numpy", "matfree", "mnist1d", "tensorflow-datasets", "grain", "batch-bench",
)


class Replica(TypedDict):
    index: int            # position in the job's LR-major grid of base LRs x seeds
    count: int            # K, replicas in the job
    seed: int
    base_lr: float        # before the batch-size scaling rule
    peak_lr: float        # after it, before the LR schedule
    hyperparams: dict[str, float]  # at batch_size: Adam's b1, b2, eps (sde / half-life rules), weight_decay (timescale)


class Experiment(TypedDict):
    dataset: str
    model: str
    optimizer: str
    scaling: str          # rule name: none | sqrt | linear
    schedule: str
    batch_size: int       # the peak B (B of every step unless batch_schedule is not constant)
    accumulate: int
    num_train: int        # examples (sequences for language data)
    num_test: int
    tokens_per_example: int | None  # T for language data, None for classification
    data_sha256: str      # of the arrays trained and evaluated on (bench.data.base.ArrayDataset)
    data_provenance: dict[str, Any]  # corpus checksums, Python version, entropy rate, ...
    num_params: int
    steps_per_epoch: int  # steps in data epoch 0 (the batch plan's)
    total_steps: int
    warmup_steps: int
    batch_schedule: str
    batch_stages: list[dict[str, Any]]  # {epoch, step, batch_size, lr_factor} per boundary


class Environment(TypedDict):
    python: str
    packages: dict[str, str | None]
    platform: str         # jax backend
    device_kind: str
    device_count: int
    local_device_count: int
    process_count: int
    hostname: str
    os: str
    git_commit: str | None
    slurm_job_id: str | None
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_restart_count: int      # SLURM_RESTART_COUNT: times this job was requeued (0 otherwise)
    compile_cache: dict[str, Any]  # {dir (None: off), atomic_writes, hits, misses} (bench.core.compile_cache)


# Language data adds to every eval row: tokens seen, and each loss in bits per byte.
LANGUAGE_ROW_KEYS = ("tokens", "train_bits_per_byte", "test_bits_per_byte")


class EvalRow(TypedDict):
    step: int             # steps taken before this evaluation
    epoch: float          # examples / num_train
    examples: int         # sum of the batch sizes of the steps taken
    train_seconds: float  # training wall time so far (compile and evaluation excluded)
    lr: float             # LR of the last step taken
    batch_size: int       # B of the last step taken
    train_loss: float     # full training set, eval mode (nats per token for language data)
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    gap_loss: float
    gap_accuracy: float


class Convergence(TypedDict):
    target_test_accuracy: float | None
    steps_to_target: int | None
    examples_to_target: int | None
    seconds_to_target: float | None
    target_train_loss: float | None
    steps_to_train_loss: int | None
    examples_to_train_loss: int | None
    seconds_to_train_loss: float | None
    target_test_loss: float | None  # Shallue / Zhang et al.: steps (and tokens) to a target loss
    steps_to_test_loss: int | None
    examples_to_test_loss: int | None
    tokens_to_test_loss: int | None
    seconds_to_test_loss: float | None


class Timings(TypedDict):
    compile_seconds: float
    train_seconds: float
    eval_seconds: float
    metrics_seconds: float
    total_seconds: float
    resumed_at_steps: list[int]


class Parent(TypedDict):
    """The checkpoint a branch started from (bench.core.branch); None for a fresh run."""
    output_dir: str         # the parent job's output_dir
    run_id: str             # the parent replica's run id
    step: int               # the parent's step of that checkpoint
    examples: int           # examples (and tokens) the parent had seen there: the branch's start
    tokens: int | None
    config_hash: str        # the parent's
    checkpoint_sha256: str  # SHA-256 of the step's checksum manifest (bench.core.checkpoint)
    replica: int            # the parent replica this one started from
    branch_step: int        # the branch's own step there (its plan entered at ``examples``)


class RunRecord(TypedDict):
    schema: str                     # SCHEMA
    run_id: str | None              # "<config hash>-r<replica index>"
    status: Status
    config: dict[str, Any]          # the full resolved config (bench.config.as_dict)
    config_hash: str | None         # hash of the keys that can change results
    replica: Replica
    experiment: Experiment
    environment: Environment
    history: list[EvalRow]
    final: EvalRow | None           # the last eval row
    convergence: Convergence
    curvature: dict[str, Any] | None  # curvature at the last step (keys: curvature_row_keys)
    timings: Timings
    diverged_at_step: int | None
    error: str | None               # one line
    artifacts: dict[str, str]       # name -> path relative to the record (e.g. final params)
    parent: Parent | None           # the checkpoint a branch started from (init_from)


def curvature_row_keys(metrics_config: Any | None = None) -> dict[str, Any]:
    """The keys a measured history row (and ``RunRecord.curvature``) adds to :class:`EvalRow`,
    with their types: the record keys of every registered curvature metric
    (``bench.metrics.suite.record_keys``; ``..._eps{eps}`` expanded for ``metrics_config``)."""
    # imported here: the registry imports jax, which reading and writing records does not need
    from bench.metrics.suite import record_keys

    return record_keys(metrics_config)


def keys_of(schema: type) -> tuple[str, ...]:
    """The keys of a TypedDict, in order."""
    return tuple(get_type_hints(schema))


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write text to ``path`` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 applies the umask, like every other file (mkstemp would force 0600 and
    # hide results from the rest of a group on a shared filesystem).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """Convert numpy/jax scalars and non-finite floats to strict-JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_record(path: Path | str, record: RunRecord | dict[str, Any]) -> None:
    """Validate the top-level shape and write the record atomically."""
    missing = [k for k in empty_record() if k not in record]
    if missing:
        raise ValueError(f"run record is missing keys: {missing}")
    if record["status"] not in STATUSES:
        raise ValueError(f"run record status {record['status']!r} not in {STATUSES}")
    atomic_write_text(path, json.dumps(_json_safe(record), indent=1, allow_nan=False) + "\n")


def read_record(path: Path | str) -> RunRecord:
    record = json.loads(Path(path).read_text())
    if record.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: not a batch-bench run record (schema={record.get('schema')!r})")
    return record


def find_records(root: Path | str) -> list[Path]:
    """All run-record files under ``root`` (recursively), sorted."""
    out = []
    for p in sorted(Path(root).rglob("record_r*.json")):
        try:
            if json.loads(p.read_text()).get("schema") in READABLE_SCHEMAS:
                out.append(p)
        except (json.JSONDecodeError, OSError):
            continue
    return out


def record_filename(replica_index: int) -> str:
    return f"record_r{replica_index}.json"


def empty_record() -> RunRecord:
    return {  # type: ignore[typeddict-item]  (filled in by bench.core.run_records)
        "schema": SCHEMA, "run_id": None, "status": "running", "config": {}, "config_hash": None,
        "replica": {}, "experiment": {}, "environment": {}, "history": [], "final": None,
        "convergence": {}, "curvature": None, "timings": {}, "diverged_at_step": None,
        "error": None, "artifacts": {}, "parent": None,
    }


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a config dict (keys sorted). Pass the keys that can change results
    (``bench.config.result_config``), so logging and output paths do not change it."""
    blob = json.dumps(_json_safe(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> Environment:
    """Versions, devices and host: everything needed to say where a number came from."""
    import jax

    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in TRACKED_PACKAGES},
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "git_commit": _git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
    }
