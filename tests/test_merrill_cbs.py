"""merrill_cbs: the local CBS (Merrill et al. 2025) on constructed branch losses with a known k*,
its rise/plateau verdicts, the staged plan (reference, then branches at B0 x 2^k for Delta
tokens), the paper dry run, and --analyze-only on constructed records."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from analysis.local_cbs import ema, local_cbs, local_k_star, rise_and_plateau

B0, CTX = 4, 32
STEPS = (16, 64, 256, 1024)          # the branch preset's checkpoint steps
DELTA = 16384


def test_ema_is_the_recursive_average():
    # s = 0.5 x + 0.5 s: 4 -> 0.5*2 + 0.5*4 = 3 -> 0.5*1 + 0.5*3 = 2
    assert ema([4.0, 2.0, 1.0], 0.5) == 2.0
    assert math.isnan(ema([], 0.5))
    with pytest.raises(ValueError):
        ema([1.0], 0.0)


@pytest.mark.parametrize("losses, eps, expected", [
    ({1: 2.00, 2: 2.00, 4: 2.005, 8: 2.05}, 0.01, 4),   # 4 within eps of 1 and 2; 8 is not
    ({1: 2.00, 2: 2.02, 4: 2.03, 8: 2.04}, 0.01, 1),    # every larger k loses more than eps
    ({1: 2.00, 2: 1.95, 4: 1.99, 8: 1.96}, 0.01, 8),    # not monotone: 8 beats all smaller
    ({1: 2.00, 2: 2.00, 4: 2.05, 8: 2.00}, 0.01, 8),    # 8 <= every smaller + eps, though 4 is not
    ({1: 2.00, 2: 2.015, 4: 2.0}, 0.02, 4),
    ({1: 2.00, 2: math.nan, 4: 2.0}, 0.0, 4),           # a diverged branch neither qualifies nor constrains
])
def test_k_star_is_the_largest_k_within_eps_of_every_smaller_k(losses, eps, expected):
    assert local_k_star(losses, eps) == expected


def test_local_cbs_scales_by_the_reference_batch_and_flags_the_grid_ceiling():
    assert local_cbs({1: 2.0, 2: 2.0, 4: 2.1}, 4) == {"k_star": 2.0, "cbs": 8.0, "censored": False}
    assert local_cbs({1: 2.0, 2: 2.0}, 4)["censored"] is True


def test_rise_and_plateau_on_constructed_trajectories():
    t = [1, 2, 3, 4, 5]
    shape = rise_and_plateau(t, [[4, 4], [8, 16], [32, 32], [32, 64], [32, 32]])
    assert shape["rises"] and shape["plateaus"] and shape["rise_early_doublings"] == 3
    flat = rise_and_plateau(t, [[4, 4]] * 5)
    assert not flat["rises"]
    steady = rise_and_plateau(t, [[4, 4], [8, 8], [16, 16], [64, 64], [256, 256]])
    assert steady["rises"] and not steady["plateaus"]                       # keeps doubling: no plateau
    overlap = rise_and_plateau(t, [[4, 32], [8, 8], [8, 64], [8, 8], [8, 8]])
    assert not overlap["rises"]                                             # seed ranges not ordered


# --- constructed records: a reference run and its branches with a known local CBS per checkpoint

def _branch_record(t0: float, b: int, seed: int, loss: float):
    from lm_record_factory import lm_record

    rows = [{"step": i, "tokens": t0 + i * DELTA / 8, "examples": int((t0 + i * DELTA / 8) // CTX),
             "epoch": 0.1, "lr": 0.003, "batch_size": b, "train_loss": loss, "train_accuracy": 0.5,
             "test_loss": loss + (0.001 if i % 2 else -0.001), "test_accuracy": 0.5, "gap_loss": 0.0,
             "gap_accuracy": 0.0, "train_seconds": 0.1} for i in range(1, 9)]
    rec = lm_record(name="merrill_cbs_offline_branch", batch_size=b, base_lr=0.003, seed=seed, index=seed, rows=rows)
    rec["run_id"] = f"branch-t{int(t0)}-B{b}-r{seed}"
    rec["parent"] = {"output_dir": "ref", "run_id": f"ref-B{B0}-r{seed}", "step": int(t0 // (B0 * CTX)),
                     "examples": int(t0 // CTX), "tokens": t0, "config_hash": "x", "checkpoint_sha256": "y"}
    return rec


def _records(true_k: dict[float, int]):
    """The reference (B_simple 100 x the step's index) and branches whose loss is flat up to
    ``true_k[t0]`` and rises 0.05 per doubling beyond it."""
    from lm_record_factory import lm_record, lm_rows

    recs = []
    for seed in (0, 1):
        rows = lm_rows([0, *STEPS], batch_size=B0, loss=lambda tok, s: 5.0 - math.log1p(tok) / 10)
        for r in rows:
            r["noise_scale_simple"] = 2.0 * (1 + math.log2(max(r["step"], 1)))
        recs.append(lm_record(name="merrill_cbs_offline", batch_size=B0, base_lr=0.003, seed=seed, index=seed, rows=rows))
        for t0, kt in true_k.items():
            for k in (1, 2, 4, 8):
                recs.append(_branch_record(t0, k * B0, seed, 3.0 + 0.05 * max(math.log2(k / kt), 0) + 0.001 * seed))
    return recs


def _tables(tmp_path, true_k):
    from lm_record_factory import write_lm

    from analysis.load import load_tables

    write_lm(tmp_path / "records", _records(true_k))
    return load_tables(tmp_path / "records")


OPTS = {"reference": "merrill_cbs_offline", "branch": "merrill_cbs_offline_branch"}


def test_cbs_table_recovers_the_constructed_k_star_and_b_simple(tmp_path):
    from analysis.findings.merrill_cbs import cbs_table

    true_k = {s * B0 * CTX: k for s, k in zip(STEPS, (1, 2, 4, 4))}
    runs, history = _tables(tmp_path, true_k)
    cells = cbs_table(runs, history, **OPTS)
    assert len(cells) == 8                                              # 4 checkpoints x 2 seeds
    for r in cells.to_dict("records"):
        assert r["k_star"] == true_k[r["tokens"]] and r["cbs"] == B0 * true_k[r["tokens"]]
        step = r["tokens"] / (B0 * CTX)
        assert r["noise_scale_simple"] == pytest.approx(2.0 * (1 + math.log2(step)))


def test_verdicts_rising_then_plateau_pass_and_flat_fails(tmp_path):
    from analysis.findings.merrill_cbs import FINDING

    rising = {s * B0 * CTX: k for s, k in zip(STEPS, (1, 2, 4, 4))}
    runs, history = _tables(tmp_path / "a", rising)
    v = FINDING.verdicts(runs, history, **OPTS)
    assert [x.verdict for x in v[:2]] == ["reproduced", "reproduced"]
    assert "grid floor" in v[0].details
    flat = {s * B0 * CTX: 1 for s in STEPS}
    runs, history = _tables(tmp_path / "b", flat)
    v = FINDING.verdicts(runs, history, **OPTS)
    assert v[0].verdict == "not reproduced" and v[1].verdict == "inconclusive"


def test_plan_stages_the_branches_after_the_reference():
    from analysis.reproduce.plan import offline_plan, read_preset

    plan = offline_plan("merrill_cbs")
    ref, *branches = plan.jobs
    assert ref.name == "merrill_cbs_offline-B4" and ref.budget == "131072tokens"
    assert len(branches) == len(STEPS) * 4
    for job in branches:
        ov = dict(o.split("=", 1) for o in job.overrides)
        step = int(ov["init_from_step"])
        assert step in STEPS and job.after == ref.name
        assert ov["init_from"] == "{records}/merrill_cbs_offline-B4"
        assert ov["budget"] == f"{step * B0 * CTX + DELTA}tokens"      # budget = T0 + Delta (counters continue)
        assert job.batch_size in (4, 8, 16, 32)
    cfg, _ = read_preset("merrill_cbs_offline_branch", ("batch_size=16",))
    assert cfg.scaling.name == "sqrt" and cfg.scaling.base_batch_size == B0   # LR f(k) = sqrt(k)
    # the reference keeps every checkpoint the branches start from
    ref_cfg, _ = read_preset("merrill_cbs_offline")
    assert all(s % ref_cfg.checkpoint.every_steps == 0 for s in STEPS)
    assert ref_cfg.checkpoint.max_to_keep >= 1024 // ref_cfg.checkpoint.every_steps


def test_paper_dry_run_prints_one_branch_sweep_per_checkpoint(capsys):
    from analysis.reproduce.__main__ import main

    assert main(["merrill_cbs", "--scale", "paper", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "+experiment=merrill_cbs_olmo1b " in lines[0] + " "
    assert len(lines) == 1 + 5
    # step 1000 of 4,096 x 1,024 tokens, + Delta = 2B tokens (published.yaml merrill2025/recipe/branching)
    assert "init_from_step=1000" in lines[1] and f"budget={1000 * 4096 * 1024 + 2_000_000_000}tokens" in lines[1]


def test_analyze_only_on_constructed_records(tmp_path):
    from analysis.reproduce.__main__ import main
    from analysis.reproduce.plan import offline_plan

    out = tmp_path / "merrill"
    _tables(out, {s * B0 * CTX: k for s, k in zip(STEPS, (1, 2, 4, 4))})
    plan = offline_plan("merrill_cbs")
    jobs = [{"job": j.name, "batch_size": j.batch_size, "skipped": False, "wall_seconds": 1.0, "total_steps": 8}
            for j in plan.jobs]
    (out / "reproduce.json").write_text(json.dumps({"finding": "merrill_cbs", "command": "c", "plan": asdict(plan),
                                                    "jobs": jobs, "wall_seconds": 10.0}))
    assert main(["merrill_cbs", "--scale", "offline", "--out", str(out), "--analyze-only"]) == 0
    report = (out / "report.md").read_text()
    assert report.count("**Verdict: reproduced**") >= 2
    assert (out / "figures" / "merrill_local_cbs.png").is_file()
    assert (out / "figures" / "merrill_branch_losses.png").is_file()
