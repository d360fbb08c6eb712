"""Run records -> tables, and the W&B mirror giving the same tables (fake Api, no network)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.load import (IDENTITY_COLUMNS, load_history, load_profile, load_records,
                           load_wandb, load_wandb_history)
from record_factory import eval_rows, make_record, write_records


def _records() -> list[dict]:
    """Four realistic records: finished with curvature, diverged (inf loss), running, failed."""
    rows = eval_rows(range(0, 1000, 200), batch_size=64, lr=0.1, test_final=0.93,
                     train_final=0.99, tau=150, sharpness_final=20.0)
    for r in rows[::2][:-1]:  # curvature measured at steps 200, 600, 800 only
        r.pop("hessian_top_eigenvalue")
    ok = make_record(batch_size=64, history=rows, seed=1, base_lr=0.1, peak_lr=0.2,
                     scaling="linear", target_test_accuracy=0.9, replica_index=1,
                     curvature={"hessian_top_eigenvalue": 21.5, "hessian_trace": 300.0,
                                "sharpness_full_eps1e-03": 4.2, "noise_scale_simple": 120.0,
                                "lanczos": {"iterations": 20}})
    bad_rows = eval_rows([0, 50], batch_size=512, lr=3.2, test_final=0.5, train_final=0.5, tau=10)
    bad_rows[-1]["train_loss"] = math.inf
    bad = make_record(batch_size=512, history=bad_rows, seed=0, base_lr=0.1, peak_lr=3.2,
                      status="diverged")
    running = make_record(batch_size=128, history=rows[:2], seed=2, scaling="sqrt", status="running")
    failed = make_record(batch_size=256, history=[], seed=3, status="failed")
    failed["error"] = "RuntimeError: out of memory"
    return [ok, bad, running, failed]


@pytest.fixture
def root(tmp_path):
    recs = _records()
    write_records(tmp_path, recs)
    return tmp_path, recs


def test_load_records_one_row_per_record_with_flat_columns(root):
    path, recs = root
    runs = load_records(path)
    assert len(runs) == 4
    assert list(runs.columns[: len(IDENTITY_COLUMNS)]) == list(IDENTITY_COLUMNS)
    ok = runs[runs["status"] == "finished"].iloc[0]
    assert (ok["batch_size"], ok["seed"], ok["base_lr"], ok["peak_lr"]) == (64, 1, 0.1, 0.2)
    assert (ok["dataset"], ok["model"], ok["scaling"], ok["replica_index"]) == ("mnist1d", "mlp", "linear", 1)
    assert ok["run_id"] == recs[0]["run_id"] and ok["job_id"] == recs[0]["run_id"].rsplit("-r", 1)[0]
    assert ok["final_test_accuracy"] == pytest.approx(recs[0]["history"][-1]["test_accuracy"])
    assert ok["final_hessian_top_eigenvalue"] == pytest.approx(recs[0]["history"][-1]["hessian_top_eigenvalue"])
    assert ok["curvature_hessian_top_eigenvalue"] == 21.5
    assert ok["curvature_sharpness_full_eps1e-03"] == 4.2
    assert ok["curvature_lanczos_iterations"] == 20
    assert ok["target_test_accuracy"] == 0.9 and ok["steps_to_target"] == 600
    assert ok["compile_seconds"] == 1.0 and ok["total_seconds"] == 13.0
    assert ok["path"].endswith("record_r1.json")


def test_nonfinite_and_missing_values(root):
    runs = load_records(root[0])
    bad = runs[runs["status"] == "diverged"].iloc[0]
    assert bad["final_train_loss"] == math.inf and bad["diverged_at_step"] == 50
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert np.isnan(failed["final_test_accuracy"]) and failed["error"].startswith("RuntimeError")
    assert pd.api.types.is_float_dtype(runs["final_test_accuracy"])
    assert pd.api.types.is_float_dtype(runs["steps_to_target"])


def test_load_history_one_row_per_eval_row(root):
    path, recs = root
    h = load_history(path)
    assert len(h) == sum(len(r["history"]) for r in recs) == 5 + 2 + 2
    assert {"current_batch_size", "batch_size", "step", "test_accuracy", "seed", "peak_lr"} <= set(h.columns)
    ok = h[h["run_id"] == recs[0]["run_id"]]
    assert list(ok["step"]) == [0, 200, 400, 600, 800]
    assert ok["hessian_top_eigenvalue"].isna().tolist() == [True, False, True, False, False]
    assert (ok["current_batch_size"] == 64).all() and (ok["seed"] == 1).all()


def test_load_profile(tmp_path):
    assert load_profile(tmp_path).empty
    (tmp_path / "a").mkdir()
    pd.DataFrame({"batch_size": [8, 16], "peak_memory_bytes": [1e6, 2e6], "step_seconds": [0.1, 0.2],
                  "examples_per_second": [80, 80]}).to_csv(tmp_path / "a" / "profile.csv", index=False)
    prof = load_profile(tmp_path)
    assert list(prof["batch_size"]) == [8, 16] and prof["path"].str.endswith("profile.csv").all()
    pd.DataFrame({"batch_size": [8]}).to_csv(tmp_path / "profile.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        load_profile(tmp_path)


# ----------------------------------------------------------------------------- W&B
class FakeRun:
    """What wandb.apis.public.Run exposes and load_wandb uses: id, state, config, summary,
    scan_history() (rows with W&B's own underscore keys)."""

    def __init__(self, rec: dict, *, flat_blocks: bool = False, state: str | None = None):
        self.id = rec["run_id"].replace("-", "")[:8]
        self.state = state or {"finished": "finished", "running": "running"}.get(rec["status"], "crashed")
        self.config = {**rec["config"], "record": {"run_id": rec["run_id"], "replica": rec["replica"],
                                                    "experiment": rec["experiment"]}}
        summary = {**(rec["final"] or {}), "_runtime": 3.0, "_step": len(rec["history"]),
                   "status": rec["status"], "diverged_at_step": rec["diverged_at_step"],
                   "error": rec["error"]}
        for block in ("convergence", "timings", "curvature"):
            if rec[block] is None:
                continue
            if flat_blocks:
                summary.update({f"{block}/{k}": v for k, v in rec[block].items()})
            else:
                summary[block] = rec[block]
        self.summary = summary
        self._history = [{**row, "_step": i, "_timestamp": 1e9 + i} for i, row in enumerate(rec["history"])]

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = []

    def runs(self, path, filters=None):
        self.asked.append((path, filters))
        return list(self._runs)


@pytest.mark.parametrize("flat_blocks", [False, True])
def test_load_wandb_matches_load_records(root, monkeypatch, flat_blocks):
    path, recs = root
    api = FakeApi([FakeRun(r, flat_blocks=flat_blocks) for r in recs])
    import wandb

    monkeypatch.setattr(wandb, "Api", lambda *a, **k: api)
    from_wandb = load_wandb("me/batch-bench")
    from_files = load_records(path)
    assert api.asked == [("me/batch-bench", None)]
    assert from_wandb["path"].str.startswith("wandb:me/batch-bench/").all()
    pd.testing.assert_frame_equal(from_wandb.drop(columns="path"), from_files.drop(columns="path"))
    pd.testing.assert_frame_equal(load_wandb_history("me/batch-bench").drop(columns="path"),
                                  load_history(path).drop(columns="path"))


def test_load_wandb_maps_state_without_status(root):
    _, recs = root
    runs = []
    for rec, state in zip(recs, ["finished", "crashed", "running", "failed"]):
        run = FakeRun(rec, state=state)
        run.summary.pop("status")
        runs.append(run)
    table = load_wandb("me/p", api=FakeApi(runs), filters={"config.batch_size": 64})
    assert sorted(table["status"]) == ["failed", "failed", "finished", "running"]


class FakeJobRun:
    """bench.core.tracking's layout: one W&B run per job, K replicas prefixed ``r<k>/``, floats
    in the history, summary ``r<k>/status``, ``r<k>/final_<key>`` and convergence keys."""

    def __init__(self, recs: list[dict], job: str):
        p = (lambda k: f"r{k}/") if len(recs) > 1 else (lambda k: "")
        self.id, self.state = job, "finished"
        self.config = {**recs[0]["config"], "record": {"run_id": job, "replicas": [r["replica"] for r in recs]}}
        steps = sorted({row["step"] for r in recs for row in r["history"]})
        self._history = []
        for i, step in enumerate(steps):
            merged = {"_step": step, "_runtime": float(i)}
            for k, r in enumerate(recs):
                for row in r["history"]:
                    if row["step"] == step:
                        merged.update({f"{p(k)}{key}": float(v) for key, v in row.items()})
            self._history.append(merged)
        self.summary = {"_wandb": {"runtime": 3}}
        for k, r in enumerate(recs):
            self.summary[f"{p(k)}status"] = r["status"]
            self.summary.update({f"{p(k)}final_{key}": v for key, v in (r["final"] or {}).items()})
            self.summary.update({f"{p(k)}{key}": v for key, v in r["convergence"].items()})

    def scan_history(self):
        return iter(self._history)


@pytest.mark.parametrize("k", [1, 2])
def test_load_wandb_understands_bench_tracking_job_runs(tmp_path, k):
    ok = _records()[0]
    bad_rows = eval_rows([0, 200], batch_size=64, lr=0.2, test_final=0.5, train_final=0.5, tau=10)
    bad = make_record(batch_size=64, history=bad_rows, seed=2, base_lr=0.1, peak_lr=0.2,
                      status="diverged", target_test_accuracy=0.9)
    recs = [ok, bad][:k]
    job = "abc123def456"
    for i, r in enumerate(recs):  # two replicas of one job
        r["config"] = recs[0]["config"]
        r["run_id"], r["replica"] = f"{job}-r{i}", {**r["replica"], "index": i, "count": k}
    write_records(tmp_path, recs)
    from_wandb = load_wandb("me/p", api=FakeApi([FakeJobRun(recs, job)]))
    from_files = load_records(tmp_path)
    cols = ["run_id", "job_id", "status", "dataset", "model", "optimizer", "scaling", "batch_size",
            "seed", "replica_index", "base_lr", "peak_lr", "final_test_accuracy", "final_train_loss",
            "final_step", "steps_to_target", "target_test_accuracy"]
    pd.testing.assert_frame_equal(from_wandb[cols], from_files[cols], check_dtype=False)
    hist_cols = ["run_id", "seed", "peak_lr", "step", "current_batch_size", "test_accuracy", "train_loss"]
    pd.testing.assert_frame_equal(load_wandb_history("me/p", api=FakeApi([FakeJobRun(recs, job)]))[hist_cols],
                                  load_history(tmp_path)[hist_cols], check_dtype=False)
