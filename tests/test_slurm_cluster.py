"""Against a real SLURM cluster: a Hydra sweep through ``hydra/launcher=slurm_cpu``, what
``bench.tools.status`` says about queued jobs, and (slow) requeue on a signal.

CI starts a one-node cluster first (``.ci/run`` runs ``SLURM/local_cluster.sh start``); where
no cluster answers, these tests are skipped with the reason. Jobs use one CPU and 1 GB each
and the cluster's default partition.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from record_factory import interruption_invariant

TINY = ["dataset=synthetic", "dataset.synthetic_train=512", "dataset.synthetic_test=256",
        "model=mlp", "model.hidden=[16]", "logger=none", "progress=false"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}  # jobs inherit it


def _cluster_partition() -> str:
    """The default partition of a cluster that answers, else skip (with the reason)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("no SLURM here (sinfo/sbatch not found); CI starts one with "
                    "SLURM/local_cluster.sh start")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a %t"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("no SLURM cluster reachable: sinfo timed out")
    if proc.returncode != 0:
        pytest.skip(f"no SLURM cluster reachable: sinfo failed: {proc.stderr.strip()}")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    default = [r for r in rows if r[0].endswith("*") and r[1] == "up"]
    usable = ("idle", "mix", "alloc", "comp")           # busy is fine: jobs wait their turn
    if not default or not any(r[2].startswith(usable) and not r[2].endswith("*")
                              for r in default):         # "*": node not responding
        pytest.skip(f"no usable default SLURM partition (sinfo: {proc.stdout.strip()!r})")
    return default[0][0].rstrip("*")


@pytest.fixture(scope="module")
def partition() -> str:
    return _cluster_partition()


def _launcher(partition: str, sweep: Path) -> list[str]:
    return ["hydra/launcher=slurm_cpu", f"hydra.launcher.partition={partition}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={sweep}"]


def _task_dirs(sweep: Path) -> list[str]:
    """submitit's per-task folders, ``<array>_<task>``."""
    return sorted(d.name for d in (sweep / ".submitit").glob("*_*") if re.fullmatch(r"\d+_\d+", d.name))


def _record(job_dir: Path) -> dict:
    return json.loads((job_dir / "record_r0.json").read_text())


