"""Language-model verdicts on constructed data with known answers (analysis.findings.*)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import best_per_batch, lr_table
from analysis.critical_batch import cbs_cell, critical_batch_size
from analysis.findings.batch_warmup import warmup_verdicts
from analysis.findings.marek import marek_verdicts
from analysis.findings.shallue_lm import shallue_lm_verdicts
from analysis.findings.zhang_cbs import zhang_verdicts
from analysis.load import history_table, runs_table
from analysis.steps_to_result import Goal
from lm_record_factory import lm_record, lm_rows


def tables(records):
    pairs = [(r, f"/x/{r['run_id']}") for r in records]
    return runs_table(pairs), history_table(pairs)


def mcc(b, s_min=100.0, b_noise=136.0):
    """McCandlish steps to a target: s_min (1 + b_noise / B)."""
    return s_min * (1 + b_noise / b)


# ------------------------------------------------------------------ critical batch size
def test_cbs_on_a_known_curve_is_where_steps_exceed_linear_scaling_by_20_percent():
    # excess over perfect scaling from B0 = 4: (B + bn) / (B0 + bn); it is 1.2 at B = 1.2 B0 + 0.2 bn = 32
    grid = [4, 8, 16, 32, 64, 128]
    t = pd.DataFrame({"batch_size": grid, "steps": [mcc(b) for b in grid]})
    out = critical_batch_size(t)
    assert out["cbs"] == pytest.approx(32.0)
    assert out["bracket"] == (32.0, 64.0) and not out["censored"]
    assert out["excess"][16.0] == pytest.approx(152 / 140)


def test_cbs_between_grid_points_is_interpolated_in_log_b():
    t = pd.DataFrame({"batch_size": [4, 16, 64], "steps": [mcc(b) for b in (4, 16, 64)]})
    e16, e64 = 152 / 140, 200 / 140
    expected = 16 * 4 ** ((1.2 - e16) / (e64 - e16))
    assert critical_batch_size(t)["cbs"] == pytest.approx(expected)       # 25.4 (true 32: grid too coarse)
    assert critical_batch_size(t, overhead=0.5)["cbs"] > 64 or critical_batch_size(t, overhead=0.5)["censored"]


def test_cbs_censored_and_unreached():
    perfect = pd.DataFrame({"batch_size": [1, 2, 4], "steps": [400.0, 200.0, 100.0]})
    out = critical_batch_size(perfect)
    assert out["cbs"] == math.inf and out["censored"]
    # B = 8 never reached the target in its 60 steps: excess >= 60 * 8 / 400 = 1.2 + ... -> upper bound
    t = pd.DataFrame({"batch_size": [1, 2, 4, 8], "steps": [400.0, 200.0, 100.0, np.nan],
                      "max_steps": [800, 400, 200, 100]})
    out = critical_batch_size(t)
    assert out["upper_bound_only"] and out["bracket"] == (4.0, 8.0)
    assert out["cbs"] == pytest.approx(4 * 2 ** ((1.2 - 1.0) / (2.0 - 1.0)))
    assert math.isnan(critical_batch_size(t.assign(steps=[np.nan, 1, 1, 1]))["cbs"])


def _cbs_history(b_noise: float, seeds=(0, 1), lrs=(1e-3, 3e-3), grid=(2, 4, 8, 16, 32, 64)):
    """Records whose best LR (3e-3) reaches loss 1.0 after exactly mcc(B) steps (seed 1: +2%)."""
    recs = []
    for b in grid:
        for lr in lrs:
            for seed in seeds:
                slow = (1.0 if lr == 3e-3 else 1.5) * (1.0 + 0.02 * seed)
                s_target = mcc(b, 100.0, b_noise) * slow
                steps = sorted({*range(0, int(3 * s_target), max(int(s_target) // 50, 1)), int(round(s_target))})
                rows = lm_rows(steps, batch_size=b, loss=lambda tok, s, st=s_target: 2.0 - min(s / st, 1.5) + 0.0)
                recs.append(lm_record(name="n1", batch_size=b, base_lr=lr, seed=seed, rows=rows, index=seed))
    return recs


def test_cbs_cell_from_histories_uses_each_seeds_best_lr():
    _, h = tables(_cbs_history(136.0, grid=(4, 8, 16, 32, 64, 128)))
    cell = cbs_cell(h, Goal(1.0, "test_loss", higher_is_better=False))
    assert cell["cbs"] == pytest.approx(32.0, rel=0.02)       # mcc curve: 20% excess at B = 32
    assert set(cell["per_seed"]) == {0, 1}
    assert cell["seed_min"] <= cell["cbs"] <= cell["seed_max"] * 1.001


def test_zhang_verdicts_data_grows_model_flat():
    cells = pd.DataFrame([
        {"model": "n1", "num_params": 3e4, "tokens": 1e4, "cbs": 8.0, "seed_min": 7.0, "seed_max": 9.0},
        {"model": "n1", "num_params": 3e4, "tokens": 4e4, "cbs": 24.0, "seed_min": 20.0, "seed_max": 28.0},
        {"model": "n2", "num_params": 1e5, "tokens": 1e4, "cbs": 10.0, "seed_min": 9.0, "seed_max": 11.0},
        {"model": "n2", "num_params": 1e5, "tokens": 4e4, "cbs": 30.0, "seed_min": 26.0, "seed_max": 33.0}])
    data, model = zhang_verdicts(cells)
    assert data.verdict == "reproduced" and model.verdict == "reproduced"
    assert model.numbers["mean_abs_log_ratio_model"] == pytest.approx(math.log(1.25))
    assert model.numbers["mean_abs_log_ratio_data"] == pytest.approx(math.log(3))
    # growth below the 1.2 threshold is not growth, even with separate seed ranges
    assert zhang_verdicts(cells.assign(cbs=[8.0, 9.0, 10.0, 11.0], seed_min=[8.0, 9.0, 10.0, 11.0],
                                       seed_max=[8.0, 9.0, 10.0, 11.0]))[0].verdict == "not reproduced"
    # CBS follows the model instead: data effect overlapping seeds, model effect 4x
    flipped = cells.assign(cbs=[8.0, 9.0, 32.0, 34.0], seed_min=[6.0, 7.0, 30.0, 31.0],
                           seed_max=[10.0, 11.0, 34.0, 37.0])
    data, model = zhang_verdicts(flipped)
    assert data.verdict == "not reproduced" and model.verdict == "not reproduced"
    shrinking = cells.assign(cbs=[24.0, 8.0, 30.0, 10.0], seed_min=[20.0, 7.0, 26.0, 9.0],
                             seed_max=[28.0, 9.0, 33.0, 11.0])
    assert zhang_verdicts(shrinking)[0].verdict == "reversed"


# --------------------------------------------------------------------------------- Marek
def _marek_runs(fixed_penalty: float):
    """Final losses: half-life arm best at lr 3e-3 everywhere, loss 2.0 + 0.1 log2(B) / 8;
    the fixed-beta2 arm adds ``fixed_penalty`` at B = 1 and is best at lr 1e-3 there;
    SGD is 0.02 worse at B = 1 and 0.3 worse at B = 16. Seeds differ by +-0.005."""
    recs = []
    for name, sizes in (("hl", (1, 4, 16, 64)), ("fx", (1, 4, 16, 64)), ("sgd", (1, 16))):
        lrs = (1e-3, 3e-3, 1e-2) if name != "sgd" else (0.1, 0.3)
        for b in sizes:
            for lr in lrs:
                for seed in (0, 1, 2):
                    base = 2.0 + 0.1 * math.log2(b) / 8 + (seed - 1) * 0.005
                    if name == "sgd":
                        loss = base + (0.02 if b == 1 else 0.3) + (0.0 if lr == 0.1 else 0.1)
                    else:
                        off = {1e-3: 0.05, 3e-3: 0.0, 1e-2: 0.08 * (1 + math.log2(b))}[lr]
                        if name == "fx" and b == 1:
                            off = {1e-3: 0.0, 3e-3: 0.1, 1e-2: 0.3}[lr] + fixed_penalty
                        loss = base + off
                    rows = lm_rows([0, 10], batch_size=b, loss=lambda t, s, v=loss: 5.5 if s == 0 else v, lr=lr)
                    recs.append(lm_record(name=name, batch_size=b, base_lr=lr, seed=seed, rows=rows, index=seed))
    return tables(recs)[0]


def test_marek_half_life_rule_that_helps():
    out = marek_verdicts(_marek_runs(0.2), halflife="hl", beta2="fx", sgd="sgd")
    assert [x.verdict for x in out] == ["reproduced"] * 6, [(x.claim, x.verdict) for x in out]
    small, fixed, lr, band, sgd, gap = out
    assert small.numbers["small_loss"] == pytest.approx(2.0) and small.numbers["best_larger_batch"] == 4
    assert fixed.numbers["beta2_fixed_minus_halflife"] == pytest.approx(0.2)
    assert (lr.numbers["halflife_best_lr"], lr.numbers["beta2_fixed_best_lr"]) == (3e-3, 1e-3)
    assert band.numbers["band_small"] == pytest.approx(0.08) and band.numbers["band_large"] == pytest.approx(0.56)
    assert sgd.numbers["sgd_minus_adam"] == pytest.approx(0.02) and sgd.numbers["tolerance"] == pytest.approx(0.06)
    assert gap.numbers["gap_large"] == pytest.approx(0.3)


@pytest.mark.parametrize("penalty, verdict", [(0.2, "reproduced"), (0.0, "not reproduced"), (-0.2, "reversed")])
def test_marek_half_life_rule_that_helps_or_not(penalty, verdict):
    out = marek_verdicts(_marek_runs(penalty), halflife="hl", beta2="fx")
    fixed = next(x for x in out if "reaches a worse loss" in x.claim)
    assert fixed.verdict == verdict
    assert fixed.numbers["beta2_fixed_minus_halflife"] == pytest.approx(penalty, abs=1e-9)
    assert out[0].verdict == "reproduced"           # B = 1 (half-life) still beats every larger B


def test_marek_small_batch_that_loses_is_not_reproduced():
    runs = _marek_runs(0.2)
    worse = runs.assign(final_test_loss=np.where((runs["name"] == "hl") & (runs["batch_size"] == 1),
                                                 runs["final_test_loss"] + 0.1, runs["final_test_loss"]))
    assert marek_verdicts(worse, halflife="hl")[0].verdict == "not reproduced"



def _with_accumulation(runs, accumulated_loss):
    """The marek fixture plus an ``acc`` arm: B = 16 as 4 x 4 accumulated, final loss
    ``accumulated_loss`` at its best LR (3e-3), seeds +-0.005."""
    recs = [lm_record(name="acc", batch_size=16, base_lr=lr, seed=seed, index=seed,
                      rows=lm_rows([0, 10], batch_size=16, lr=lr,
                                   loss=lambda t, st, v=accumulated_loss + (seed - 1) * 0.005
                                   + (0.0 if lr == 3e-3 else 0.1): 5.5 if st == 0 else v))
            for lr in (1e-3, 3e-3) for seed in (0, 1, 2)]
    acc = tables(recs)[0].assign(accumulate=4)
    return pd.concat([runs.assign(accumulate=1), acc], ignore_index=True)


@pytest.mark.parametrize("accumulated, verdict", [(2.05, "reproduced"), (2.025, "not reproduced"),
                                                  (2.0, "reversed")])
def test_marek_accumulation_is_wasteful_when_it_ends_worse_than_its_micro_batch(accumulated, verdict):
    # half-life arm: B = 4 ends at 2.025, B = 16 at 2.05 (its best LRs); accumulating 4 x 4
    # into 16 compares with B = 4 trained directly
    runs = _with_accumulation(_marek_runs(0.2), accumulated)
    (acc,) = [v for v in marek_verdicts(runs, halflife="hl", accum="acc") if "accumulation" in v.claim]
    assert acc.verdict == verdict
    n = acc.numbers
    assert (n["batch_size"], n["micro_batch_size"], n["accumulate"]) == (16, 4, 4)
    assert n["micro_batch_loss"] == pytest.approx(2.025)
    assert n["accumulated_minus_micro"] == pytest.approx(accumulated - 2.025)
    assert n["accumulated_minus_direct_large"] == pytest.approx(accumulated - 2.05)


def test_marek_accumulation_without_its_micro_batch_is_inconclusive():
    runs = _with_accumulation(_marek_runs(0.2), 2.05)
    runs = runs[~((runs["name"] == "hl") & (runs["batch_size"] == 4))]
    (acc,) = [v for v in marek_verdicts(runs, halflife="hl", accum="acc") if "accumulation" in v.claim]
    assert acc.verdict == "inconclusive" and "micro-batch size 4" in acc.details

def test_lr_table_counts_diverged_runs_as_unusable():
    recs = [lm_record(name="a", batch_size=4, base_lr=1e-3, seed=s, index=s,
                      rows=lm_rows([0, 5], batch_size=4, loss=lambda t, st: 2.0)) for s in (0, 1)]
    recs.append(lm_record(name="a", batch_size=4, base_lr=1e-2, seed=0, index=0, status="diverged",
                          rows=lm_rows([0, 5], batch_size=4, loss=lambda t, st: 1.0)))
    recs.append(lm_record(name="a", batch_size=4, base_lr=1e-2, seed=1, index=1,
                          rows=lm_rows([0, 5], batch_size=4, loss=lambda t, st: 1.0)))
    best = best_per_batch(lr_table(tables(recs)[0]))
    assert best["base_lr"].tolist() == [1e-3] and best["n_lrs_finite"].tolist() == [1]


# ---------------------------------------------------------------------------- Shallue LM
def test_shallue_lm_regimes_on_a_loss_target():
    recs = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        for seed in (0, 1):
            s_t = mcc(b, 50.0, 8.0) * (1 + 0.01 * seed)
            steps = sorted({*range(0, int(2 * s_t), max(int(s_t) // 40, 1)), int(round(s_t))})
            recs.append(lm_record(name="lm", batch_size=b, base_lr=0.1, seed=seed, index=seed,
                                  rows=lm_rows(steps, batch_size=b, loss=lambda t, s, st=s_t: 3.5 - min(s / st, 1.2))))
    runs, hist = tables(recs)
    regimes, degradation = shallue_lm_verdicts(hist, runs, target_loss=2.5)
    assert regimes.verdict == "reproduced"
    assert regimes.numbers["b_crit_fit"] == pytest.approx(8.0, rel=0.05)
    assert regimes.numbers["perfect_scaling_up_to"] == 2                # excess (B + 8) / 9 <= 1.2 up to B = 2
    assert degradation.verdict == "reproduced"                           # final losses equal at every B


# ------------------------------------------------------------------------ batch warmup
def _warmup_runs(ramp_loss: float):
    recs = []
    arms = {"small": (16, 768, 2.10), "large": (64, 192, 2.30), "ramp": (16, 432, ramp_loss)}
    for name, (b, steps, final) in arms.items():
        for seed in (0, 1, 2):
            f = final + 0.004 * (seed - 1)
            rows = lm_rows(range(0, steps + 1, 16), batch_size=b,
                           loss=lambda t, s, f=f, n=steps: f + 1.5 * (1 - s / n))
            recs.append(lm_record(name=name, batch_size=b, base_lr=3e-3, seed=seed, index=seed, rows=rows))
    return tables(recs)


def test_warmup_saves_steps_at_equal_loss():
    runs, hist = _warmup_runs(2.105)
    small_claim, large_claim = warmup_verdicts(runs, hist, small="small", large="large", ramps=["ramp"])
    assert small_claim.verdict == "reproduced" and large_claim.verdict == "reproduced"
    assert small_claim.numbers["steps_saved_equal_tokens"] == pytest.approx(1 - 432 / 768)
    assert small_claim.numbers["small_steps_to_ramp_loss"] == 768     # the small control reaches 2.105 at its end


def test_warmup_that_costs_loss_is_not_reproduced():
    runs, hist = _warmup_runs(2.2)
    small_claim, large_claim = warmup_verdicts(runs, hist, small="small", large="large", ramps=["ramp"])
    assert small_claim.verdict == "not reproduced" and large_claim.verdict == "reproduced"
    runs, hist = _warmup_runs(2.4)
    assert warmup_verdicts(runs, hist, small="small", large="large", ramps=["ramp"])[1].verdict == "reversed"
