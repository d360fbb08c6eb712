"""SLURM presets and sbatch template, checked without a cluster.

The sbatch text is produced by the real code path: Hydra composes the preset,
``hydra.utils.instantiate`` builds hydra-submitit-launcher's ``SlurmLauncher``, and its
``launch()`` drives submitit's ``SlurmExecutor`` up to the point where ``sbatch`` would
run (``_submit_command`` is replaced by a function that keeps the submission file text).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import submitit.slurm.slurm as submitit_slurm
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench.core.preemption import DEFAULT_SIGNALS

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = REPO / "conf" / "hydra" / "launcher"
TEMPLATE = REPO / "SLURM" / "sbatch_template.sh"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "hydra").mkdir(parents=True)
    (conf / "config.yaml").write_text("batch_size: 32\nseed: 0\n")
    (conf / "hydra" / "launcher").symlink_to(LAUNCHERS)
    return conf


class _Captured(Exception):
    pass


def _compose(conf_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _sbatch_text(conf_dir: Path, tmp_path: Path, preset: str, n_jobs: int,
                 monkeypatch, extra: list[str] = ()) -> str:
    cfg = _compose(conf_dir, [f"hydra/launcher={preset}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                              *extra])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config, launcher.task_function, launcher.hydra_context = cfg, print, None
    texts: list[str] = []

    def keep_text(self, command: str):
        texts.append(self._make_submission_file_text(command, "uid"))
        raise _Captured

    # no cluster here: pretend srun exists, and stop right before `sbatch` would run
    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "_submit_command", keep_text)
    with pytest.raises(_Captured):
        launcher.launch([[f"batch_size={2 ** i}"] for i in range(n_jobs)], initial_job_idx=0)
    return texts[0]


def _sbatch_lines(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else ""
    return out


def test_slurm_gpu_preset_sbatch_lines(conf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "a100")
    monkeypatch.setenv("SBATCH_ACCOUNT", "proj42")
    monkeypatch.delenv("SBATCH_QOS", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = _compose(conf_dir, ["hydra/launcher=slurm_gpu"])
    launcher_cfg = cfg.hydra.launcher
    text = _sbatch_text(conf_dir, tmp_path, "slurm_gpu", 40, monkeypatch)
    sb = _sbatch_lines(text)
    assert sb["partition"] == "a100" and sb["account"] == "proj42"
    assert "qos" not in sb                                     # env unset -> null -> omitted
    assert sb["gpus-per-node"] == str(launcher_cfg.gpus_per_node) == "1"
    assert sb["cpus-per-task"] == str(launcher_cfg.cpus_per_task)
    assert sb["ntasks-per-node"] == "1" and sb["nodes"] == "1"
    assert sb["mem"] == f"{launcher_cfg.mem_gb}GB"
    assert sb["time"] == str(launcher_cfg.timeout_min)         # minutes
    # submitit's own signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)
    usr = submitit_slurm.SlurmJobEnvironment.USR_SIG
    assert sb["signal"] == f"{usr}@{launcher_cfg.signal_delay_s}" == f"{usr}@120"
    assert getattr(signal, f"SIG{usr}") in DEFAULT_SIGNALS    # bench.core.preemption catches it
    # array of 40 jobs, at most array_parallelism (32) at once
    assert sb["array"] == f"0-39%{launcher_cfg.array_parallelism}" == "0-39%32"
    assert "requeue" in sb                                     # additional_parameters
    assert "export WANDB_MODE=offline" in text.split("# setup", 1)[1]
    assert re.search(r"^srun .* -m submitit\.core\._submit ", text, flags=re.M)
    assert launcher_cfg.max_num_timeout > 0                    # requeue after timeouts


def test_slurm_gpu_overrides_and_usr1(conf_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    monkeypatch.setattr(submitit_slurm.SlurmJobEnvironment, "USR_SIG", "USR1")
    text = _sbatch_text(conf_dir, tmp_path, "slurm_gpu", 3, monkeypatch,
                        extra=["hydra.launcher.gpus_per_node=4", "hydra.launcher.signal_delay_s=300",
                               "hydra.launcher.timeout_min=60"])
    sb = _sbatch_lines(text)
    assert sb["partition"] == "gpu"                            # the preset's default
    assert sb["gpus-per-node"] == "4" and sb["time"] == "60"
    assert sb["signal"] == "USR1@300"                          # SUBMITIT_PREEMPT_SIGNAL=USR1
    assert sb["array"] == "0-2%3"                              # min(n_jobs, parallelism)


def test_slurm_cpu_preset(conf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "cpu_short")
    sb = _sbatch_lines(_sbatch_text(conf_dir, tmp_path, "slurm_cpu", 100, monkeypatch))
    assert sb["partition"] == "cpu_short"
    assert "gpus-per-node" not in sb and "gres" not in sb
    assert sb["array"] == "0-99%64" and sb["signal"].endswith("@120")
    assert "requeue" in sb


def test_local_preset_composes(conf_dir):
    launcher = _compose(conf_dir, ["hydra/launcher=local"]).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert launcher.gpus_per_node == 0 and launcher.tasks_per_node == 1


def test_presets_state_launch_command_and_what_to_edit():
    for name in ("slurm_gpu", "slurm_cpu", "local"):
        head = (LAUNCHERS / f"{name}.yaml").read_text().split("defaults:")[0]
        assert f"hydra/launcher={name}" in head and "python -m bench.train -m" in head
    for name in ("slurm_gpu", "slurm_cpu"):
        head = (LAUNCHERS / f"{name}.yaml").read_text().split("defaults:")[0]
        assert "partition" in head and "account" in head


def test_sbatch_template_syntax_and_directives():
    subprocess.run(["bash", "-n", str(TEMPLATE)], check=True)
    sb = _sbatch_lines(TEMPLATE.read_text())
    assert sb["signal"] == "USR1@120"
    assert getattr(signal, "SIGUSR1") in DEFAULT_SIGNALS
    assert "requeue" in sb and sb["open-mode"] == "append"
    assert "%a" in sb["output"]                                # one log per array task


def test_sbatch_template_runs_the_selected_override_line(tmp_path):
    """Dry run with a fake `srun` that prints its arguments."""
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\n[ "$1" = --unbuffered ] && shift\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# batch sizes\n\nbatch_size=32 seed=0\nbatch_size=64 'tag=a b'\n")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_ARRAY_JOB_ID": "500", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "501"}
    out = subprocess.run(["bash", str(TEMPLATE), str(jobs), str(sweep)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    argv = out[out.index("python"):]
    assert argv == ["python", "-m", "bench.train", "batch_size=64", "tag=a b",
                    f"hydra.run.dir={sweep}/1"]
    assert (sweep / "jobs.txt").read_text() == jobs.read_text()   # for bench.tools.status
    assert (sweep / ".slurm_array_ids").read_text() == "500\n"    # bench.tools.status asks squeue
    subprocess.run(["bash", str(TEMPLATE), str(jobs), str(sweep)], env=env, cwd=tmp_path,
                   capture_output=True, check=True)               # another task of the array
    assert (sweep / ".slurm_array_ids").read_text() == "500\n"    # recorded once
    bad = subprocess.run(["bash", str(TEMPLATE), str(jobs), str(sweep)],
                         env={**env, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "only 2 job lines" in bad.stderr


def test_sbatch_template_passes_shell_metacharacters_through_as_text(tmp_path):
    """A jobs-file line holding $(...), backticks, ; | & > and $VAR runs nothing on the
    node: every argument reaches bench.train as written, split by bench.tools.jobs_file, the
    parser bench.tools.status uses for the same file."""
    from bench.tools.jobs_file import job_lines
    from bench.tools.status import expected_jobs

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\n[ "$1" = --unbuffered ] && shift\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    marker = tmp_path / "pwned"
    line = (f"'name=$(touch {marker})' tag=`touch${{IFS}}{marker}` 'note=a; touch {marker}' "
            f"x=1;touch y=$HOME z=a|b w=>{marker} \"q=it's\" v=$(id)")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(line + "\n")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_ID": "0"}
    out = subprocess.run(["bash", str(TEMPLATE), str(jobs), str(sweep)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    argv = out[out.index("python") + 3:-1]
    expected = [f"name=$(touch {marker})", f"tag=`touch${{IFS}}{marker}`",
                f"note=a; touch {marker}", "x=1;touch", "y=$HOME", "z=a|b", f"w=>{marker}",
                "q=it's", "v=$(id)"]
    assert argv == expected
    assert not marker.exists()
    assert job_lines(jobs) == [expected]
    assert expected_jobs(sweep) == [("0", expected)]       # what status reports = what ran


def test_jobs_file_cli_errors(tmp_path):
    from bench.tools.jobs_file import main

    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a=1 'unclosed\n")
    assert main(["args", str(jobs), "0"]) == 1
    assert main(["args", str(jobs)]) == 2
