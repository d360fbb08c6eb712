"""A job killed with SIGTERM mid-training resumes from its checkpoint and ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import REPO

ARGS = ["dataset=synthetic", "dataset.synthetic_train=512", "dataset.synthetic_test=256",
        "model=mlp", "model.hidden=[32]", "model.batch_norm=true", "model.dropout=0.1",
        "budget=4000steps", "eval.every_steps=50", "steps_per_call=10", "batch_size=64",
        "logger=none", "progress=false", "save_params=true", "replicas.lr=[0.02,0.05]",
        "eval.write_every_seconds=0"]  # the test watches the record to know training started
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def _cmd(out) -> list[str]:
    return [sys.executable, "-m", "bench.train", *ARGS, f"output_dir={out}"]


def _history(record):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in record["history"]]


def test_sigterm_then_restart_equals_uninterrupted(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_cmd(reference), env=ENV, cwd=REPO, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(resumed), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    record_path = resumed / "record_r0.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once training has visibly started
        if record_path.exists() and len(json.loads(record_path.read_text())["history"]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    interrupted = json.loads(record_path.read_text())
    assert interrupted["status"] == "running", "the run finished before the signal; make it longer"
    assert "interrupted: checkpoint" in err
    killed_at = int(next((resumed / "checkpoints").glob("[0-9]*")).name)
    assert 0 < killed_at < 4000

    subprocess.run(_cmd(resumed), env=ENV, cwd=REPO, check=True, capture_output=True, timeout=600)
    for k in range(2):
        a = json.loads((reference / f"record_r{k}.json").read_text())
        b = json.loads((resumed / f"record_r{k}.json").read_text())
        assert b["status"] == a["status"] == "finished"
        assert b["timings"]["resumed_at_steps"] == [killed_at]
        assert _history(b) == _history(a)          # every eval row identical, bit for bit
        pa, pb = np.load(reference / f"params_r{k}.npz"), np.load(resumed / f"params_r{k}.npz")
        assert sorted(pa.files) == sorted(pb.files)
        for name in pa.files:                       # final parameters and BN statistics
            np.testing.assert_array_equal(pa[name], pb[name])


def test_finished_job_is_skipped(tmp_path):
    quick = [a for a in _cmd(tmp_path) if not a.startswith("budget=")] + ["budget=20steps"]
    subprocess.run(quick, env=ENV, cwd=REPO, check=True, capture_output=True, timeout=300)
    before = (tmp_path / "record_r0.json").read_text()
    proc = subprocess.run(quick, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "skipped:" in proc.stderr
    assert (tmp_path / "record_r0.json").read_text() == before
