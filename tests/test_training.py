"""End-to-end training: learning, determinism, divergence, replicas, records, W&B offline."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from bench import record as rec
from bench.core.loop import run
from bench.metrics.convergence import convergence_summary
from conftest import small_config

TIMING_KEYS = {"train_seconds"}


def _curve(record, keys=("train_loss", "train_accuracy", "test_loss", "test_accuracy")):
    return np.array([[row[k] for k in keys] for row in record["history"]])


def test_mnist1d_cnn_beats_chance_by_a_wide_margin(tmp_path):
    cfg = small_config(dataset={"name": "mnist1d"}, model={"name": "cnn", "channels": [32, 32, 32],
                       "conv_stride": 2, "hidden": []}, batch_size=128, budget="300steps",
                       eval={"every_steps": 100, "batch_size": 1000},
                       target={"test_accuracy": 0.5})
    (record,) = run(cfg, tmp_path)
    assert record["status"] == "finished"
    assert record["final"]["step"] == 300
    assert record["final"]["test_accuracy"] > 0.6   # chance is 0.1; ~0.85 after 300 steps
    assert record["final"]["train_loss"] < 0.6 * record["history"][0]["train_loss"]
    conv = record["convergence"]
    assert conv["steps_to_target"] in (100, 200, 300)
    assert conv["examples_to_target"] == conv["steps_to_target"] * 128
    assert rec.read_record(tmp_path / "record_r0.json")["final"] == record["final"]


def test_same_seed_gives_identical_record(tmp_path):
    a = run(small_config(), tmp_path / "a")[0]
    b = run(small_config(), tmp_path / "b")[0]
    strip = lambda r: [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in r["history"]]
    assert strip(a) == strip(b)
    assert a["run_id"] == b["run_id"] and a["config"] == b["config"]
    c = run(small_config(seed=1), tmp_path / "c")[0]
    assert strip(c) != strip(a)


def test_record_contents(tmp_path):
    (record,) = run(small_config(target={"test_accuracy": 0.3}), tmp_path)
    on_disk = json.loads((tmp_path / "record_r0.json").read_text())
    assert set(rec.empty_record()) <= set(on_disk)
    assert on_disk["schema"] == rec.SCHEMA
    assert on_disk["environment"]["packages"]["jax"]
    assert on_disk["environment"]["device_count"] >= 1
    assert [row["step"] for row in on_disk["history"]] == [0, 10, 20, 30, 40]
    last = on_disk["history"][-1]
    assert last["gap_loss"] == pytest.approx(last["test_loss"] - last["train_loss"])
    assert last["gap_accuracy"] == pytest.approx(last["train_accuracy"] - last["test_accuracy"])
    assert last["examples"] == 40 * 64 and last["epoch"] == pytest.approx(40 / 8)
    assert on_disk["replica"]["peak_lr"] == pytest.approx(0.05)
    t = on_disk["timings"]
    assert t["train_seconds"] > 0 and t["compile_seconds"] > 0
    assert t["total_seconds"] >= t["train_seconds"] + t["eval_seconds"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_peak_lr_follows_the_scaling_rule(tmp_path):
    cfg = small_config(batch_size=256, scaling={"name": "sqrt", "base_batch_size": 64},
                       optimizer={"lr": 0.01}, budget="4steps", eval={"every_steps": 2})
    (record,) = run(cfg, tmp_path)
    assert record["replica"]["peak_lr"] == pytest.approx(0.02)
    assert record["history"][-1]["lr"] == pytest.approx(0.02)


def test_warmup_schedule_reaches_peak(tmp_path):
    cfg = small_config(budget="20steps", schedule={"name": "constant", "warmup_steps": 10},
                       eval={"every_steps": 5})
    (record,) = run(cfg, tmp_path)
    lrs = {row["step"]: row["lr"] for row in record["history"]}
    # the lr logged at step s is the one used by step s-1 of a linear 0 -> 0.05 ramp over 10 steps
    assert lrs[5] == pytest.approx(0.05 * 4 / 10) and lrs[20] == pytest.approx(0.05)


def test_forced_divergence_is_recorded(tmp_path):
    cfg = small_config(optimizer={"name": "sgd", "lr": 1e8})
    (record,) = run(cfg, tmp_path)
    on_disk = rec.read_record(tmp_path / "record_r0.json")
    assert on_disk["status"] == "diverged"
    assert isinstance(on_disk["diverged_at_step"], int) and on_disk["diverged_at_step"] < 40
    assert "non-finite loss" in on_disk["error"]
    assert all(math.isfinite(row["train_loss"]) for row in on_disk["history"])


def test_replicas_equal_separate_runs(tmp_path):
    """K = 4 vmapped replicas (2 LRs x 2 seeds) match the same runs trained alone."""
    grouped = run(small_config(replicas={"lr": [0.02, 0.1], "seeds": [0, 1]}), tmp_path / "g")
    assert [(r["replica"]["base_lr"], r["replica"]["seed"]) for r in grouped] == [
        (0.02, 0), (0.02, 1), (0.1, 0), (0.1, 1)]
    alone = run(small_config(optimizer={"lr": 0.1}, seed=1), tmp_path / "a")[0]
    np.testing.assert_allclose(_curve(grouped[3]), _curve(alone), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "g").glob("record_r*.json")) == [
        f"record_r{k}.json" for k in range(4)]


def test_diverging_replica_does_not_disturb_the_others(tmp_path):
    grouped = run(small_config(optimizer={"name": "sgd"}, replicas={"lr": [0.05, 1e8]}), tmp_path)
    assert [r["status"] for r in grouped] == ["finished", "diverged"]
    alone = run(small_config(optimizer={"name": "sgd", "lr": 0.05}), tmp_path / "alone")[0]
    np.testing.assert_allclose(_curve(grouped[0]), _curve(alone), rtol=1e-5, atol=1e-6)


def test_convergence_summary_first_crossing():
    history = [{"step": s, "examples": 10 * s, "train_seconds": s / 10.0, "test_accuracy": a,
                "train_loss": l} for s, a, l in [(0, 0.1, 2.0), (5, 0.6, 0.9), (10, 0.55, 0.4), (15, 0.8, 0.1)]]
    out = convergence_summary(history, target_test_accuracy=0.55, target_train_loss=0.5)
    assert (out["steps_to_target"], out["examples_to_target"], out["seconds_to_target"]) == (5, 50, 0.5)
    assert out["steps_to_train_loss"] == 10
    never = convergence_summary(history, target_test_accuracy=0.9, target_train_loss=None)
    assert never["steps_to_target"] is None and never["steps_to_train_loss"] is None


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    cfg = small_config(logger={"name": "wandb", "mode": "offline", "project": "bb-test"})
    (record,) = run(cfg, tmp_path)
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], capture_output=True,
                         text=True, timeout=120)
    items = [json.loads(line)["history"]["item"] for line in out.stdout.splitlines()
             if line.startswith("{") and '"history"' in line]
    logged = {int(item["step"]): item for item in items}
    assert sorted(logged) == [row["step"] for row in record["history"]]
    for row in record["history"]:
        assert logged[row["step"]]["test_accuracy"] == pytest.approx(row["test_accuracy"])
        assert logged[row["step"]]["train_loss"] == pytest.approx(row["train_loss"])


def _count_writes(monkeypatch):
    """Patch the loop's record writer to log (file name, status, history length) per write."""
    from bench.core import run_records

    writes = []
    real = run_records.rec.write_record

    def counting(path, record):
        writes.append((path.name, record["status"], len(record["history"])))
        real(path, record)

    monkeypatch.setattr(run_records.rec, "write_record", counting)
    return writes


