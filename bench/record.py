"""Run records: the unit of truth. One JSON file per trained replica, written atomically.

Schema (``SCHEMA``), every key always present::

    schema          "batch-bench/run-record/v1"
    run_id          stable id: "<config hash>-r<replica index>"
    status          "running" | "finished" | "diverged" | "failed"
    config          the full resolved config (a dict, as composed by Hydra)
    replica         {index, count, seed, base_lr, peak_lr}
    experiment      {dataset, model, optimizer, scaling, schedule, batch_size,
                     num_train, num_test, num_params, steps_per_epoch, total_steps}
    environment     versions of python/jax/jaxlib/flax/optax/..., platform, devices, git commit
    history         list of eval rows: {step, epoch, examples, train_seconds, lr, batch_size,
                     train_loss, train_accuracy, test_loss, test_accuracy, gap_loss,
                     gap_accuracy, [curvature keys...]}
    final           the last eval row (or null if none)
    convergence     {target_test_accuracy, steps_to_target, examples_to_target,
                     seconds_to_target, target_train_loss, steps_to_train_loss,
                     examples_to_train_loss, seconds_to_train_loss}
    curvature       final curvature statistics (dict) or null
    timings         {compile_seconds, train_seconds, eval_seconds, total_seconds}
    diverged_at_step  int or null
    error           one-line error message or null
    artifacts       {name: path relative to the record file} (e.g. final params)

gap_loss = test_loss - train_loss; gap_accuracy = train_accuracy - test_accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "batch-bench/run-record/v1"
STATUSES = ("running", "finished", "diverged", "failed")
TRACKED_PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "hydra-core", "wandb",
    "numpy", "matfree", "mnist1d", "tensorflow-datasets", "batch-bench",
)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write text to ``path`` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def write_record(path: Path | str, record: dict[str, Any]) -> None:
    """Validate the top-level shape and write the record atomically."""
    missing = [k for k in empty_record() if k not in record]
    if missing:
        raise ValueError(f"run record is missing keys: {missing}")
    if record["status"] not in STATUSES:
        raise ValueError(f"run record status {record['status']!r} not in {STATUSES}")
    atomic_write_text(path, json.dumps(_json_safe(record), indent=1, allow_nan=False) + "\n")


def read_record(path: Path | str) -> dict[str, Any]:
    record = json.loads(Path(path).read_text())
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a batch-bench run record (schema={record.get('schema')!r})")
    return record


def find_records(root: Path | str) -> list[Path]:
    """All run-record files under ``root`` (recursively), sorted."""
    out = []
    for p in sorted(Path(root).rglob("record_r*.json")):
        try:
            if json.loads(p.read_text()).get("schema") == SCHEMA:
                out.append(p)
        except (json.JSONDecodeError, OSError):
            continue
    return out


def record_filename(replica_index: int) -> str:
    return f"record_r{replica_index}.json"


def empty_record() -> dict[str, Any]:
    return {
        "schema": SCHEMA, "run_id": None, "status": "running", "config": {}, "replica": {},
        "experiment": {}, "environment": {}, "history": [], "final": None,
        "convergence": {}, "curvature": None, "timings": {}, "diverged_at_step": None,
        "error": None, "artifacts": {},
    }


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a resolved config (keys sorted), excluding where outputs go."""
    semantic = {k: v for k, v in config.items() if k not in ("output_dir", "logger")}
    blob = json.dumps(_json_safe(semantic), sort_keys=True).encode()
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


def environment() -> dict[str, Any]:
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
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
