"""analysis.reproduce: plans read from the presets, paper-scale Hydra commands, a tiny end-to-end run."""

from __future__ import annotations

import json
import shlex

import pytest
from analysis.findings import get, names
from analysis.reproduce.__main__ import main
from analysis.reproduce.plan import offline_plan, paper_commands, read_preset
from analysis.reproduce.plan import scaled_budget as _scaled_budget
from bench.hydra_conf import compose
from bench.hydra_conf import compose_config as compose_overrides

PAPER_PRESETS = {name: get(name).paper_presets for name in names()}
IMAGE_FINDINGS = ["edge_of_stability", "goyal", "keskar", "shallue", "edge_of_stability_cohen",
                  "adaptive_edge_of_stability"]   # LM findings: test_reproduce_lm.py


def compose_config(preset: str, overrides):
    return compose_overrides([f"+experiment={preset}", *overrides])


def sweep_params(preset: str) -> dict:
    return dict(compose([f"+experiment={preset}"], return_hydra_config=True).hydra.sweeper.params or {})


def override(job, key: str) -> str:
    vals = [o.split("=", 1)[1] for o in job.overrides if o.split("=", 1)[0] == key]
    assert len(vals) == 1, (key, job.overrides)
    return vals[0]


# ----------------------------------------------------------------------------- plans
@pytest.mark.parametrize("finding", IMAGE_FINDINGS)
def test_plan_is_read_from_the_preset_and_every_job_composes(finding):
    plan = offline_plan(finding)
    assert plan == offline_plan(finding)                       # deterministic, no side effects
    assert plan.preset == get(finding).offline_presets[0]
    preset, params = read_preset(plan.preset)                  # one home: the preset
    assert plan.lrs == tuple(preset.replicas.lr or (preset.optimizer.lr,))
    assert plan.seeds == tuple(preset.replicas.seeds)
    assert [str(b) for b in plan.batch_sizes] == params.get("batch_size", [str(preset.batch_size)])
    assert len(plan.jobs) == len(plan.batch_sizes) * len(plan.rules)
    assert len({j.name for j in plan.jobs}) == len(plan.jobs)
    assert len(plan.seeds) >= (1 if "edge_of_stability" in finding else 3)   # several seeds
    for job in plan.jobs:
        cfg = compose_config(plan.preset, job.overrides)
        assert cfg.batch_size == job.batch_size
        assert cfg.budget == job.budget
        assert tuple(cfg.replicas.seeds) == plan.seeds
        assert tuple(cfg.replicas.lr or (cfg.optimizer.lr,)) == plan.lrs
        assert cfg.dataset.name == "mnist1d" and cfg.logger.mode == "disabled"


@pytest.mark.parametrize("finding", ["keskar", "goyal", "shallue"])
def test_plan_batch_sizes_match_the_presets_sweep(finding):
    plan = offline_plan(finding)
    swept = [int(b) for b in str(sweep_params(plan.preset)["batch_size"]).split(",")]
    assert list(plan.batch_sizes) == swept


def test_keskar_plan():
    plan = offline_plan("keskar")
    assert plan.batch_sizes[0] == 32 and plan.batch_sizes[-1] == 400   # LB = 10% of 4,000
    assert plan.seeds == (0, 1, 2, 3, 4)                                 # Keskar: 5 runs
    assert plan.lrs == (0.001,)                                          # Adam, same LR for all B
    assert plan.options == {"sb": 32, "lb": 400}
    assert {j.budget for j in plan.jobs} == {"60epochs"}                 # equal epochs for SB and LB
    cfg = compose_config(plan.preset, plan.jobs[-1].overrides)
    assert cfg.save_params and cfg.metrics.hessian and cfg.metrics.sharpness
    assert cfg.optimizer.name == "adam" and cfg.model.batch_norm


