"""The command line: one clear error line before compiling, exit codes, and a Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

QUICK = ["dataset=synthetic", "dataset.synthetic_train=256", "dataset.synthetic_test=128",
         "model=mlp", "model.hidden=[16]", "budget=20steps", "eval.every_steps=10", "logger=none",
         "progress=false"]


def _train(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench.train", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_bad_value_is_one_error_line_and_exit_2(tmp_path):
    proc = _train(*QUICK, "batch_size=0", f"output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: batch_size=0 must be an integer >= 1"
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("record_*.json"))


def test_batch_larger_than_dataset_fails_before_compiling(tmp_path):
    proc = _train(*QUICK, "batch_size=512", f"output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: batch_size=512 is larger than the training set (256 examples); the largest "
        "allowed is 256 (full batch)")


def test_diverged_run_exits_zero_with_a_record(tmp_path):
    proc = _train(*QUICK, "optimizer=sgd", "optimizer.lr=1e8", f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "record_r0.json").read_text())
    assert record["status"] == "diverged"


def test_multirun_over_batch_sizes(tmp_path):
    proc = _train("-m", *QUICK, "batch_size=32,64", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = sorted((json.loads(p.read_text()) for p in tmp_path.rglob("record_r0.json")),
                     key=lambda r: r["experiment"]["batch_size"])
    assert [r["experiment"]["batch_size"] for r in records] == [32, 64]
    assert all(r["status"] == "finished" for r in records)
    assert [r["history"][-1]["examples"] for r in records] == [20 * 32, 20 * 64]
