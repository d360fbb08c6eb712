"""bench.tools.status: job statuses from run records, missing jobs, is_finished."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from bench.record import empty_record, record_filename, write_record
from bench.core.saved_records import is_finished
from bench.tools.status import (aggregate_status, config_mismatches, expected_jobs, main, summary,
                                sweep_report, sweep_status)

REPO = Path(__file__).resolve().parents[1]


def _record(job_dir: Path, index: int, count: int, status: str, *, step: int = 100,
            acc: float | None = 0.9, error: str | None = None) -> None:
    rec = empty_record()
    rec.update(run_id=f"abc-r{index}", status=status,
               replica={"index": index, "count": count, "seed": index},
               final={"step": step, "test_accuracy": acc} if acc is not None else None,
               error=error)
    write_record(job_dir / record_filename(index), rec)


def _hydra_job(sweep: Path, num: int, overrides: list[str]) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return job


BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multirun" / "bs_sweep"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "batch_size": 32, "seed": 0,
        "hydra": {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
                  "sweeper": {"params": {"batch_size": ",".join(map(str, BATCH_SIZES))}},
                  "overrides": {"task": ["seed=0"], "hydra": []}},
    }))
    jobs = {i: _hydra_job(sweep, i, [f"batch_size={b}", "seed=0"])
            for i, b in enumerate(BATCH_SIZES) if i != 6}          # job 6 never started
    _record(jobs[0], 0, 2, "finished", acc=0.91)
    _record(jobs[0], 1, 2, "finished", acc=0.93)
    _record(jobs[1], 0, 2, "finished")
    _record(jobs[1], 1, 2, "diverged", acc=None)                 # one LR diverged: job is done
    _record(jobs[2], 0, 2, "diverged", acc=None)
    _record(jobs[2], 1, 2, "diverged", acc=None)
    _record(jobs[3], 0, 2, "finished")
    _record(jobs[3], 1, 2, "failed", error="FloatingPointError: boom")
    _record(jobs[4], 0, 2, "running", step=40)                   # preempted: saved + requeued
    _record(jobs[4], 1, 2, "running", step=40)
    # job 5: directory with overrides, no record (started, died before writing)
    _record(jobs[7], 0, 2, "finished")                           # replica 1 record missing
    return sweep


def test_sweep_statuses(sweep):
    jobs = {j.job: j for j in sweep_status(sweep)}
    assert {k: j.status for k, j in jobs.items()} == {
        "0": "finished", "1": "finished", "2": "diverged", "3": "failed",
        "4": "running", "5": "missing", "6": "missing", "7": "running"}
    assert jobs["0"].replicas == {"finished": 2} and jobs["0"].test_accuracy == pytest.approx(0.93)
    assert jobs["1"].replicas == {"finished": 1, "diverged": 1}
    assert jobs["3"].error == "FloatingPointError: boom"
    assert jobs["4"].step == 40
    assert jobs["6"].overrides == ["batch_size=512", "seed=0"]   # expected from multirun.yaml
    assert jobs["5"].overrides == ["batch_size=256", "seed=0"]   # read from .hydra/overrides.yaml
    assert jobs["7"].expected_replicas == 2 and sum(jobs["7"].replicas.values()) == 1
    assert summary(list(jobs.values())) == {"finished": 2, "diverged": 1, "failed": 1,
                                            "running": 2, "missing": 2, "unreadable": 0}


def test_cli_json_and_table(sweep, capsys):
    assert main([str(sweep), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["missing"] == 2 and len(out["jobs"]) == 8
    assert [j["job"] for j in out["jobs"]] == [str(i) for i in range(8)]
    assert main([str(sweep)]) == 0
    text = capsys.readouterr().out
    assert "8 jobs: 2 finished, 1 diverged, 1 failed, 2 running, 2 missing" in text
    assert main([str(sweep / "nope")]) == 2


def test_cli_as_module(sweep):
    out = subprocess.run([sys.executable, "-m", "bench.tools.status", str(sweep), "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["summary"]["finished"] == 2


def test_is_finished(sweep, tmp_path):
    assert is_finished(sweep / "0")            # all finished
    assert is_finished(sweep / "1")            # finished + diverged
    assert is_finished(sweep / "2")            # all diverged: done, do not rerun
    assert not is_finished(sweep / "3")        # a failed replica: rerun
    assert not is_finished(sweep / "4")        # interrupted: rerun resumes from checkpoint
    assert not is_finished(sweep / "5")        # no record
    assert not is_finished(sweep / "7")        # 1 of 2 replica records
    assert not is_finished(tmp_path / "does-not-exist")
    done_only = tmp_path / "only_done"
    _record(done_only / "job", 0, 1, "finished")
    assert is_finished(done_only / "job")
    assert not is_finished(done_only)          # a parent of job dirs is not a job


def test_aggregate_status_rules():
    assert aggregate_status([]) == "missing"
    assert aggregate_status(["finished", "running"]) == "running"
    assert aggregate_status(["failed", "running"]) == "running"
    assert aggregate_status(["failed", "diverged"]) == "failed"
    assert aggregate_status(["diverged"]) == "diverged"
    assert aggregate_status(["finished"], expected_replicas=3) == "running"


def test_sbatch_template_layout(tmp_path):
    """jobs.txt (written by SLURM/sbatch_template.sh) lists the expected array tasks."""
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "jobs.txt").write_text("# header\nbatch_size=8\n\nbatch_size=16 'tag=a b'\nbatch_size=32\n")
    job0 = _hydra_job(sweep, 0, ["batch_size=8"])
    _record(job0, 0, 1, "finished")
    job2 = sweep / "2"                          # hydra run dir without .hydra: records only
    _record(job2, 0, 1, "failed", error="x")
    jobs = {j.job: j for j in sweep_status(sweep)}
    assert {k: j.status for k, j in jobs.items()} == {"0": "finished", "1": "missing", "2": "failed"}
    assert jobs["1"].overrides == ["batch_size=16", "tag=a b"]


APP = textwrap.dedent("""
    import sys
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from bench.record import empty_record, record_filename, write_record

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        if cfg.batch_size == 64:
            return                                   # dies before writing a record
        for r in range(2):
            rec = empty_record()
            rec.update(status="diverged" if cfg.lr > 0.5 else "finished",
                       replica={"index": r, "count": 2}, final={"step": 10, "test_accuracy": 0.5})
            write_record(out / record_filename(r), rec)

    if __name__ == "__main__":
        main()
