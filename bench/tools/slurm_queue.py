"""What SLURM says about a sweep's jobs (``squeue``), for ``bench.tools.status``.

A job of a sweep is found in the queue from submitit's ``.submitit/<array>_<task>`` folders,
``.slurm_array_ids`` (written by ``SLURM/sbatch_template.sh``) and the records'
``environment.slurm_job_id`` / ``slurm_array_job_id``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class QueueEntry:
    job_id: str          # as squeue prints it: "<array>_<task>" or "<id>"
    raw_id: str          # the job's own id (SLURM_JOB_ID inside the job)
    array_id: str
    task: str | None
    state: str
    reason: str
    restarts: int | None = None     # SLURM's restart count (>0: requeued at least once)


def sweep_slurm_ids(sweep_dir: Path, records: list[dict[str, Any]]
                     ) -> tuple[set[str], set[str], set[str]]:
    """(array job ids of this sweep, ids of single (non-array) jobs, job ids in its records).
    submitit names its folders ``<array>_<task>``, or ``<job>`` when a launch had one job."""
    folders = [d.name for d in (sweep_dir / ".submitit").glob("*") if d.is_dir()]
    arrays = {m.group(1) for name in folders if (m := re.fullmatch(r"(\d+)_\d+", name))}
    singles = {name for name in folders if name.isdigit()}
    ids_file = sweep_dir / ".slurm_array_ids"
    if ids_file.is_file():
        arrays |= {t for t in ids_file.read_text().split() if t.isdigit()}
    envs = [r.get("environment") for r in records]
    envs = [e for e in envs if isinstance(e, dict)]   # a damaged record has none
    raw = {str(e.get("slurm_job_id")) for e in envs if str(e.get("slurm_job_id") or "").isdigit()}
    arrays |= {str(e.get("slurm_array_job_id")) for e in envs
               if str(e.get("slurm_array_job_id") or "").isdigit()}
    return arrays, singles, raw


def squeue(job_ids: set[str]) -> list[QueueEntry]:
    """The queue entries of ``job_ids`` (one per array task). Raises ``OSError`` when
    squeue is missing or fails; an empty list when SLURM no longer knows any of them."""
    if not job_ids:
        return []
    exe = shutil.which("squeue")
    if exe is None:
        raise OSError("squeue not found")
    ids = ",".join(sorted(job_ids, key=int))
    fields = ["JobArrayID", "JobID", "ArrayJobID", "ArrayTaskID", "State", "Reason", "RestartCnt"]
    formats = [["-O", ",".join(f"{f}:0|" for f in fields)],   # width 0: unpadded, "|"-separated
               ["-o", "%i|%A|%F|%K|%T|%r|"]]                  # older squeue: no restart count
    for fmt in formats:
        proc = subprocess.run([exe, "-h", "-r", *fmt, "-j", ids], capture_output=True, text=True,
                              timeout=30)
        if proc.returncode == 0 or "Invalid job id" in proc.stderr:
            break
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:     # all of them have left the queue
            return []
        raise OSError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    out = []
    for line in proc.stdout.splitlines():
        job, raw, array, task, state, reason, restarts, *_ = line.strip().split("|") + [""] * 7
        if state:
            out.append(QueueEntry(job, raw, array, task if task.isdigit() else None, state,
                                  reason, int(restarts) if restarts.isdigit() else None))
    return out
