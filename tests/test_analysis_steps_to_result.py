"""Steps-to-result the Shallue way, on constructed histories with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.load import load_history
from analysis.steps_to_result import (Goal, fit_mccandlish, perfect_scaling_max_b, regimes,
                                      steps_to_result, trials)
from record_factory import make_record, write_records


def _rows(b: int, steps: list[int], accs: list[float]) -> list[dict]:
    return [{"step": s, "epoch": s * b / 4000, "examples": s * b, "lr": 0.1, "batch_size": b,
             "train_loss": 1 - a, "train_accuracy": a, "test_loss": 1.1 - a, "test_accuracy": a,
             "gap_loss": 0.1, "gap_accuracy": 0.0} for s, a in zip(steps, accs)]


@pytest.fixture
def history(tmp_path):
    t = [0, 100, 200, 300, 400]
    spec = [  # (B, lr, seed, steps, accs, status)
        (32, 0.1, 0, t, [.1, .5, .85, .91, .95], "finished"),    # first >= .9 at 300
        (32, 0.1, 1, t, [.1, .6, .92, .95, .96], "finished"),    # 200
        (32, 0.2, 0, t, [.1, .7, .8, .88, .89], "finished"),     # never
        (32, 0.2, 1, t[:3], [.1, .91, .5], "diverged"),          # 100, then diverged: still counts
        (64, 0.2, 0, [0, 50, 150, 250], [.1, .5, .93, .97], "finished"),  # 150
        (64, 0.2, 1, [0, 50, 150, 250], [.1, .5, .8, .95], "finished"),   # 250
        (64, 0.4, 0, [0, 50, 150, 250], [.1, .2, .3, .4], "finished"),    # never
        (128, 0.4, 0, [0, 50, 100], [.1, .5, .7], "finished"),            # never
    ]
    recs = [make_record(batch_size=b, history=_rows(b, s, a), seed=seed, peak_lr=lr, status=st,
                        replica_index=seed) for b, lr, seed, s, a, st in spec]
    write_records(tmp_path, recs)
    return load_history(tmp_path)


def test_trials_first_eval_step_meeting_goal(history):
    t = trials(history, Goal.accuracy(0.9)).set_index(["batch_size", "peak_lr", "seed"])
    assert t.loc[(32, 0.1, 0), "steps"] == 300 and t.loc[(32, 0.1, 1), "steps"] == 200
    assert np.isnan(t.loc[(32, 0.2, 0), "steps"]) and t.loc[(32, 0.2, 1), "steps"] == 100
    assert t.loc[(64, 0.2, 0), "examples"] == 150 * 64


def test_steps_to_result_min_over_all_trials(history):
    table = steps_to_result(history, Goal.accuracy(0.9)).set_index("batch_size")
    b32, b64, b128 = table.loc[32], table.loc[64], table.loc[128]
    assert (b32["steps"], b32["best_lr"], b32["n_trials"], b32["n_reached"]) == (100, 0.2, 4, 3)
    # seeds at the best setting (lr 0.2): only seed 1 reached
    assert (b32["n_seeds"], b32["n_seeds_reached"], b32["mean_steps"]) == (2, 1, 100)
    assert (b64["steps"], b64["best_lr"], b64["mean_steps"]) == (150, 0.2, 200)
    assert b64["std_steps"] == pytest.approx(math.sqrt(2) * 50)
    assert np.isnan(b128["steps"]) and b128["n_reached"] == 0 and b128["n_trials"] == 1


def test_goal_as_error_is_the_same_goal(history):
    by_acc = steps_to_result(history, Goal.accuracy(0.9))
    by_err = steps_to_result(history, Goal.error(0.1))
    pd.testing.assert_frame_equal(by_acc, by_err)
    assert str(Goal.error(0.1)) == "test_error <= 0.1"


def test_goal_on_missing_metric_is_a_clear_error(history):
    with pytest.raises(KeyError, match="no column 'train_perplexity'"):
        Goal(3.0, "train_perplexity", False).reached(history)


def _table(bs, steps):
    return pd.DataFrame({"batch_size": bs, "steps": np.asarray(steps, float)})


def test_mccandlish_fit_recovers_known_curve():
    bs = [16, 32, 64, 128, 256, 512, 1024]
    fit = fit_mccandlish(_table(bs, [200 * (1 + 256 / b) for b in bs]))
    assert fit["s_min"] == pytest.approx(200) and fit["b_crit"] == pytest.approx(256)
    assert fit_mccandlish(_table(bs, [1000 * 16 / b for b in bs]))["b_crit"] == math.inf
    assert fit_mccandlish(_table(bs, [300] * 7))["b_crit"] == 0.0
    assert math.isnan(fit_mccandlish(_table([16], [10]))["b_crit"])


def test_regimes_and_perfect_scaling_range():
    t = _table([16, 32, 64, 128, 256, 512], [1600, 800, 420, 300, 290, 289])
    assert perfect_scaling_max_b(t, tol=0.2) == 64
    assert perfect_scaling_max_b(t, tol=0.01) == 32
    r = regimes(t, tol=0.2, flat=0.1)
    assert list(r["regime"]) == ["perfect scaling"] * 3 + ["diminishing returns"] + ["maximal data parallelism"] * 2
    assert r["scaling_efficiency"].iloc[1] == pytest.approx(1.0)
    assert r["excess_over_perfect"].iloc[3] == pytest.approx(300 * 128 / (1600 * 16))


def test_unreached_batch_sizes_are_left_out_of_the_regimes():
    t = _table([16, 32, 64], [800, np.nan, 200])
    assert list(regimes(t)["batch_size"]) == [16, 64]
    assert math.isnan(perfect_scaling_max_b(_table([16], [np.nan])))