""")


def test_real_hydra_multirun(tmp_path):
    """Statuses and missing jobs from the files a real Hydra multirun writes: sweeper
    params from the config plus a command-line sweep; one job dir removed afterwards
    (a job that never started)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "batch_size: 8\nlr: 0.1\nhydra:\n  sweeper:\n    params:\n      batch_size: 16,64\n")
    (tmp_path / "app.py").write_text(APP)
    sweep = tmp_path / "multirun"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "app.py", "-m", "lr=0.1,1.0", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    before = {j.job: (j.status, sorted(j.overrides)) for j in sweep_status(sweep)}
    assert len(before) == 4
    by_ovr = {tuple(o): s for s, o in before.values()}
    assert by_ovr[("batch_size=16", "lr=0.1")] == "finished"
    assert by_ovr[("batch_size=16", "lr=1.0")] == "diverged"
    assert by_ovr[("batch_size=64", "lr=0.1")] == "missing"
    assert by_ovr[("batch_size=64", "lr=1.0")] == "missing"
    victim = next(k for k, (s, o) in before.items() if o == ["batch_size=16", "lr=1.0"])
    shutil.rmtree(sweep / victim)
    after = {j.job: (j.status, sorted(j.overrides)) for j in sweep_status(sweep)}
    assert after[victim] == ("missing", ["batch_size=16", "lr=1.0"])
    assert is_finished(sweep / next(k for k, (s, o) in before.items() if s == "finished"))


