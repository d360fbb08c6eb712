"""The seesaw finding on constructed records (verdict rules, known answers) and its presets'
batch plan against an independent cosine computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.aggregate import arm_curve, best_lr_rows
from analysis.findings import get
from analysis.findings.seesaw import seesaw_verdicts

COS, SEE = "seesaw_offline_cosine", "seesaw_offline"


def _runs(cos_loss: dict[float, float], see_loss: dict[float, float], seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for name, losses, steps in ((COS, cos_loss, 2048), (SEE, see_loss, 1343)):
        for lr, loss in losses.items():
            for s in seeds:
                rows.append({"name": name, "batch_size": 4, "base_lr": lr, "peak_lr": lr, "seed": s,
                             "status": "finished", "final_test_loss": loss + 0.01 * (s - 1),
                             "total_steps": steps})
    return pd.DataFrame(rows)


def test_seesaw_is_judged_at_the_cosine_arms_best_lr():
    """Cosine is best at 0.005; Seesaw is best at 0.01 but 0.05 nats worse at 0.005: not
    reproduced (the paper's protocol), though its own best matches."""
    runs = _runs({0.005: 1.70, 0.01: 1.80}, {0.005: 1.75, 0.01: 1.70})
    (v,) = seesaw_verdicts(runs, pd.DataFrame(), cosine=COS, seesaw=SEE)
    assert v.verdict == "not reproduced"
    assert v.numbers["base_lr"] == 0.005 and math.isclose(v.numbers["seesaw_minus_cosine"], 0.05)
    assert v.numbers["seesaw_best_lr"] == 0.01 and math.isclose(v.numbers["steps_saved"], 1 - 1343 / 2048)
    assert math.isclose(v.numbers["tolerance"], 0.01)          # seed std 0.01 = min_tol


def test_seesaw_within_noise_with_fewer_steps_is_reproduced_and_one_seed_is_inconclusive():
    runs = _runs({0.005: 1.70}, {0.005: 1.705})
    assert seesaw_verdicts(runs, pd.DataFrame(), cosine=COS, seesaw=SEE)[0].verdict == "reproduced"
    one = _runs({0.005: 1.70}, {0.005: 1.705}, seeds=(0,))
    assert seesaw_verdicts(one, pd.DataFrame(), cosine=COS, seesaw=SEE)[0].verdict == "inconclusive"
    assert seesaw_verdicts(runs[runs["name"] == COS], pd.DataFrame(), cosine=COS,
                           seesaw=SEE)[0].verdict == "inconclusive"


def test_best_lr_rows_and_arm_curve_match_a_direct_computation():
    runs = _runs({0.005: 1.70, 0.01: 1.65}, {0.005: 1.75})
    best = best_lr_rows(runs, [SEE, COS])
    assert list(best["name"]) == [SEE, COS] and list(best["base_lr"]) == [0.005, 0.01]
    assert math.isclose(best["mean"].iloc[1], np.mean([1.64, 1.65, 1.66]))
    h = pd.DataFrame({"name": COS, "base_lr": 0.01, "step": [0, 0, 8, 8], "tokens": [0, 0, 1024, 1024],
                      "current_batch_size": 4, "test_loss": [3.0, 3.2, 2.0, 2.4]})
    c = arm_curve(h, COS, 0.01)
    assert list(c["loss"]) == [3.1, 2.2] and list(c["lo"]) == [3.0, 2.0] and list(c["hi"]) == [3.2, 2.4]
    assert arm_curve(h, SEE, 0.01).empty


def test_the_offline_preset_doubles_b_where_cosine_halves_the_lr():
    """From a from-scratch cosine (linear warmup, then cos to 0 over the rest): B doubles at
    the first step the multiplier is <= 1/2, 1/4, 1/8 (capped at 32), at equal examples."""
    from analysis.reproduce.plan import load_preset
    from bench.job_plan import job_plan
    n = 14279                                                   # pydoc sequences of 32 tokens
    plan = job_plan(load_preset(SEE).config, n, tokens_per_example=32)
    ref = job_plan(load_preset(COS).config, n, tokens_per_example=32)
    w, total = ref.warmup_steps, ref.total_steps
    t = np.arange(total)
    m = np.where(t < w, t / max(w, 1), 0.5 * (1 + np.cos(np.pi * (t - w) / (total - w))))
    first = [int(np.argmax((m <= 2.0 ** -k) & (t >= w))) for k in (1, 2, 3)]
    sizes = [b for _, b in plan.stages]
    assert sizes == [4, 8, 16, 32]
    assert [round(float(e) * n) for e, _ in plan.stages[1:]] == [4 * f for f in first]  # examples
    assert plan.total_steps < total


def test_the_finding_declares_its_arms():
    f = get("seesaw")
    assert f.offline_presets == (COS, SEE) and f.paper_presets == ("seesaw_150m_cosine", "seesaw_150m")
