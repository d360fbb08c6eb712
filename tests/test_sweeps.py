"""Named sweeps (sweeps/*.yaml, selected with ``+sweep=<name>``): headers, composition and job
expansion, and a real sweep through hydra-submitit-launcher's local mode that skips finished
jobs and re-runs only the missing one when it is submitted again."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bench.config import GROUPS, from_hydra, validate
from bench.job_plan import job_plan
from bench.hydra_conf import compose as compose_conf
from conftest import REPO

SWEEPS = REPO / "sweeps"
MNIST1D_TRAIN = 4000
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}

# name -> the swept values (cartesian product = the job list), replicas per job, and settings
# every job of the sweep must have.
EXPECTED: dict[str, dict] = {
    "batch_size_lr_grid": {
        "params": {"batch_size": [16, 32, 64, 128, 256, 512, 1024, 2048, 4000],
                   "scaling": ["none", "sqrt", "linear"]},
        "replicas": 10,
        "settings": {"dataset.name": "mnist1d", "model.name": "cnn", "optimizer.name": "momentum"}},
    "keskar_gap": {
        "params": {"batch_size": [32, 1000]},
        "replicas": 5,
        "settings": {"dataset.name": "mnist1d", "optimizer.name": "adam", "save_params": True,
                     "metrics.hessian": True, "metrics.every": None, "metrics.sharpness": True}},
    "steps_to_result": {
        "params": {"batch_size": [16, 32, 64, 128, 256, 512, 1024]},
        "replicas": 6,
        "settings": {"dataset.name": "mnist1d", "target.test_accuracy": 0.85}},
    "noise_scale": {
        "params": {"batch_size": [32, 128, 512, 2048]},
        "replicas": 2,
        "settings": {"dataset.name": "mnist1d", "metrics.hessian": True, "metrics.noise_scale": True,
                     "metrics.density": False, "metrics.sharpness": False, "metrics.every": 100}},
}


def _compose(overrides: list[str], hydra: bool = True):
    return compose_conf(overrides, return_hydra_config=hydra)


def _expand(params: dict[str, str]) -> list[list[str]]:
    """The job list Hydra's basic sweeper makes from ``hydra.sweeper.params``."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def test_every_sweep_file_is_expected_and_the_symlink_selects_it():
    assert (REPO / "conf" / "sweep").resolve() == SWEEPS.resolve()
    assert sorted(p.stem for p in SWEEPS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_states_launch_runtime_and_expected_result(name):
    text = (SWEEPS / f"{name}.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    header = "\n".join(ln for ln in itertools.takewhile(lambda ln: ln.startswith("#"), lines))
    assert f"python -m bench.train -m +sweep={name}\n" in header
    assert f"python -m bench.train -m +sweep={name} hydra/launcher=slurm_gpu" in header
    for field in ("Measures:", "Jobs:", "Runtime:", "Expected:"):
        assert f"# {field}" in header, field
    runtime = header.split("# Runtime:")[1].split("# Expected:")[0]
    assert "CPU" in runtime and "GPU" in runtime and "min" in runtime
    assert "RUNTIME_" not in header and "EXPECTED" not in header.split("# Expected:")[1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sweep_composes_and_expands_to_the_expected_valid_jobs(name):
    spec = EXPECTED[name]
    cfg = _compose([f"+sweep={name}"])
    assert cfg.hydra.sweep.dir == f"results/{name}"
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    jobs = _expand(params)
    keys = list(spec["params"])
    got = [tuple(dict(o.split("=", 1) for o in job)[k] for k in keys) for job in jobs]
    want = [tuple(str(v) for v in combo) for combo in itertools.product(*spec["params"].values())]
    assert sorted(got) == sorted(want) and len(got) == math.prod(map(len, spec["params"].values()))

    subdirs = set()
    for job in jobs:
        job_cfg = _compose([f"+sweep={name}", *job])
        config = validate(from_hydra(_compose([f"+sweep={name}", *job], hydra=False)))  # valid job
        assert job_plan(config, MNIST1D_TRAIN).total_steps >= 10
        lrs = config.replicas.lr or (config.optimizer.lr,)
        seeds = config.replicas.seeds or (config.seed,)
        assert len(lrs) * len(seeds) == spec["replicas"]
        for key, value in spec["settings"].items():
            assert OmegaConf.select(job_cfg, key) == value, key
        for override in job:                            # the job really gets its swept value
            key, value = override.split("=", 1)
            got_value = OmegaConf.select(job_cfg, f"{key}.name" if key in GROUPS else key)
            assert str(got_value) == value
        # stable job directory named by the swept values only (not by +sweep=<name>)
        subdir = job_cfg.hydra.sweep.subdir
        assert subdir == ",".join(sorted(job)) and "sweep" not in subdir
        subdirs.add(subdir)
    assert len(subdirs) == len(jobs)                    # no two jobs share a directory


# ------------------------------------------------------------------------ a real sweep

QUICK = ["model=mlp", "model.hidden=[16]", "budget=4steps", "schedule.warmup_epochs=0",
         "eval.every_steps=2", "steps_per_call=2",
         "replicas.lr=[0.05,0.1]", "replicas.seeds=[0]", "logger=none", "progress=false"]


def _sweep(sweep_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.train", "-m", "+sweep=batch_size_lr_grid",
           "hydra/launcher=local", f"hydra.sweep.dir={sweep_dir}", "batch_size=32,64",
           "scaling=linear", *QUICK]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)


def _job_dirs(sweep_dir: Path) -> dict[int, Path]:
    """Job dirs by batch size (the dir name starts with ``batch_size=<B>,``)."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return {int(d.name.split(",")[0].removeprefix("batch_size=")): d for d in dirs}


def _records(job_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(job_dir.glob("record_r*.json"))}


def _job_logs(sweep_dir: Path) -> set[Path]:
    return set((sweep_dir / ".submitit").rglob("*_log.err"))


def test_submitit_local_sweep_skips_finished_and_reruns_missing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = _sweep(sweep_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (sweep_dir / ".submitit").is_dir()           # went through hydra-submitit-launcher
    jobs = _job_dirs(sweep_dir)
    assert sorted(jobs) == [32, 64]
    for b, job_dir in jobs.items():
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        assert f"batch_size={b}" in overrides and "scaling=linear" in overrides
        assert job_dir.name == ",".join(sorted(     # dir = the job's overrides minus excluded keys
            o for o in overrides if o.split("=")[0] not in ("+sweep", "logger", "progress")))
        records = [json.loads(p.read_text()) for p in sorted(job_dir.glob("record_r*.json"))]
        assert [r["status"] for r in records] == ["finished", "finished"]
        assert [r["replica"]["base_lr"] for r in records] == [0.05, 0.1]
        assert [r["replica"]["peak_lr"] for r in records] == pytest.approx([0.05 * b / 128, 0.1 * b / 128])
        assert all(r["experiment"]["batch_size"] == b and r["experiment"]["scaling"] == "linear"
                   and r["final"]["step"] == 4 for r in records)

    kept, before = _records(jobs[32]), _job_logs(sweep_dir)
    for p in jobs[64].glob("record_r*.json"):           # job B=64 is missing now
        p.unlink()
    shutil.rmtree(jobs[64] / "checkpoints", ignore_errors=True)

    second = _sweep(sweep_dir)                          # the same command again
    assert second.returncode == 0, second.stderr[-3000:]
    assert _records(jobs[32]) == kept                   # untouched: same bytes, same mtime
    rerun = [json.loads(p.read_text()) for p in sorted(jobs[64].glob("record_r*.json"))]
    assert [r["status"] for r in rerun] == ["finished", "finished"]
    assert all(r["final"]["step"] == 4 and r["timings"]["train_seconds"] > 0 for r in rerun)
    logs = {p: p.read_text() for p in _job_logs(sweep_dir) - before}
    assert len(logs) == 2                               # both jobs were submitted again ...
    skipped = [p for p, text in logs.items() if "skipped:" in text]
    assert len(skipped) == 1 and str(jobs[32]) in logs[skipped[0]]   # ... only B=32 skipped

    status = subprocess.run([sys.executable, "-m", "bench.tools.status", str(sweep_dir), "--json"],
                            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["summary"] == {"finished": 2, "diverged": 0, "failed": 0, "running": 0, "missing": 0,
                                 "unreadable": 0}
    assert sorted(j["job"] for j in report["jobs"]) == sorted(d.name for d in jobs.values())