def _with_config(job: Path, index: int, status: str, config: dict, environment: dict | None = None,
                 config_hash: str = "a1b2c3") -> None:
    rec = empty_record()
    rec.update(run_id=f"{config_hash}-r{index}", status=status, config=config,
               replica={"index": index, "count": 1}, final={"step": 10, "test_accuracy": 0.5},
               environment=environment or {})
    write_record(job / record_filename(index), rec)


CONFIG = {"batch_size": 64, "seed": 0, "budget": "20steps", "progress": False,
          "dataset": {"name": "synthetic", "input_dim": 16}, "model": {"name": "mlp", "hidden": [16]},
          "optimizer": {"name": "momentum", "lr": 0.05}, "scaling": {"rule": "none"},
          "output_dir": "/somewhere/else"}


def test_config_hash_and_overrides_the_records_contradict(tmp_path):
    """A job directory reused with other overrides: the records (made with batch_size=64 on
    synthetic data) no longer match .hydra/overrides.yaml, and status says which ones."""
    sweep = tmp_path / "sw"
    same = _hydra_job(sweep, 0, ["dataset=synthetic", "model.hidden=[16]", "batch_size=64",
                                 "progress=false", "optimizer.lr=0.05", "scaling=linear",
                                 "+sweep=keskar_gap", "hydra.launcher.partition=debug",
                                 "output_dir=${hydra:runtime.output_dir}"])
    _with_config(same, 0, "finished", CONFIG)
    reused = _hydra_job(sweep, 1, ["dataset=digits", "batch_size=128", "seed=0",
                                   "optimizer.lr=0.1", "model.hidden=[32,32]", "budget=20steps"])
    _with_config(reused, 0, "finished", CONFIG, config_hash="d4e5f6")
    jobs = {j.job: j for j in sweep_status(sweep)}
    assert jobs["0"].config_hash == "a1b2c3" and jobs["0"].config_mismatch == []
    assert jobs["1"].config_hash == "d4e5f6"
    assert jobs["1"].config_mismatch == [
        "batch_size=128 (record: 64)", 'dataset=digits (record: "synthetic")',
        "model.hidden=[32,32] (record: [16])", "optimizer.lr=0.1 (record: 0.05)"]
    assert config_mismatches(["optimizer=adam", "seed=1"], CONFIG) == [
        'optimizer=adam (record: "momentum")', "seed=1 (record: 0)"]
    assert config_mismatches(["batch_size=64"], {}) == []        # failed early: no config


def test_table_shows_config_and_mismatch(tmp_path, capsys):
    sweep = tmp_path / "sw"
    _with_config(_hydra_job(sweep, 0, ["batch_size=128"]), 0, "finished", CONFIG)
    assert main([str(sweep)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a1b2c3" in text
    assert "records differ: batch_size=128 (record: 64)" in text
    assert "SLURM" not in text                                   # nothing ran on SLURM here


def test_queue_not_checked_without_squeue(tmp_path, monkeypatch, capsys):
    """Records from SLURM jobs, but no squeue on this machine: statuses from the records, a
    note that the queue was not checked, no queue column."""
    sweep = tmp_path / "sw"
    job = _hydra_job(sweep, 0, ["batch_size=64"])
    _with_config(job, 0, "running", CONFIG, environment={"slurm_job_id": "4242",
                                                         "slurm_array_task_id": "0"})
    (sweep / ".submitit" / "4241_0").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))      # no squeue on PATH
    jobs, note = sweep_report(sweep)
    assert note == "SLURM queue not checked (squeue not found)"
    assert [(j.job, j.status, j.queue) for j in jobs] == [("0", "running", None)]
    assert main([str(sweep), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["live"] == [] and out["queue_note"] == note
    assert main([str(sweep)]) == 0
    assert "SLURM queue not checked (squeue not found)" in capsys.readouterr().out
    # a sweep with no SLURM trace does not mention the queue at all
    assert sweep_report(tmp_path / "nothing")[1] is None


def test_expected_jobs_of_a_command_line_sweep(tmp_path):
    """multirun.yaml of `-m batch_size=32,64`: sweeper params are null, the sweep is in the
    task overrides."""
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
                  "sweeper": {"params": None},
                  "overrides": {"task": ["model=mlp", "batch_size=32,64"], "hydra": []}}}))
    assert expected_jobs(sweep) == [("0", ["model=mlp", "batch_size=32"]),
                                    ("1", ["model=mlp", "batch_size=64"])]


