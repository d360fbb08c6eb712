"""Status of a sweep from its run records: ``python -m bench.tools.status <sweep dir> [--json]``.

A job is a Hydra job directory (one with ``.hydra/overrides.yaml``; ``<sweep>/<num>`` in
a multirun) or, without Hydra metadata, the directory holding its records. Its status
comes from the records of all its replicas:

    finished   every replica finished or diverged, at least one finished
    diverged   every replica diverged
    failed     some replica failed (and none is running)
    running    some replica is "running" (in progress, or interrupted: preempted or
               killed before the end) or fewer records than ``replica.count``
    missing    no record: a job directory without records, or a job that
               ``multirun.yaml`` (sweeper params + sweep overrides) or ``jobs.txt``
               (``SLURM/sbatch_template.sh``) expects but that has no directory yet
    unreadable some record file cannot be read (truncated, not JSON, not a run record, no
               or an unknown status): the error column names it; nothing is reused

``bench.core.saved_records.is_finished(output_dir)`` and ``bench.core.reuse.check_reuse``
(what the training entry point calls to skip jobs that are done) share ``replicas_done``, so
re-running the same sweep command into the same sweep dir only runs the rest.

Also shown per job:

- what SLURM says, when ``squeue`` answers: jobs of this sweep still pending, requeued
  (pending again after a preemption/requeue) or running, found from submitit's
  ``.submitit/<array>_<task>`` folders, ``.slurm_array_ids`` (``SLURM/sbatch_template.sh``)
  and the records' ``environment.slurm_job_id``. A live job means: do not re-submit into
  this directory yet. Without ``squeue`` (or SLURM) the column is left empty.
- the configuration of its records: the config hash (``config_hash``, else the
  ``run_id`` prefix), and any override in ``.hydra/overrides.yaml`` that the records'
  stored ``config`` contradicts (the directory was reused with other overrides).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.tools.jobs_file import job_lines
from bench.core.saved_records import DONE, expected_count, field_of, load_records, record_files
from bench.tools.overrides import config_mismatches, records_config_hash
from bench.tools.slurm_queue import squeue, sweep_slurm_ids

JOB_STATUSES = ("finished", "diverged", "failed", "running", "missing", "unreadable")
_STYLE = {"finished": "green", "diverged": "yellow", "failed": "red", "running": "cyan",
          "missing": "magenta", "unreadable": "bold red"}


@dataclass
class JobStatus:
    job: str                      # job dir relative to the sweep dir ("3"), "." for the dir itself
    status: str                   # one of JOB_STATUSES
    overrides: list[str] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)   # record status -> count
    expected_replicas: int | None = None
    step: int | None = None       # last evaluated step (max over replicas)
    test_accuracy: float | None = None   # best final test accuracy over replicas
    error: str | None = None      # first error message among the records
    records: list[str] = field(default_factory=list)
    config_hash: str | None = None       # of the records' config ("a,b" if they disagree)
    config_mismatch: list[str] = field(default_factory=list)  # overrides the records contradict
    slurm_job: str | None = None         # "<array>_<task>" (or job id) while SLURM lists it
    queue: str | None = None             # squeue state: PENDING, RUNNING, REQUEUED, ...
    queue_reason: str | None = None      # squeue reason, e.g. BeginTime after a requeue
    restarts: int | None = None          # SLURM restart count (requeues), when squeue says
    unreadable: list[str] = field(default_factory=list)  # "<record file>: why it can't be read"


def aggregate_status(statuses: list[str], expected_replicas: int | None = None, *,
                     unreadable: bool = False) -> str:
    """A job's status from its replicas' record statuses (see module docstring)."""
    if unreadable:
        return "unreadable"
    if not statuses:
        return "missing"
    if "running" in statuses or (expected_replicas and len(statuses) < expected_replicas):
        return "running"
    if "failed" in statuses:
        return "failed"
    if all(s == "diverged" for s in statuses):
        return "diverged"
    if all(s in DONE for s in statuses):
        return "finished"
    return "unreadable"   # a status that no run record may have


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Hydra job directories (with ``.hydra/overrides.yaml``) under ``sweep_dir``."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted((d for d in dirs if ".submitit" not in d.relative_to(sweep_dir).parts),
                  key=lambda d: _sort_key(d.relative_to(sweep_dir).as_posix()))


def _sort_key(name: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("/"))


def _read_overrides(job_dir: Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in data] if isinstance(data, list) else []


def expected_jobs(sweep_dir: Path | str) -> list[tuple[str | None, list[str]]]:
    """Jobs a sweep should have: ``(dir name or None, overrides)`` in launch order.

    From ``multirun.yaml`` (Hydra's BasicSweeper expansion of ``hydra.sweeper.params``
    plus the sweep overrides of ``hydra.overrides.task``; the dir name is the job number
    when ``hydra.sweep.subdir`` is Hydra's default) or from ``jobs.txt`` (one override
    line per array task, dir name = line index). Empty if neither can be read.
    """
    sweep_dir = Path(sweep_dir)
    jobs_txt = sweep_dir / "jobs.txt"
    if jobs_txt.is_file():
        try:   # the parser SLURM/sbatch_template.sh runs, so this is what the tasks ran
            return [(str(i), args) for i, args in enumerate(job_lines(jobs_txt))]
        except (OSError, ValueError):
            return []
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(multirun)
        # params is null for a command-line sweep (batch_size=32,64): everything is in task
        params = OmegaConf.to_container(cfg, resolve=False).get("hydra", {})
        subdir = (params.get("sweep") or {}).get("subdir")
        task = (params.get("overrides") or {}).get("task") or []
        params = (params.get("sweeper") or {}).get("params") or {}
        lines = [f"{k}={v}" for k, v in (params or {}).items()] + [str(t) for t in task or []]
        parsed = OverridesParser.create().parse_overrides(lines)
        batches = BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:  # unreadable or non-basic sweep (e.g. an optimizer sweeper)
        return []
    default_subdir = subdir in (None, "${hydra.job.num}")
    return [(str(i) if default_subdir else None, list(ovr)) for i, ovr in enumerate(batches)]


def _attach_queue(sweep_dir: Path, jobs: list[JobStatus],
                  records: dict[str, list[dict[str, Any]]]) -> str | None:
    """Fill ``slurm_job`` / ``queue`` / ``queue_reason`` from squeue; returns a note when
    the queue could not be checked (None when it was, or when nothing here ran on SLURM)."""
    all_records = [r for rs in records.values() for r in rs]
    arrays, singles, raw = sweep_slurm_ids(sweep_dir, all_records)
    if not (arrays or singles or raw):
        return None
    try:
        entries = squeue(arrays | singles | raw)
    except (OSError, subprocess.SubprocessError) as err:
        return f"SLURM queue not checked ({err})"
    by_raw: dict[str, tuple[str, str | None]] = {}   # job id -> (job name, array task)
    for name, recs in records.items():
        for r in recs:
            env = field_of(r, "environment")
            if env.get("slurm_job_id"):
                task = env.get("slurm_array_task_id")
                by_raw[str(env["slurm_job_id"])] = (name, None if task is None else str(task))
    by_name = {j.job: j for j in jobs}
    for e in entries:
        # its records name the job; a task not started yet: array task i is job dir i
        # (submitit numbers the tasks of a launch in job order; sbatch_template.sh too),
        # and a launch of a single job is job 0
        name, task = by_raw.get(e.raw_id, (None, None))
        if task != e.task:                  # an old record's id, now another job's
            name = None
        if name is None and e.task is not None and e.array_id in arrays:
            name = e.task
        if name is None and e.task is None and e.raw_id in singles:
            name = "0"
        if name is None:
            continue
        job = by_name.get(name)
        if job is None:
            job = by_name[name] = JobStatus(job=name, status="missing")
            jobs.append(job)
        job.slurm_job, job.queue, job.queue_reason, job.restarts = (e.job_id, e.state, e.reason,
                                                                    e.restarts)
    return None


def queue_label(job: JobStatus) -> str:
    """"requeued, pending (BeginTime)", "pending (Priority)", "running (restart 1)", ... or ""."""
    if job.queue is None:
        return ""
    state = job.queue.lower().replace("_", " ")
    # requeued: SLURM counted a restart, or (no count) the job already wrote records
    requeued = job.restarts > 0 if job.restarts is not None else bool(job.replicas)
    if job.queue == "PENDING" and requeued:
        state = "requeued, pending"
    elif job.restarts:
        state += f" (restart {job.restarts})"
    reason = f" ({job.queue_reason})" if job.queue_reason not in (None, "", "None") else ""
    return f"{state}{reason}"


def live_jobs(jobs: list[JobStatus]) -> list[JobStatus]:
    """Jobs SLURM still lists (pending, requeued, running, completing)."""
    return [j for j in jobs if j.queue is not None]


def sweep_status(sweep_dir: Path | str, *, queue: bool = True) -> list[JobStatus]:
    """One ``JobStatus`` per job found or expected under ``sweep_dir``; with ``queue``, ask
    squeue about the sweep's SLURM jobs (see ``sweep_report`` for the note when it can't)."""
    return sweep_report(sweep_dir, queue=queue)[0]


def sweep_report(sweep_dir: Path | str, *, queue: bool = True) -> tuple[list[JobStatus], str | None]:
    """``(jobs, note)``: one ``JobStatus`` per job found or expected under ``sweep_dir``;
    note says why the SLURM queue was not checked (else None)."""
    sweep_dir = Path(sweep_dir).absolute()
    job_dirs = _job_dirs(sweep_dir)
    records_by_job: dict[Path, list[Path]] = {d: [] for d in job_dirs}
    hydra_jobs = set(job_dirs)
    for rec in record_files(sweep_dir):
        owner = next((d for d in (rec.parent, *rec.parent.parents) if d in hydra_jobs),
                     rec.parent)  # the deepest job dir holding the record
        records_by_job.setdefault(owner, []).append(rec)

    jobs: list[JobStatus] = []
    loaded: dict[str, list[dict[str, Any]]] = {}
    for job_dir, paths in records_by_job.items():
        records, bad = load_records(paths)
        statuses = [r["status"] for r in records]
        expected = expected_count(records)
        steps = [field_of(r, "final").get("step") for r in records]
        accs = [field_of(r, "final").get("test_accuracy") for r in records]
        accs = [a for a in accs if isinstance(a, (int, float))]
        unreadable = [f"{p.relative_to(sweep_dir).as_posix()}: {why}" for p, why in bad.items()]
        errors = [f"unreadable record {u}" for u in unreadable]
        errors += [str(r.get("error")) for r in records if r.get("error")]
        rel = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
        overrides = _read_overrides(job_dir)
        mismatch = sorted({m for r in records
                           for m in config_mismatches(overrides, field_of(r, "config"))})
        if not overrides and records:
            stored = field_of(records[0], "config").get("overrides")
            overrides = [str(o) for o in stored] if isinstance(stored, list) else []
        loaded[rel] = records
        jobs.append(JobStatus(
            job=rel, status=aggregate_status(statuses, expected, unreadable=bool(bad)),
            overrides=overrides, replicas=dict(Counter(statuses)), expected_replicas=expected,
            step=max((s for s in steps if isinstance(s, int)), default=None),
            test_accuracy=max(accs) if accs else None,
            error=errors[0] if errors else None,
            records=[p.relative_to(sweep_dir).as_posix() for p in paths],
            config_hash=records_config_hash(records), config_mismatch=mismatch,
            unreadable=unreadable))

    present_names = {j.job for j in jobs}
    present_overrides = {tuple(sorted(j.overrides)) for j in jobs if j.overrides}
    for i, (name, overrides) in enumerate(expected_jobs(sweep_dir)):
        if name is not None and name in present_names:
            continue
        if tuple(sorted(overrides)) in present_overrides:
            continue
        jobs.append(JobStatus(job=name if name is not None else f"#{i}", status="missing",
                              overrides=overrides))
    note = _attach_queue(sweep_dir, jobs, loaded) if queue else None
    return sorted(jobs, key=lambda j: _sort_key(j.job.lstrip("#"))), note


def summary(jobs: list[JobStatus]) -> dict[str, int]:
    counts = Counter(j.status for j in jobs)
    return {s: counts.get(s, 0) for s in JOB_STATUSES}


def summary_line(jobs: list[JobStatus]) -> str:
    parts = [f"{n} {s}" for s, n in summary(jobs).items() if n]
    return f"{len(jobs)} jobs: " + (", ".join(parts) if parts else "none found")


def live_line(jobs: list[JobStatus]) -> str | None:
    """The warning printed under the table while SLURM still lists jobs of the sweep."""
    live = live_jobs(jobs)
    if not live:
        return None
    listed = "; ".join(f"job {j.job} ({j.slurm_job}): {queue_label(j)}" for j in live)
    return (f"SLURM still lists {len(live)} job(s) of this sweep -- {listed}. The sweep is "
            "live: do not re-submit into this directory until squeue no longer lists them.")


def printable(text: str) -> str:
    """``text`` with control and other non-printing characters written as escapes (``\\x1b``),
    so that a record's strings cannot drive the terminal."""
    return "".join(c if c == " " or not unicodedata.category(c).startswith(("C", "Z"))
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def print_table(sweep_dir: Path | str, jobs: list[JobStatus], note: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"batch-bench sweep {escape(printable(str(sweep_dir)))}")
    cols = ["job", "status", "replicas", "step", "test acc", "config", "overrides"]
    cols += ["SLURM"] * any(j.queue for j in jobs) + ["error"]
    for col in cols:
        table.add_column(col, overflow="fold")
    for j in jobs:
        replicas = ", ".join(f"{n} {s}" for s, n in sorted(j.replicas.items()))
        if j.expected_replicas and sum(j.replicas.values()) < j.expected_replicas:
            replicas += f" (of {j.expected_replicas})"
        status = "running/interrupted" if j.status == "running" else j.status
        overrides = escape(printable(" ".join(j.overrides)))
        if j.config_mismatch:
            overrides += ("\n[red]records differ: " + escape(printable("; ".join(j.config_mismatch)))
                          + "[/]")
        row = [escape(printable(j.job)), f"[{_STYLE[j.status]}]{status}[/]",
               escape(printable(replicas)) or "-", "-" if j.step is None else str(j.step),
               "-" if j.test_accuracy is None else f"{j.test_accuracy:.4f}",
               escape(printable(j.config_hash or "-")), overrides]
        if "SLURM" in cols:
            row.append(f"[bold]{escape(queue_label(j))}[/] {escape(str(j.slurm_job))}"
                       if j.queue else "")
        error = j.error or ""
        table.add_row(*row, escape(printable(error if j.unreadable else error[:80])))
    console = Console()
    if not console.is_terminal:   # logs, pipes: wide enough for the overrides
        console = Console(width=160)
    console.print(table)
    console.print(summary_line(jobs))
    for line in (live_line(jobs), note):
        if line:
            console.print(escape(printable(line)), style="bold red" if line != note else "yellow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.status", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"bench.tools.status: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    jobs, note = sweep_report(args.sweep_dir)
    if args.json:
        print(json.dumps({"sweep_dir": str(args.sweep_dir), "summary": summary(jobs),
                          "live": [j.job for j in live_jobs(jobs)], "queue_note": note,
                          "jobs": [asdict(j) for j in jobs]}, indent=1))
    else:
        print_table(args.sweep_dir, jobs, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