def test_mid_run_record_writes_are_throttled(tmp_path, monkeypatch):
    """Rewriting every full history at every eval is O(evals^2): mid-run writes are throttled
    by eval.write_every_seconds, while the first eval, the end and a divergence always write."""
    writes = _count_writes(monkeypatch)
    every = run(small_config(eval={"write_every_seconds": 0}), tmp_path / "every")
    assert [n for _, _, n in writes] == [1, 2, 3, 4, 5, 5]  # evals at 0,10,20,30,40 + final

    writes.clear()
    (throttled,) = run(small_config(eval={"write_every_seconds": 1e9}), tmp_path / "throttled")
    assert [(s, n) for _, s, n in writes] == [("running", 1), ("finished", 5)]
    np.testing.assert_array_equal(_curve(throttled), _curve(every[0]))
    assert rec.read_record(tmp_path / "throttled" / "record_r0.json")["status"] == "finished"

    writes.clear()
    run(small_config(optimizer={"name": "sgd"}, replicas={"lr": [0.05, 1e8]},
                     eval={"write_every_seconds": 1e9}), tmp_path / "diverge")
    statuses_at_write = [(name, s) for name, s, _ in writes]
    first_diverged = statuses_at_write.index(("record_r1.json", "diverged"))
    assert first_diverged < len(writes) - 2  # written when it diverged, not only at the end