# ---------------------------------------------------------------- damaged records


def test_a_truncated_record_is_named_not_skipped(tmp_path, capsys):
    """A finished run whose only record was cut short: the job is "unreadable", the table
    and the JSON name the file and why (not "0 jobs: none found"), and it is not finished."""
    job = tmp_path / "run"
    _record(job, 0, 1, "finished")
    path = job / record_filename(0)
    path.write_text(path.read_text()[:100])
    jobs, _ = sweep_report(tmp_path)
    assert [(j.job, j.status) for j in jobs] == [("run", "unreadable")]
    assert jobs[0].unreadable[0].startswith("run/record_r0.json: ")
    assert not is_finished(job)
    assert main([str(tmp_path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 jobs: 1 unreadable" in text and "unreadable record run/record_r0.json" in text
    assert main([str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["unreadable"] == 1


@pytest.mark.parametrize("status", [None, "done", "FINISHED", 3])
def test_an_unknown_or_missing_status_is_not_finished(tmp_path, status):
    job = tmp_path / "run"
    _record(job, 0, 1, "finished")
    path = job / record_filename(0)
    record = json.loads(path.read_text())
    if status is None:
        del record["status"]
    else:
        record["status"] = status
    path.write_text(json.dumps(record))
    assert not is_finished(job)
    (j,) = sweep_status(tmp_path)
    assert j.status == "unreadable" and "status" in j.unreadable[0]
    assert aggregate_status(["finished", "done"]) == "unreadable"


def test_damaged_fields_do_not_crash_the_report(tmp_path, capsys):
    """`"replica": []`, a list as config, a string as final or environment: the report
    still comes out (each field read only when it has the right type)."""
    job = tmp_path / "run"
    _record(job, 0, 1, "finished")
    path = job / record_filename(0)
    record = json.loads(path.read_text())
    record.update(replica=[], config=[1, 2], final="x", environment="y", run_id=None)
    path.write_text(json.dumps(record))
    (j,) = sweep_status(tmp_path)
    assert j.status == "finished" and j.expected_replicas is None and j.step is None
    assert is_finished(job)
    assert main([str(tmp_path)]) == 0 and "1 jobs: 1 finished" in capsys.readouterr().out


def test_record_strings_reach_the_terminal_escaped(tmp_path, capsys):
    """An error or override holding terminal control sequences (ESC, BEL, CR) is printed as
    escapes, never raw."""
    job = _hydra_job(tmp_path, 0, ["tag=\x1b]0;pwned\x07x"])
    _record(job, 0, 1, "failed", error="boom\x1b[2J\rcleared")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "boom\\x1b[2J\\rcleared" in out.replace("\n", "").replace(" ", "")


def test_reuse_refuses_an_unreadable_record_and_changes_nothing(tmp_path):
    """A rerun into a directory whose record is truncated stops with one ConfigError naming
    the file (bench.train prints it as one error: line) and leaves every file as it was."""
    from bench.config import from_dict
    from bench.core.reuse import UnreadableRecords, check_reuse

    job = tmp_path / "run"
    _record(job, 0, 1, "finished")
    path = job / record_filename(0)
    path.write_text(path.read_text()[:50])
    before = path.read_bytes()
    with pytest.raises(UnreadableRecords, match="record_r0.json"):
        check_reuse(job, from_dict({}))
    assert path.read_bytes() == before