def test_shallue_plan():
    plan = offline_plan("shallue")
    bs = plan.batch_sizes
    assert list(bs) == [8 * 2 ** i for i in range(len(bs))] and len(bs) >= 6
    assert len(plan.lrs) >= 5 and max(plan.lrs) / min(plan.lrs) >= 20     # LR tuned per B on a grid
    assert plan.options["target_accuracy"] == 0.85
    assert {j.budget for j in plan.jobs} == {"100000examples"}          # equal epochs at every B
    steps = [100000 // b for b in bs]                                    # small B gets more steps
    cadence = [compose_config(plan.preset, j.overrides).eval.cadence(j.batch_size) for j in plan.jobs]
    assert cadence == [80, 50, 25, 15, 10, 8, 6]                         # the preset's per-B cadence
    assert min(s / e for s, e in zip(steps, cadence)) >= 20              # steps-to-result resolution
    cfg = compose_config(plan.preset, plan.jobs[0].overrides)
    assert cfg.scaling.name == "none" and cfg.target.test_accuracy == 0.85


def test_goyal_plan():
    plan = offline_plan("goyal")
    assert plan.rules == ("linear", "none", "sqrt")
    assert {(j.batch_size, override(j, "scaling")) for j in plan.jobs} == {
        (b, r) for b in plan.batch_sizes for r in plan.rules}
    assert plan.batch_sizes[-1] / plan.batch_sizes[0] == 32               # Goyal: 256 -> 8k
    cfg = compose_config(plan.preset, plan.jobs[0].overrides)
    assert cfg.scaling.base_batch_size == plan.batch_sizes[0]
    assert cfg.schedule.warmup_from == "base" and cfg.schedule.warmup_epochs > 0


def test_edge_of_stability_plan_is_full_batch_gd_with_tracking():
    plan = offline_plan("edge_of_stability")
    (job,) = plan.jobs
    cfg = compose_config(plan.preset, job.overrides)
    assert cfg.batch_size == cfg.dataset.num_train                      # full batch
    assert cfg.optimizer.name == "sgd" and cfg.metrics.hessian and cfg.metrics.every == 25


def test_cohen_setup_and_adaptive_plans_are_full_batch_with_their_thresholds():
    cohen = offline_plan("edge_of_stability_cohen")
    (job,) = cohen.jobs
    cfg = compose_config(cohen.preset, job.overrides)
    assert (cfg.loss, cfg.model.activation, cfg.model.hidden) == ("mse", "tanh", (200, 200))
    assert cfg.batch_size == cfg.dataset.num_train and cfg.optimizer.name == "sgd"
    assert (cfg.metrics.dense_every, cfg.metrics.dense_until, cfg.metrics.every) == (10, 600, 50)
    adaptive = offline_plan("adaptive_edge_of_stability")
    cfg = compose_config(adaptive.preset, adaptive.jobs[0].overrides)
    assert cfg.optimizer.name == "adam" and cfg.metrics.preconditioned and cfg.batch_size == cfg.dataset.num_train
    smoke = offline_plan("edge_of_stability_cohen", budget_scale=0.1).jobs[0]
    assert (override(smoke, "metrics.dense_every"), override(smoke, "metrics.dense_until")) == ("1", "60")


def test_plan_options():
    assert offline_plan("keskar", seeds=2).seeds == (0, 1)
    small = offline_plan("shallue", batch_sizes=[64, 8])
    assert small.batch_sizes == (8, 64)
    with pytest.raises(ValueError, match="not in the shallue plan"):
        offline_plan("shallue", batch_sizes=[3])
    with pytest.raises(ValueError, match="unknown finding"):
        offline_plan("hoffer")
    scaled = offline_plan("keskar", budget_scale=0.01)
    assert {j.budget for j in scaled.jobs} == {"0.6epochs"}
    assert override(scaled.jobs[0], "eval.every_steps") == "2"
    assert _scaled_budget("300steps", 0.001) == "1steps"
    assert _scaled_budget("40epochs", 1.0) == "40epochs"


# ----------------------------------------------------------------------- paper scale
def test_paper_dry_run_prints_the_hydra_commands(capsys):
    assert main(["keskar", "--scale", "paper", "--dry-run", "--out", "sweeps_out"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"python -m bench.train -m +experiment={p} logger.finding=keskar hydra/launcher=slurm_gpu "
                     f"hydra.sweep.dir=sweeps_out/{p}" for p in PAPER_PRESETS["keskar"]]
    assert main(["goyal", "--scale", "paper", "--dry-run", "--launcher", "local", "--seeds", "3",
                 "--override", "dataset.data_dir=/data/tfds"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert shlex.split(line) == [
        "python", "-m", "bench.train", "-m", "+experiment=goyal_linear", "logger.finding=goyal",
        "hydra/launcher=local", "replicas.seeds=[0,1,2]",
        "hydra.sweep.dir=results/goyal-paper/goyal_linear", "dataset.data_dir=/data/tfds"]
    assert sweep_params("goyal_linear")["scaling"] == "linear,none,sqrt"   # the rules compared
    assert main(["shallue", "--scale", "paper", "--dry-run", "--launcher", "basic"]) == 0
    assert capsys.readouterr().out.strip() == (
        "python -m bench.train -m +experiment=shallue_steps_to_result logger.finding=shallue "
        "hydra.sweep.dir=results/shallue-paper/shallue_steps_to_result")
    with pytest.raises(SystemExit):
        main(["keskar", "--scale", "paper", "--dry-run", "--launcher", "nope"])


@pytest.mark.parametrize("launcher", ["slurm_gpu", "local"])
def test_paper_commands_compose_with_the_launcher(launcher):
    """Each command's overrides (sweeps reduced to their first value) compose, launcher included."""
    for finding in names():
        for cmd in paper_commands(finding, launcher=launcher, seeds=2):
            ov = [o.split(",")[0] if "=" in o and "[" not in o else o for o in cmd[4:]]
            cfg = compose(ov, return_hydra_config=True)
            assert "submitit" in cfg.hydra.launcher._target_
            assert list(cfg.replicas.seeds) == [0, 1]


# ----------------------------------------------------------------------- end to end
def test_tiny_offline_reproduction_writes_report_and_figures(tmp_path):
    """Shallue plan, 2 batch sizes, 1 seed, budgets x 0.05 (~30 s)."""
    out = tmp_path / "shallue"
    assert main(["shallue", "--scale", "offline", "--budget-scale", "0.05", "--seeds", "1",
                 "--batch-sizes", "64", "256", "--out", str(out), "--publish", str(tmp_path / "pub")]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# Reproduction: shallue (offline, scaled down)")
    assert "Shallue et al. 2019" in report and "**Verdict:" in report
    assert "Budgets scaled by 0.05" in report
    assert (out / "figures" / "accuracy_gap_vs_batch.png").is_file()
    meta = json.loads((out / "reproduce.json").read_text())
    assert [j["job"] for j in meta["jobs"]] == ["B64", "B256"]
    assert all(j["wall_seconds"] > 0 for j in meta["jobs"])
    lines = (out / "summary.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 2 * 7                       # header + 2 B x 7 LRs x 1 seed
    pub = sorted(p.relative_to(tmp_path / "pub").as_posix() for p in (tmp_path / "pub").rglob("*") if p.is_file())
    assert "report.md" in pub and "figures/accuracy_gap_vs_batch.png" in pub
    assert not [p for p in pub if p.endswith((".json", ".npz", ".pdf"))]
    # a second run resumes: finished jobs are not retrained, their timings are kept
    assert main(["shallue", "--scale", "offline", "--budget-scale", "0.05", "--seeds", "1",
                 "--batch-sizes", "64", "256", "--out", str(out)]) == 0
    again = json.loads((out / "reproduce.json").read_text())["jobs"]
    assert all(j["reused"] for j in again)
    assert [j["wall_seconds"] for j in again] == [j["wall_seconds"] for j in meta["jobs"]]
    assert "B64 (earlier run)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_tiny_keskar_reproduction_with_interpolation_and_sharpness(tmp_path):
    out = tmp_path / "keskar"
    assert main(["keskar", "--scale", "offline", "--budget-scale", "0.02", "--seeds", "2",
                 "--batch-sizes", "32", "400", "--out", str(out),
                 "--override", "metrics.sharpness=false", "--override", "metrics.hutchinson_probes=0",
                 "--override", "metrics.lanczos_iters=5"]) == 0
    curve = (out / "interpolation.csv").read_text().strip().splitlines()
    assert curve[0] == "alpha,train_loss,train_accuracy,test_loss,test_accuracy" and len(curve) == 32
    bn = (out / "interpolation_bn_recomputed.csv").read_text().strip().splitlines()
    assert bn[0] == curve[0] and len(bn) == 32
    for name in ("keskar_interpolation", "keskar_interpolation_bn_recomputed",
                 "accuracy_gap_vs_batch", "sharpness_vs_batch"):
        assert (out / "figures" / f"{name}.png").is_file(), name
    report = (out / "report.md").read_text()
    assert "Keskar et al. 2017" in report and "hessian_top_eigenvalue" in report
    assert "keskar_interpolation" in report
    assert "## Interpolation with BatchNorm statistics recomputed" in report


@pytest.mark.slow
def test_paper_path_runs_the_hydra_sweep_then_reports(tmp_path, monkeypatch):
    """--scale paper without --dry-run, on an offline preset (no TFDS here): the Hydra multirun over
    the preset's sweeper params, then interpolation, figures and report in the sweep dir."""
    from analysis.findings import Arm

    monkeypatch.setattr(type(get("keskar")), "paper", (Arm("keskar_offline"),))
    out = tmp_path / "paper"
    assert main(["keskar", "--scale", "paper", "--launcher", "basic", "--out", str(out), "--seeds", "2",
                 "--override", "batch_size=32,400", "--override", "budget=4steps",
                 "--override", "eval.every_steps=2", "--override", "metrics.sharpness=false",
                 "--override", "metrics.hutchinson_probes=0", "--override", "metrics.lanczos_iters=4"]) == 0
    sweep = out / "keskar_offline"
    assert len(list(sweep.rglob("record_r*.json"))) == 4            # 2 batch sizes x 2 seeds
    assert (sweep / "interpolation.csv").is_file()
    assert (sweep / "figures" / "keskar_interpolation.png").is_file()
    assert "**Verdict:" in (sweep / "report.md").read_text()