def _status_json(sweep: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.tools.status", str(sweep), "--json"], env=ENV,
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _status_text(sweep: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.tools.status", str(sweep)], env=ENV, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())          # the table wraps long cells


def test_sweep_through_slurm_cpu_launcher(partition, tmp_path):
    """Two jobs (batch_size=32,64) as one real job array; the launching command blocks until
    both are done, each job writes its record, bench.tools.status reports them."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "bench.train", "-m", *_launcher(partition, sweep), *TINY,
           "budget=20steps", "batch_size=32,64"]
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    array = _task_dirs(sweep)[0].split("_")[0]
    assert _task_dirs(sweep) == [f"{array}_0", f"{array}_1"]     # one sbatch: one array
    for task, batch_size in ((0, 32), (1, 64)):
        rec = _record(sweep / str(task))
        assert rec["status"] == "finished"                         # returned: already done
        assert rec["config"]["batch_size"] == batch_size
        assert rec["final"]["step"] == 20
        assert rec["environment"]["slurm_array_task_id"] == str(task)
        assert rec["environment"]["slurm_job_id"].isdigit()       # ran inside SLURM
        log = (sweep / ".submitit" / f"{array}_{task}" / f"{array}_{task}_0_log.out").read_text()
        assert f"batch-bench job {rec['environment']['slurm_job_id']} on " in log

    # the launcher returns on the jobs' results; the tasks may still be COMPLETING a moment
    _wait(lambda: not _squeue(array), 120, "the array to leave the queue")
    status = _status_json(sweep)
    assert status["summary"] == {"finished": 2, "diverged": 0, "failed": 0, "running": 0,
                                 "missing": 0, "unreadable": 0}
    assert status["live"] == [] and status["queue_note"] is None  # squeue asked: none left
    jobs = {j["job"]: j for j in status["jobs"]}
    for task, batch_size in (("0", 32), ("1", 64)):
        j = jobs[task]
        assert f"batch_size={batch_size}" in j["overrides"] and "budget=20steps" in j["overrides"]
        assert j["config_hash"] == re.sub(r"-r0$", "", _record(sweep / task)["run_id"])
        assert j["config_mismatch"] == [] and j["queue"] is None
    text = _status_text(sweep)
    assert "2 jobs: 2 finished" in text and "SLURM still lists" not in text


def _squeue(array: str) -> dict[str, tuple[str, str]]:
    """task -> (its own job id, state)."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%K %A %T"], capture_output=True,
                         text=True, timeout=60).stdout.split()
    return {t: (i, st) for t, i, st in zip(out[::3], out[1::3], out[2::3])}


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := predicate()):
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_status_shows_pending_running_and_requeued_jobs(partition, tmp_path):
    """A sweep whose array is live: bench.tools.status shows each task as SLURM has it (running,
    pending, requeued: pending again with a restart count) and warns not to re-submit;
    once SLURM no longer lists them, the warning is gone. The array is plain ``sleep``
    tasks, at most one at a time, recorded like ``SLURM/sbatch_template.sh`` does."""
    from bench.record import empty_record, write_record

    array = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1%1", "--mem=100M", "--time=5", "--output=/dev/null",
         "--job-name=bench-status-test", "--wrap=sleep 300"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip().split(";")[0]
    try:
        # the node may be busy with another test's jobs: wait for task 0 to start
        raw0 = _wait(lambda: _squeue(array).get("0", ("", ""))[1] == "RUNNING"
                     and _squeue(array)["0"][0], 600, "task 0 to run")
        sweep = tmp_path / "sweep"
        (sweep / "0").mkdir(parents=True)
        (sweep / ".slurm_array_ids").write_text(f"{array}\n")
        rec = empty_record()
        rec.update(run_id="c0ffee-r0", status="running", replica={"index": 0, "count": 1},
                   final={"step": 40, "test_accuracy": 0.5},
                   environment={"slurm_job_id": raw0, "slurm_array_task_id": "0"})
        write_record(sweep / "0" / "record_r0.json", rec)

        status = _status_json(sweep)
        jobs = {j["job"]: j for j in status["jobs"]}
        assert status["live"] == ["0", "1"] and status["queue_note"] is None
        assert (jobs["0"]["status"], jobs["0"]["queue"], jobs["0"]["restarts"]) == (
            "running", "RUNNING", 0)
        assert (jobs["1"]["status"], jobs["1"]["queue"], jobs["1"]["queue_reason"]) == (
            "missing", "PENDING", "JobArrayTaskLimit")
        assert jobs["1"]["slurm_job"] == f"{array}_1"
        assert (f"SLURM still lists 2 job(s) of this sweep -- job 0 ({array}_0): running; "
                f"job 1 ({array}_1): pending (JobArrayTaskLimit). The sweep is live: do not "
                "re-submit into this directory until squeue no longer lists them."
                ) in _status_text(sweep)

        # requeue task 0 (held, so that it stays pending): what a preempted job looks like
        subprocess.run(["scontrol", "requeuehold", f"{array}_0"], check=True, timeout=60)
        _wait(lambda: _squeue(array).get("0", ("", ""))[1] == "PENDING", 120, "task 0 pending")
        jobs = {j["job"]: j for j in _status_json(sweep)["jobs"]}
        assert (jobs["0"]["queue"], jobs["0"]["restarts"]) == ("PENDING", 1)
        assert (f"job 0 ({array}_0): requeued, pending (job requeued in held state);"
                in _status_text(sweep))
    finally:
        subprocess.run(["scancel", array], check=True, timeout=60)
    _wait(lambda: not _squeue(array), 120, "the array to leave the queue")
    status = _status_json(sweep)
    assert status["live"] == [] and status["queue_note"] is None
    assert "SLURM still lists" not in _status_text(sweep)


# ---- slow: requeue on a signal, end to end (SLURM holds a requeued job ~120 s) ----


def _history_len(job_dir: Path) -> int:
    try:
        return len(_record(job_dir)["history"])
    except (OSError, ValueError, KeyError):
        return 0


def _job_log(sweep: Path, kind: str) -> str:
    """The log of a one-job sweep (submitit folder ``.submitit/<job id>``), "" until written."""
    logs = [p for p in (sweep / ".submitit").glob(f"[0-9]*/*_0_log.{kind}")]
    return logs[0].read_text() if logs else ""


def _job_id(sweep: Path) -> str:
    (job,) = [d.name for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]
    return job


