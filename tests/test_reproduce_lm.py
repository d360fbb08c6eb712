"""The language-model reproductions (marek, zhang_cbs, shallue_lm, batch_warmup): plans read from
their arm presets, the arms' roles, paper-scale commands, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shlex

import pytest

from analysis.findings import get
from analysis.reproduce.__main__ import main
from analysis.reproduce.plan import offline_plan, paper_commands, read_preset
from bench.hydra_conf import compose_config

LM_FINDINGS = ("marek", "zhang_cbs", "shallue_lm", "batch_warmup")


def job_config(job):
    return compose_config([f"+experiment={job.preset}", *job.overrides])


@pytest.mark.parametrize("finding", LM_FINDINGS)
def test_lm_plan_has_one_job_per_arm_and_batch_size(finding):
    spec, plan = get(finding), offline_plan(finding)
    assert plan.presets == spec.offline_presets and plan.preset == spec.offline_presets[0]
    expected = []
    for preset in spec.offline_presets:
        cfg, params = read_preset(preset)
        sizes = [int(b) for b in params.get("batch_size", [cfg.batch_size])]
        expected += [(preset, b) for b in sizes]
        assert tuple(cfg.replicas.seeds) == plan.seeds                  # every arm: the same seeds
    assert [(j.preset, j.batch_size) for j in plan.jobs] == expected
    names = [j.name for j in plan.jobs]
    assert len(set(names)) == len(names)
    assert all(j.name == (f"{j.preset}-B{j.batch_size}" if len(plan.presets) > 1 else f"B{j.batch_size}")
               for j in plan.jobs)
    assert len(plan.seeds) >= 2
    for job in plan.jobs:
        cfg = job_config(job)
        assert cfg.batch_size == job.batch_size and cfg.name == job.preset
        assert cfg.dataset.name in ("pydoc", "markov") and cfg.model.name == "transformer"
        assert cfg.budget.endswith("tokens") and cfg.logger.mode == "disabled"
        assert tuple(cfg.replicas.seeds) == plan.seeds


def test_marek_arms_equal_tokens_and_the_half_life_rule():
    plan = offline_plan("marek")
    assert plan.options == {"halflife": "marek_offline_halflife", "beta2": "marek_offline_beta2",
                           "sgd": "marek_offline_sgd", "accum": "marek_offline_accum"}
    cfgs = {j.name: job_config(j) for j in plan.jobs}
    assert {c.budget for c in cfgs.values()} == {"262144tokens"}
    assert sorted({j.batch_size for j in plan.jobs}) == [1, 4, 16, 64, 256]
    hl, fx = cfgs["marek_offline_halflife-B256"], cfgs["marek_offline_beta2-B1"]
    # the half-life is beta2 = 0.95 at the largest batch: 256 x 32 tokens per step
    assert 0.5 ** (256 * 32 / hl.optimizer.beta2_half_life) == pytest.approx(0.95, abs=1e-6)
    assert fx.optimizer.beta2_half_life is None and fx.optimizer.b2 == 0.95
    assert cfgs["marek_offline_sgd-B1"].optimizer.name == "sgd"
    # accumulation: B = 64 as 4 x 16, otherwise B = 64 of the half-life arm (b2 from the whole batch)
    acc, direct = cfgs["marek_offline_accum-B64"], cfgs["marek_offline_halflife-B64"]
    assert (acc.batch_size, acc.accumulate, direct.accumulate) == (64, 4, 1)
    assert (acc.optimizer, acc.replicas, acc.budget) == (direct.optimizer, direct.replicas, direct.budget)
    # the same relative LR grid at every B (sqrt scaling from B = 16) in both Adam arms
    assert hl.replicas.lr == fx.replicas.lr and hl.scaling.name == fx.scaling.name == "sqrt"


def test_zhang_cells_and_noise_scale():
    plan = offline_plan("zhang_cbs")
    assert plan.options["data_sizes"] == [32768, 131072]
    n1, n2 = (job_config(j) for j in plan.jobs if j.batch_size == 1)
    assert n2.model.architecture()["d_model"] == 2 * n1.model.architecture()["d_model"]
    for cfg in (n1, n2):
        assert cfg.schedule.name == "constant" and cfg.eval.ewa_decay == 0.9
        assert cfg.metrics.hessian and cfg.metrics.noise_scale and not cfg.metrics.sharpness
        # the smallest B evaluates (and measures B_simple) exactly at both data sizes
        every = cfg.eval.cadence(1)
        assert all(d // 32 % every == 0 and d // 32 % cfg.metrics.every == 0 for d in plan.options["data_sizes"])


def test_shallue_lm_and_warmup_plans():
    plan = offline_plan("shallue_lm")
    assert plan.options["target_loss"] == 2.6 and plan.batch_sizes == (1, 2, 4, 8, 16, 32, 64)
    assert job_config(plan.jobs[0]).optimizer.nesterov
    plan = offline_plan("batch_warmup")
    assert plan.options == {"small": "warmup_offline_small", "large": "warmup_offline_large",
                           "ramps": ["warmup_offline_merrill", "warmup_offline_ramp"]}
    merrill = job_config(next(j for j in plan.jobs if j.preset == "warmup_offline_merrill"))
    assert merrill.batch_schedule.name == "increase" and merrill.batch_schedule.factor == 2
    # LR x sqrt(2) at each doubling: decay_factor x B_new / B_old
    assert merrill.schedule.decay_factor * 2 == pytest.approx(2 ** 0.5)


def test_lm_smoke_plans_shrink_epoch_boundaries():
    plan = offline_plan("batch_warmup", budget_scale=0.1)
    merrill = next(j for j in plan.jobs if j.preset == "warmup_offline_merrill")
    assert "schedule.decay_epochs=[0.01583,0.04745]" in merrill.overrides
    assert "budget=26214tokens" in merrill.overrides
    # the image findings' smoke plans are unchanged (epoch budgets: nothing to shrink)
    assert not [o for j in offline_plan("goyal", budget_scale=0.1).jobs for o in j.overrides
                if o.startswith("schedule.")]


def test_lm_paper_commands_run_every_arm():
    for finding in LM_FINDINGS:
        cmds = paper_commands(finding, launcher="slurm_gpu")
        assert [c[4] for c in cmds] == [f"+experiment={p}" for p in get(finding).paper_presets]


def test_paper_dry_run_prints_one_sweep_per_arm(capsys):
    assert main(["marek", "--scale", "paper", "--dry-run", "--out", "out"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(x)[4] for x in lines] == ["+experiment=marek_gpt2_halflife",
                                                  "+experiment=marek_gpt2_beta2", "+experiment=marek_gpt2_sgd"]
    assert main(["batch_warmup", "--scale", "offline", "--dry-run", "--budget-scale", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "warmup_offline_merrill-B4 +experiment=warmup_offline_merrill batch_size=4" in out


@pytest.mark.slow
def test_tiny_marek_reproduction_writes_report_and_figures(tmp_path):
    """Every arm at B = 1 and 16, budgets x 0.01, 2 seeds (a few minutes: compile dominates)."""
    out = tmp_path / "marek"
    assert main(["marek", "--scale", "offline", "--budget-scale", "0.01", "--seeds", "2",
                 "--batch-sizes", "1", "16", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Marek et al. 2025" in report and report.count("**Verdict:") >= 5
    assert (out / "figures" / "marek_loss_vs_batch.png").is_file()
    jobs = [j["job"] for j in json.loads((out / "reproduce.json").read_text())["jobs"]]
    assert jobs == ["marek_offline_halflife-B1", "marek_offline_halflife-B16", "marek_offline_beta2-B1",
                    "marek_offline_beta2-B16", "marek_offline_sgd-B1", "marek_offline_sgd-B16"]


def test_analyze_only_rewrites_the_report_from_records_without_training(tmp_path):
    """Constructed marek records + the reproduce.json of a run: --analyze-only writes figures and
    the report, keeping the run's command and job table and saying it was re-analysed."""
    from dataclasses import asdict

    from lm_record_factory import lm_record, lm_rows, write_lm

    out = tmp_path / "marek"
    recs = []
    for name in ("marek_offline_halflife", "marek_offline_beta2", "marek_offline_sgd"):
        for b in (1, 16):
            for seed in (0, 1):
                recs.append(lm_record(name=name, batch_size=b, base_lr=0.01, seed=seed, index=seed,
                                      rows=lm_rows([0, 64], batch_size=b, loss=lambda t, s, b=b: 5.0 if s == 0 else 2 + b / 100)))
    write_lm(out / "records", recs)
    plan = offline_plan("marek", batch_sizes=[1, 16])
    jobs = [{"job": j.name, "batch_size": j.batch_size, "skipped": False, "wall_seconds": 60.0, "total_steps": 64,
             "compile_seconds": 5.0, "train_seconds": 50.0, "eval_seconds": 5.0, "metrics_seconds": 0.0}
            for j in plan.jobs]
    (out / "reproduce.json").write_text(json.dumps({"finding": "marek", "command": "python -m analysis.reproduce marek",
                                                    "plan": asdict(plan), "jobs": jobs, "wall_seconds": 360.0}))
    assert main(["marek", "--scale", "offline", "--out", str(out), "--analyze-only"]) == 0
    report = (out / "report.md").read_text()
    assert "- command: `python -m analysis.reproduce marek`" in report
    assert "analysis re-run" in report and "| marek_offline_sgd-B16 | 16 | 64 | 60 |" in report
    assert "**Verdict: reproduced**" in report                       # B = 1 (2.01) beats B = 16 (2.16)
    assert (out / "figures" / "marek_loss_vs_batch.png").is_file()
    with pytest.raises(ValueError, match="not 'zhang_cbs'"):
        main(["zhang_cbs", "--scale", "offline", "--out", str(out), "--analyze-only"])
