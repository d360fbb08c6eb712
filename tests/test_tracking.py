"""W&B as its users read it, checked on the offline files W&B itself reads back (its transaction
log, tests/wandb_offline.py): one run per replica with its own config, grouped, data axes,
summaries, curvature histograms and series; resumed and restarted jobs; the pure helpers."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core import tracking
from bench.core.loop import run
from conftest import small_config
from wandb_offline import read_runs

LRS, SEEDS = [0.02, 0.05], [0, 1]
CURVATURE = {"hessian": True, "every": 20, "density": True, "density_grid": 64, "top_k": 3,
             "lanczos_iters": 8, "power_iters": 0, "sharpness": False, "noise_scale": False,
             "subset_size": 128, "hutchinson_probes": 0, "slq_probes": 2}


def _wandb(**logger):
    return {"name": "wandb", "mode": "offline", "project": "bb-test", **logger}


@pytest.fixture(scope="module")
def sweep_job(tmp_path_factory):
    """One job of 2 LRs x 2 seeds with curvature at steps 0 and 20, W&B offline."""
    out = tmp_path_factory.mktemp("wandb_job")
    cfg = small_config(logger=_wandb(), budget="20steps", replicas={"lr": LRS, "seeds": SEEDS},
                       optimizer={"name": "sgd"}, metrics=CURVATURE)
    records = run(cfg, out)
    runs = {r["config"]["record"]["run_id"]: r for r in read_runs(out)}
    return records, runs


def test_one_wandb_run_per_replica_with_its_own_config(sweep_job):
    records, runs = sweep_job
    assert sorted(runs) == sorted(r["run_id"] for r in records)
    ids = [runs[r["run_id"]]["id"] for r in records]
    assert len(set(ids)) == len(records) == 4
    assert [i.rsplit("-", 1)[1] for i in ids] == ["r0", "r1", "r2", "r3"]
    for record in records:
        wb, rep = runs[record["run_id"]], record["replica"]
        assert wb["exit"] == 0 and wb["project"] == "bb-test"
        eff = wb["config"]["effective"]
        assert (eff["batch_size"], eff["seed"], eff["base_lr"], eff["peak_lr"], eff["rule"]) == (
            64, rep["seed"], rep["base_lr"], rep["peak_lr"], "none")
        # the config that trains this replica alone: its seed and LR, no replica lists
        assert wb["config"]["seed"] == rep["seed"]
        assert wb["config"]["optimizer"]["lr"] == rep["base_lr"]
        assert wb["config"]["replicas"] == {"lr": None, "seeds": None}
        assert wb["config"]["record"]["replica"] == rep
        assert f"lr{rep['peak_lr']:.3g}-s{rep['seed']}" in wb["name"]
    assert {(r["replica"]["base_lr"], r["replica"]["seed"]) for r in records} == {
        (lr, s) for lr in LRS for s in SEEDS}


def test_runs_of_a_job_share_group_job_type_and_config_hash_tag(sweep_job):
    records, runs = sweep_job
    h = records[0]["config_hash"]
    assert {r["group"] for r in runs.values()} == {f"B64-synthetic-mlp-{h}"}
    assert {r["job_type"] for r in runs.values()} == {"train"}
    assert all(r["tags"] == [f"config:{h}"] for r in runs.values())


def test_history_is_the_records_rows_unprefixed_against_examples(sweep_job):
    records, runs = sweep_job
    for record in records:
        wb = runs[record["run_id"]]
        assert [h["_step"] for h in wb["history"]] == [row["step"] for row in record["history"]]
        for logged, row in zip(wb["history"], record["history"]):
            assert not any(k.startswith("r0/") or k.startswith("r1/") for k in logged)
            for key in ("examples", "train_loss", "test_accuracy", "lr", "epoch"):
                assert logged[key] == pytest.approx(row[key], rel=1e-12)
        assert wb["metrics"]["*"]["step_metric"] == "examples"
        assert wb["metrics"]["examples"]["options"]["defined"]
        assert wb["metrics"]["test_accuracy"]["summary"] == {"max": True, "last": True}
        assert wb["metrics"]["train_loss"]["summary"] == {"min": True, "last": True}


def test_summary_holds_best_last_final_and_convergence(sweep_job):
    records, runs = sweep_job
    for record in records:
        s, hist = runs[record["run_id"]]["summary"], record["history"]
        assert s["test_accuracy"]["max"] == pytest.approx(max(r["test_accuracy"] for r in hist))
        assert s["test_accuracy"]["last"] == pytest.approx(hist[-1]["test_accuracy"])
        assert s["train_loss"]["min"] == pytest.approx(min(r["train_loss"] for r in hist))
        assert s["final_test_loss"] == pytest.approx(record["final"]["test_loss"])
        assert s["status"] == record["status"] == "finished"
        assert s["steps_to_target"] == record["convergence"]["steps_to_target"]
        assert "final_hessian_density" not in s  # the history holds it, as a histogram


def test_curvature_density_is_a_histogram_and_eigenvalues_series(sweep_job):
    records, runs = sweep_job
    measured = 0
    for record in records:
        wb = runs[record["run_id"]]
        for logged, row in zip(wb["history"], record["history"]):
            if "hessian_density" not in row:
                assert "hessian_density._type" not in logged
                continue
            measured += 1
            assert logged["hessian_density._type"] == "histogram"
            grid = np.asarray(row["hessian_density"]["grid"])
            dens = np.asarray(row["hessian_density"]["density"])
            edges, mass = np.asarray(logged["hessian_density.bins"]), np.asarray(logged["hessian_density.values"])
            assert len(edges) == len(mass) + 1 == len(grid) + 1
            # each grid point is the centre of its bin (the record rounds the grid to 5 digits)
            width = np.diff(edges)
            np.testing.assert_allclose((edges[1:] + edges[:-1]) / 2, grid, rtol=0, atol=0.01 * width.min())
            np.testing.assert_allclose(mass, dens * width, rtol=1e-6)
            # the mass of all bins is the density's integral over the grid (trapezoid rule)
            assert mass.sum() == pytest.approx(float(np.trapezoid(dens, grid)), rel=0.02)
            for i, value in enumerate(row["hessian_eigenvalues"]):
                assert logged[f"hessian_eigenvalues/{i}"] == pytest.approx(value)
            assert logged["hessian_top_eigenvalue"] == pytest.approx(row["hessian_eigenvalues"][0])
            lr = row["lr"]
            assert logged["stability_threshold"] == pytest.approx(2.0 / lr)
    assert measured == 2 * len(records)  # steps 0 and 20


def test_requeued_job_resumes_its_wandb_runs_and_a_fresh_start_gets_new_ones(tmp_path, capsys):
    cfg = small_config(logger=_wandb(), budget="20steps", replicas={"lr": LRS},
                       checkpoint={"every_steps": 20})
    run(cfg, tmp_path)
    first = {r["id"] for r in read_runs(tmp_path)}
    assert len(first) == 2
    run(cfg, tmp_path)  # a requeue: resumes the checkpoint at step 20, logs from there
    second = read_runs(tmp_path)
    assert len(second) == 4 and {r["id"] for r in second} == first
    resumed = [r for r in second if r["history"] and r["history"][0]["_step"] == 20]
    assert len(resumed) == 2 and {r["id"] for r in resumed} == first
    assert "earlier start" not in capsys.readouterr().err

    for ckpt in sorted((tmp_path / "checkpoints").iterdir()):  # a start from scratch
        import shutil
        shutil.rmtree(ckpt)
    run(cfg, tmp_path)
    third = {r["id"] for r in read_runs(tmp_path)}
    assert len(third) == 4 and first < third  # two new runs, none logged into twice
    err = capsys.readouterr().err
    assert "earlier start" in err and all(i in err for i in first)


# ---------------------------------------------------------------------- pure helpers


def test_density_histogram_mass_is_density_times_bin_width():
    grid = np.linspace(-1.0, 3.0, 41)
    dens = np.exp(-grid ** 2)
    mass, edges = tracking.density_histogram({"grid": grid.tolist(), "density": dens.tolist()})
    np.testing.assert_allclose(np.diff(edges), 0.1, rtol=1e-12)
    np.testing.assert_allclose(mass, dens * 0.1, rtol=1e-12)
    big = np.linspace(0.0, 1.0, 2000)
    mass, edges = tracking.density_histogram({"grid": big.tolist(), "density": np.ones(2000).tolist()})
    assert len(mass) == tracking.MAX_HISTOGRAM_BINS and mass.sum() == pytest.approx(1.0, rel=1e-3)


def test_per_replica_splits_the_prefixed_summary():
    summary = {"r0/status": "finished", "r1/status": "diverged", "r0/final_test_loss": 0.5,
               "r10/x": 1, "r1/final_hessian_density": {"grid": []}}
    assert tracking.per_replica(summary, 2) == [
        {"status": "finished", "final_test_loss": 0.5}, {"status": "diverged"}]
    assert tracking.per_replica({"status": "finished", "d": {}}, 1) == [{"status": "finished"}]


def test_grouping_defaults_and_overrides(monkeypatch):
    logger = tracking.WandbLogger(name="wandb")
    reproduced = tracking.WandbLogger(name="wandb", finding="batch_warmup")  # as analysis.reproduce sets it
    paper = {"name": "merrill_small", "batch_size": 128}
    g = tracking.grouping(reproduced, paper, "abc123", "merrill_small")
    assert g == {"group": "batch_warmup", "job_type": "merrill_small",
                 "tags": ["finding:batch_warmup", "preset:merrill_small", "config:abc123"]}
    monkeypatch.setattr(tracking, "hydra_sweep_dir", lambda: "multirun/2026-12-03/11-49-41")
    plain = {"name": None, "batch_size": 32}
    g = tracking.grouping(logger, plain, "h", "B32-mnist1d-cnn")
    assert (g["group"], g["job_type"], g["tags"]) == ("multirun/2026-12-03/11-49-41", "train", ["config:h"])
    mine = tracking.WandbLogger(name="wandb", group="mine", job_type="arm", tags=("x",))
    g = tracking.grouping(mine, paper, "h", "n")
    assert (g["group"], g["job_type"], g["tags"][-1]) == ("mine", "arm", "x")


def test_run_ids_resume_only_the_same_configuration(tmp_path):
    reps = [{"index": 0}, {"index": 1}]
    ids, old = tracking.run_ids(tmp_path, "h1", reps, resuming=False)
    assert old == [] and [i.split("-")[0] for i in ids] == ["h1", "h1"]
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / tracking.IDS_FILE).write_text(f'{{"config_hash": "h1", "ids": {ids!r}}}'.replace("'", '"'))
    assert tracking.run_ids(tmp_path, "h1", reps, resuming=True) == (ids, [])
    fresh, old = tracking.run_ids(tmp_path, "h1", reps, resuming=False)
    assert old == ids and not set(fresh) & set(ids)
    other, old = tracking.run_ids(tmp_path, "h2", reps, resuming=True)
    assert old == ids and all(i.startswith("h2-") for i in other)


def test_none_logger_writes_nothing(tmp_path):
    run(small_config(logger={"name": "none"}), tmp_path)
    assert not (tmp_path / "wandb").exists()


class _OfflineRun:
    """An offline run as the ``wandb.apis.public.Run`` fields analysis.load reads."""

    def __init__(self, wb):
        self.id, self.state, self.config = wb["id"], "finished", wb["config"]
        self.summary_metrics = wb["summary"]
        self._history = wb["history"]

    def scan_history(self):
        return iter(self._history)


def test_analysis_load_reads_each_wandb_run_back_as_its_record(sweep_job):
    from analysis.load import records_from_wandb_run

    records, runs = sweep_job
    for record in records:
        (back,) = records_from_wandb_run(_OfflineRun(runs[record["run_id"]]))
        assert back["run_id"] == record["run_id"] and back["replica"] == record["replica"]
        assert back["status"] == "finished"
        assert [h["step"] for h in back["history"]] == [h["step"] for h in record["history"]]
        assert back["final"]["test_accuracy"] == pytest.approx(record["final"]["test_accuracy"])
        assert back["convergence"]["steps_to_target"] == record["convergence"]["steps_to_target"]


def test_language_data_is_plotted_against_tokens(tmp_path):
    """The tracker alone (no training): rows with ``tokens`` make it the default x axis."""
    logger = tracking.WandbLogger(name="wandb", mode="offline", project="bb-test")
    replica = {"index": 0, "count": 1, "seed": 0, "base_lr": 1e-3, "peak_lr": 1e-3,
               "hyperparams": {"b1": 0.9, "b2": 0.95, "eps": 1e-8}}
    config = {"name": None, "batch_size": 8, "seed": 0, "optimizer": {"name": "adamw", "lr": 1e-3},
              "scaling": {"name": "sqrt"}, "replicas": {"lr": None, "seeds": None}}
    tracker = logger.make(config=config, run_id="lmhash", name="B8-pydoc-transformer",
                          output_dir=tmp_path, replicas=[replica])
    for step in (0, 5):
        tracker.log_rows({0: {"step": step, "examples": 8 * step, "tokens": 512 * step,
                              "test_loss": 3.0 - 0.1 * step}}, step)
    tracker.finish({"status": "finished", "final_test_loss": 2.5})
    (wb,) = read_runs(tmp_path)
    assert wb["metrics"]["*"]["step_metric"] == "tokens"
    assert {"tokens", "examples"} <= set(wb["metrics"])
    assert [h["tokens"] for h in wb["history"]] == [0, 2560]
    assert wb["config"]["effective"] == {"batch_size": 8, "seed": 0, "base_lr": 1e-3, "peak_lr": 1e-3,
                                         "rule": "sqrt", "b1": 0.9, "b2": 0.95, "eps": 1e-8}
    assert wb["summary"]["test_loss"] == {"min": 2.5, "last": 2.5}
    assert wb["summary"]["final_test_loss"] == 2.5