def _launch(partition: str, sweep: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.train", "-m", *_launcher(partition, sweep), *args],
        env=ENV, cwd=sweep.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_requeue_on_signal_resumes_to_uninterrupted_record(partition, tmp_path):
    """Two one-job sweeps on the cluster. Sweep A's job gets ``scontrol requeue`` (SIGTERM:
    save, record "running", normal exit -- so its launcher returns while SLURM holds the job
    and bench.tools.status lists it as requeued). Sweep B's job gets SIGUSR2 (submitit's signal:
    save, then submitit requeues it -- its launcher keeps waiting). After SLURM's hold
    (~120 s) both resume from their checkpoints and end with the records of uninterrupted
    runs."""
    # ~0.2 ms a step: 60000 steps leave seconds to signal a job once it is training
    args = [*TINY, "budget=60000steps", "eval.every_steps=1000", "steps_per_call=100",
            "eval.write_every_seconds=0"]            # a record at every eval: we see progress
    sweeps = {"A": (tmp_path / "A", 32), "B": (tmp_path / "B", 64)}
    launchers = {k: _launch(partition, sweep, [*args, f"batch_size={b}"])
                 for k, (sweep, b) in sweeps.items()}
    a, b = sweeps["A"][0], sweeps["B"][0]
    jobs: list[str] = []
    try:
        signals = {a: ["scontrol", "requeue"], b: ["scancel", "--signal=USR2"]}
        deadline = time.time() + 600
        while signals and time.time() < deadline:    # each job as soon as it trains
            for sweep in [sw for sw in signals if _history_len(sw / "0") >= 2]:
                subprocess.run([*signals.pop(sweep), _job_id(sweep)], check=True, timeout=60)
            time.sleep(0.05)
        assert not signals, "the jobs did not start training"
        jobs = [_job_id(a), _job_id(b)]
        _wait(lambda: "interrupted: checkpoint and records in" in _job_log(a, "err"), 120,
              "job A to save and stop")
        _wait(lambda: "Requeued job" in _job_log(b, "out"), 120, "submitit to requeue job B")
        saved = {k: max(int(c.name) for c in (sweep / "0" / "checkpoints").glob("[0-9]*"))
                 for k, (sweep, _) in sweeps.items()}
        assert all(0 < step < 60000 for step in saved.values()), saved
        assert [_record(sweep / "0")["status"] for sweep, _ in sweeps.values()] == ["running"] * 2

        # A: the attempt returned normally, so the launcher returns; the job is still queued
        out_a, _ = launchers["A"].communicate(timeout=120)
        assert launchers["A"].returncode == 0, out_a[-3000:]
        # (COMPLETING for a moment while the attempt's processes exit, then PENDING)
        status = _wait(lambda: (st := _status_json(a))["jobs"][0]["queue"] == "PENDING" and st,
                       60, "job A pending again")
        assert status["live"] == ["0"] and status["summary"]["running"] == 1
        (job_a,) = status["jobs"]
        assert (job_a["slurm_job"], job_a["restarts"]) == (jobs[0], 1)
        assert f"job 0 ({jobs[0]}): requeued, pending (BeginTime)" in _status_text(a)
        assert launchers["B"].poll() is None          # B: no result yet, its launcher waits

        for k, (sweep, bs) in sweeps.items():        # meanwhile: uninterrupted references
            subprocess.run([sys.executable, "-m", "bench.train", *args, f"batch_size={bs}",
                            f"output_dir={tmp_path / f'reference_{k}'}"],
                           env=ENV, cwd=tmp_path, check=True, capture_output=True, timeout=600)
        out_b, _ = launchers["B"].communicate(timeout=900)
        assert launchers["B"].returncode == 0, out_b[-3000:]
        assert _record(b / "0")["status"] == "finished"   # B's launcher returned on the retry
        _wait(lambda: _record(a / "0")["status"] == "finished", 600, "job A to finish")
        for sweep in (a, b):
            _wait(lambda sweep=sweep: not _status_json(sweep)["live"], 120, "the queue to empty")
    finally:
        for proc in launchers.values():
            if proc.poll() is None:
                proc.kill()
        if jobs:
            subprocess.run(["scancel", *jobs], timeout=60)
    for k, (sweep, _) in sweeps.items():
        rec = _record(sweep / "0")
        assert rec["timings"]["resumed_at_steps"] == [saved[k]]
        assert interruption_invariant(rec) == interruption_invariant(_record(tmp_path / f"reference_{k}"))
        assert "restart count 1" in _job_log(sweep, "out")  # SLURM ran it a second time
    assert "Caught signal SIGUSR2" in _job_log(b, "err")    # submitit's requeue, after our save
    assert f"Requeued job {jobs[1]} (5 remaining timeouts)" in _job_log(b, "out")
