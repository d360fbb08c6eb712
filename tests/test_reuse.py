"""Never mix stale results: records are reused (skipped, resumed) only by the same configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.config import as_dict, result_config
from bench.core.loop import run
from bench.record import config_hash
from bench.core.reuse import StaleResults, check_reuse, differing_keys
from conftest import REPO, small_config

QUICK = ["dataset=synthetic", "dataset.synthetic_train=256", "dataset.synthetic_test=128",
         "model=mlp", "model.hidden=[16]", "budget=10steps", "eval.every_steps=5", "logger=none",
         "progress=false"]


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench.train", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def _snapshot(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("record_r*.json"))}


def test_config_hash_ignores_keys_without_effect_on_results():
    base = small_config()
    same = small_config(logger={"name": "wandb"}, progress=True, output_dir="/elsewhere",
                        eval={"write_every_seconds": 1.0}, checkpoint={"every_steps": 7},
                        name="label", compile_cache_dir=None)
    other = small_config(optimizer={"lr": 0.07})
    assert config_hash(result_config(base)) == config_hash(result_config(same))
    assert config_hash(result_config(base)) != config_hash(result_config(other))
    assert differing_keys(as_dict(base), other) == ["optimizer.lr: 0.05 -> 0.07"]


def test_check_reuse_states(tmp_path):
    cfg = small_config(budget="10steps")
    assert check_reuse(tmp_path, cfg) == "new"
    (record,) = run(cfg, tmp_path)
    assert record["config_hash"] == config_hash(result_config(cfg))
    assert check_reuse(tmp_path, cfg) == "finished"
    assert check_reuse(tmp_path, small_config(budget="10steps", progress=True)) == "finished"
    with pytest.raises(StaleResults, match=r"holds records of a different configuration "
                                           r"\(batch_size: 64 -> 32\); use another output_dir"):
        check_reuse(tmp_path, small_config(budget="10steps", batch_size=32))
    data = json.loads((tmp_path / "record_r0.json").read_text())
    data["status"] = "running"  # interrupted
    (tmp_path / "record_r0.json").write_text(json.dumps(data))
    assert check_reuse(tmp_path, cfg) == "resume"



def test_records_from_before_a_key_was_added_are_the_same_configuration(tmp_path):
    # A record written before metrics.dense_every existed: its hash differs (the schema grew),
    # its config lacks the key, and at the key's default nothing differs, so it is reused. With
    # a stored value that is not the default it is stale, naming the key.
    cfg = small_config(budget="10steps")
    run(cfg, tmp_path)
    path = tmp_path / "record_r0.json"
    data = json.loads(path.read_text())
    del data["config"]["metrics"]["dense_every"]
    data["config_hash"] = "older-schema"
    path.write_text(json.dumps(data))
    assert check_reuse(tmp_path, cfg) == "finished"
    data["config"]["metrics"]["every"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(StaleResults, match=r"\(metrics.every: 3 -> None\)"):
        check_reuse(tmp_path, cfg)
    del data["config"]
    path.write_text(json.dumps(data))
    with pytest.raises(StaleResults, match=r"\(\(no stored config\)\)"):
        check_reuse(tmp_path, cfg)

def test_changed_config_into_a_used_directory_is_one_error_line_and_overwrites_nothing(tmp_path):
    first = _train(*QUICK, f"output_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(tmp_path)
    again = _train(*QUICK, f"output_dir={tmp_path}", "progress=true")  # no effect on results
    assert again.returncode == 0 and "skipped:" in again.stderr
    changed = _train(*QUICK, f"output_dir={tmp_path}", "batch_size=32")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path} holds records of a different configuration (batch_size: 128 -> 32);"
        f" use another output_dir, or delete that directory to start over")
    assert "Traceback" not in changed.stderr
    assert _snapshot(tmp_path) == before


def test_edited_sweep_into_the_same_directory_records_failures_and_keeps_old_results(tmp_path):
    first = _train("-m", *QUICK, "batch_size=32,64", f"hydra.sweep.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(tmp_path)
    edited = _train("-m", *QUICK, "batch_size=32,64", "optimizer.lr=0.01", f"hydra.sweep.dir={tmp_path}")
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert _snapshot(tmp_path) == {**before, **{k: v for k, v in _snapshot(tmp_path).items()
                                               if "/rejected/" in k}}
    rejected = sorted(tmp_path.rglob("rejected/record_r0.json"))
    assert len(rejected) == 2
    for path in rejected:
        record = json.loads(path.read_text())
        assert record["status"] == "failed"
        assert "optimizer.lr: 0.05 -> 0.01" in record["error"]
    from bench.tools.status import sweep_status

    assert {j.status for j in sweep_status(tmp_path)} == {"failed"}
