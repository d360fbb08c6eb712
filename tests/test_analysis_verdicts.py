"""Verdict logic on constructed records with known answers."""

from __future__ import annotations

import math

import pytest

from analysis.load import load_history, load_records
from analysis.steps_to_result import Goal
from record_factory import eval_rows, make_record, synthetic_sweep, write_records
from analysis.findings.goyal import goyal_verdict
from analysis.findings.keskar import keskar_verdicts
from analysis.findings.shallue import no_degradation_verdict, regimes_verdict
from analysis.stability import eos_table
from analysis.stability import eos_verdict as _eos_verdict
from analysis.verdicts import Verdict, directional_verdict


def eos_verdict(history, **kw):
    return _eos_verdict(history, finding="edge_of_stability", **kw)


def shallue_verdicts(history, runs, *, goal):
    return [regimes_verdict(history, runs, goal=goal), no_degradation_verdict(runs)]


def _final(test_acc: float) -> list[dict]:
    """Two eval rows ending at the given test accuracy."""
    rows = eval_rows([0, 100], batch_size=32, lr=0.1, test_final=test_acc, train_final=0.99, tau=1e-3)
    rows[-1]["test_accuracy"] = test_acc
    rows[-1]["gap_accuracy"] = rows[-1]["train_accuracy"] - test_acc
    return rows


def _runs(tmp_path, spec):
    """spec: (batch_size, seed, test_accuracy, hessian_top_eigenvalue or None[, scaling, peak_lr, status])."""
    recs = []
    for i, (b, seed, acc, sharp, *rest) in enumerate(spec):
        scaling, lr, status = (rest + ["linear", 0.1 * b / 32, "finished"][len(rest):])
        curv = {"hessian_top_eigenvalue": sharp} if sharp is not None else None
        recs.append(make_record(batch_size=b, history=_final(acc), seed=seed, scaling=scaling,
                                peak_lr=lr, curvature=curv, status=status, replica_index=i))
    write_records(tmp_path, recs)
    return load_records(tmp_path)


@pytest.mark.parametrize("diff, noise, n, expected", [
    (0.03, 0.002, 3, "reproduced"), (0.001, 0.002, 3, "not reproduced"),
    (-0.03, 0.002, 3, "reversed"), (0.03, 0.002, 1, "inconclusive"),
    (0.03, math.nan, 3, "inconclusive"), (0.0, 0.0, 2, "not reproduced"),
])
def test_directional_verdict(diff, noise, n, expected):
    assert directional_verdict(diff, noise, n, n) == expected


def test_verdict_rejects_unknown_labels():
    with pytest.raises(ValueError):
        Verdict("x", "claim", "partly", "", ())


def test_keskar_gap_present_is_reproduced(tmp_path):
    runs = _runs(tmp_path, [(32, s, a, h) for s, a, h in [(0, .95, 10), (1, .951, 11), (2, .949, 9)]]
                 + [(1024, s, a, h) for s, a, h in [(0, .92, 100), (1, .921, 110), (2, .919, 90)]])
    acc, sharp = keskar_verdicts(runs)
    assert acc.verdict == "reproduced" and acc.seeds == (0, 1, 2)
    assert acc.numbers["difference_sb_minus_lb"] == pytest.approx(0.03)
    assert acc.numbers["seed_noise"] == pytest.approx(0.001)
    assert (acc.numbers["sb"], acc.numbers["lb"]) == (32, 1024)
    assert sharp.verdict == "reproduced" and sharp.numbers["ratio_lb_over_sb"] == pytest.approx(10.0)
    assert "std" in acc.tolerance


def test_keskar_gap_within_seed_noise_is_not_reproduced(tmp_path):
    runs = _runs(tmp_path, [(32, 0, .95, None), (32, 1, .94, None), (32, 2, .96, None),
                            (1024, 0, .951, None), (1024, 1, .941, None), (1024, 2, .955, None)])
    (acc,) = keskar_verdicts(runs)
    assert acc.verdict == "not reproduced"
    assert abs(acc.numbers["difference_sb_minus_lb"]) < acc.numbers["seed_noise"]


def test_keskar_reversed_gap(tmp_path):
    runs = _runs(tmp_path, [(32, 0, .90, 50), (32, 1, .901, 50), (1024, 0, .95, 5), (1024, 1, .951, 5)])
    acc, sharp = keskar_verdicts(runs)
    assert acc.verdict == "reversed" and sharp.verdict == "reversed"


def test_keskar_one_seed_is_inconclusive_and_never_hidden(tmp_path):
    runs = _runs(tmp_path, [(32, 0, .95, None), (1024, 0, .90, None)])
    (acc,) = keskar_verdicts(runs)
    assert acc.verdict == "inconclusive" and acc.numbers["difference_sb_minus_lb"] == pytest.approx(0.05)


def test_keskar_uses_best_lr_per_batch_and_ignores_unfinished(tmp_path):
    spec = [(32, s, .95, None, "linear", 0.1) for s in (0, 1)]
    spec += [(1024, s, .80, None, "linear", 3.2) for s in (0, 1)]      # badly tuned LB
    spec += [(1024, s, .949, None, "linear", 1.6) for s in (0, 1)]     # well tuned LB
    spec += [(1024, 5, .10, None, "linear", 1.6, "diverged")]          # left out
    (acc,) = keskar_verdicts(_runs(tmp_path, spec))
    assert acc.numbers["lb_test_accuracy"] == pytest.approx(0.949) and acc.numbers["lb_n"] == 2
    assert acc.table.set_index("batch_size").loc[1024, "peak_lr"] == 1.6


def test_goyal_linear_scaling_holds_up_to_known_batch(tmp_path):
    accs = {32: .95, 64: .948, 128: .945, 256: .93, 512: .949}
    spec = [(b, s, a + 0.0005 * s, None) for b, a in accs.items() for s in (0, 1)]
    spec += [(b, s, .90, None, "none", 0.1) for b in accs for s in (0, 1)]
    v = goyal_verdict(_runs(tmp_path, spec), tolerance=0.01)
    assert v.numbers["holds_up_to_batch_size"] == 128  # 256 drops by 2 pp; 512 does not count
    assert v.numbers["required_batch_size"] == 512 and v.verdict == "not reproduced"
    assert set(v.table["scaling"]) == {"linear", "none"} and v.seeds == (0, 1)
    assert "1 percentage points" in v.tolerance


def test_goyal_reproduced_when_flat(tmp_path):
    spec = [(b, s, .95 - 0.001 * s, None) for b in (32, 64, 128) for s in (0, 1)]
    v = goyal_verdict(_runs(tmp_path, spec))
    assert v.verdict == "reproduced" and v.numbers["holds_up_to_factor"] == 4


def test_goyal_without_linear_runs_is_inconclusive(tmp_path):
    v = goyal_verdict(_runs(tmp_path, [(32, 0, .9, None, "sqrt", 0.1)]))
    assert v.verdict == "inconclusive"


def _sweep(tmp_path, **kw):
    synthetic_sweep(tmp_path, seeds=(0, 1), rules=("linear",), base_lrs=(0.1,), evals=20, **kw)
    return load_history(tmp_path), load_records(tmp_path)


def test_shallue_regimes_reproduced_on_mccandlish_curve(tmp_path):
    history, runs = _sweep(tmp_path, b_noise=256, accuracy_drop_per_doubling=0.0)
    regime, tuned = shallue_verdicts(history, runs, goal=Goal.accuracy(0.9))
    assert regime.verdict == "reproduced"
    assert regime.numbers["perfect_scaling_up_to"] == 64
    assert regime.numbers["b_crit_fit"] == pytest.approx(256, rel=0.02)
    assert regime.numbers["b_simple_median"] == pytest.approx(256, rel=0.05)
    assert tuned.verdict == "reproduced"  # no accuracy drop with B in this sweep


def test_shallue_no_perfect_scaling_and_degradation(tmp_path):
    history, runs = _sweep(tmp_path, b_noise=1, accuracy_drop_per_doubling=0.005)
    regime, tuned = shallue_verdicts(history, runs, goal=Goal.accuracy(0.9))
    assert regime.verdict == "not reproduced" and regime.numbers["perfect_scaling_up_to"] == 16
    assert tuned.verdict == "not reproduced"  # 3 pp drop from B=16 to 1024


def test_shallue_perfect_scaling_everywhere_is_inconclusive(tmp_path):
    history, runs = _sweep(tmp_path, b_noise=1e6)
    regime, _ = shallue_verdicts(history, runs, goal=Goal.accuracy(0.9))
    assert regime.verdict == "inconclusive" and "whole range" in regime.details


def _eos_runs(tmp_path, factor: float, full_batch: bool = True):
    recs = []
    for i, lr in enumerate((0.01, 0.02)):
        b = 4000 if full_batch else 100
        rows = eval_rows(range(0, 2000, 50), batch_size=b, lr=lr, test_final=.9, train_final=.99,
                         tau=300, sharpness_final=factor * 2 / lr, sharpness_tau=200)
        recs.append(make_record(batch_size=b, history=rows, seed=i, peak_lr=lr, num_train=4000,
                                replica_index=i))
    write_records(tmp_path, recs)
    return load_history(tmp_path)


def test_edge_of_stability_hovering_is_reproduced(tmp_path):
    v = eos_verdict(_eos_runs(tmp_path, 1.05))
    assert v.verdict == "reproduced" and v.numbers["fraction_hovering"] == 1.0
    assert v.numbers["median_ratio_after_reach"] == pytest.approx(1.05, abs=0.03)
    assert v.table["full_batch"].all() and "full-batch runs only" in v.details


def test_edge_of_stability_below_threshold_is_not_reproduced(tmp_path):
    v = eos_verdict(_eos_runs(tmp_path, 0.5, full_batch=False))
    assert v.verdict == "not reproduced" and "never reached" in v.details
    assert "no full-batch run" in v.details


def test_edge_of_stability_without_sharpness_is_inconclusive(tmp_path):
    write_records(tmp_path, [make_record(batch_size=32, history=_final(.9))])
    h = load_history(tmp_path)
    assert eos_verdict(h).verdict == "inconclusive" and eos_table(h).empty


def _rise_hover_decline(lr: float, steps=range(0, 3000, 25)):
    """Sharpness rises to 2/lr by step 300, hovers there while the train loss falls 2.3 -> 0.2,
    then (loss -> 0, as with cross-entropy) falls to 0.2 x 2/lr."""
    rows = eval_rows(steps, batch_size=4000, lr=lr, test_final=.9, train_final=1.0, tau=300)
    for row in rows:
        t = row["step"]
        row["train_loss"] = 2.3 * math.exp(-t / 400)
        ratio = min(t / 300, 1.0) if t < 1000 else max(0.2, 1.0 - (t - 1000) / 500)
        row["hessian_top_eigenvalue"], row["two_over_lr"] = ratio * 2 / lr, 2 / lr
    return rows


def test_edge_of_stability_window_excludes_the_late_cross_entropy_decline(tmp_path):
    write_records(tmp_path, [make_record(batch_size=4000, history=_rise_hover_decline(0.1),
                                         peak_lr=0.1, num_train=4000)])
    h = load_history(tmp_path)
    v = eos_verdict(h)
    assert v.verdict == "reproduced" and v.numbers["median_ratio_after_reach"] == pytest.approx(1.0)
    row = v.table.iloc[0]
    # reached at step 250 (ratio 0.83) with loss 2.3 e^-0.625 = 1.23; floor 0.123 -> t < 1175
    assert row["first_reach_step"] == 250 and row["window_end_step"] == 1150
    whole_tail = eos_verdict(h, loss_fraction=0.0)  # every row after the reach
    assert whole_tail.verdict == "not reproduced"
    assert whole_tail.numbers["median_ratio_after_reach"] < 0.5


def test_edge_of_stability_counts_only_runs_that_reach(tmp_path):
    never = eval_rows(range(0, 2000, 50), batch_size=4000, lr=0.01, test_final=.9, train_final=.99,
                      tau=300, sharpness_final=0.5 * 2 / 0.01, sharpness_tau=200)
    write_records(tmp_path, [
        make_record(batch_size=4000, history=_rise_hover_decline(0.1), peak_lr=0.1, num_train=4000,
                    replica_index=0),
        make_record(batch_size=4000, history=never, peak_lr=0.01, num_train=4000, seed=1,
                    replica_index=1)])
    v = eos_verdict(load_history(tmp_path))
    assert v.verdict == "reproduced"
    assert v.numbers["runs"] == 2 and v.numbers["runs_reaching"] == 1
    assert v.numbers["fraction_hovering"] == 1.0
    assert "1 of 2 runs never reached 2/lr (lr 0.01)" in v.details


def _with(rows, **columns):
    """The rows with extra per-row values: {key: f(row)}."""
    return [{**row, **{k: f(row) for k, f in columns.items()}} for row in rows]


def test_edge_of_stability_uses_the_optimizers_own_threshold(tmp_path):
    # heavy ball, beta = 0.9: sharpness hovers at (2 + 2 beta)/lr = 3.8/lr, 1.9x above 2/lr
    rows = _with(_rise_hover_decline(0.1), stability_threshold=lambda r: 3.8 / 0.1, lr=lambda r: 0.1,
                 hessian_top_eigenvalue=lambda r: r["hessian_top_eigenvalue"] * 1.9)
    write_records(tmp_path, [make_record(batch_size=4000, history=rows, peak_lr=0.1, num_train=4000)])
    v = eos_verdict(load_history(tmp_path))
    assert v.verdict == "reproduced" and v.numbers["median_ratio_after_reach"] == pytest.approx(1.0)
    assert v.claim == "sharpness rises to the optimizer's threshold ((2 + 2 β)/lr with momentum) and hovers there"


def test_adaptive_edge_of_stability_compares_preconditioned_sharpness_with_38_over_lr(tmp_path):
    lr = 0.01
    rows = _with(_rise_hover_decline(lr), preconditioned_stability_threshold=lambda r: 38 / lr,
                 preconditioned_top_eigenvalue=lambda r: r["hessian_top_eigenvalue"] / (2 / lr) * 38 / lr,
                 hessian_top_eigenvalue=lambda r: 123.0)  # lambda_max itself is not compared
    rows[0].pop("preconditioned_top_eigenvalue")  # step 0: no Adam step yet, so no P
    write_records(tmp_path, [make_record(batch_size=4000, history=rows, peak_lr=lr, num_train=4000)])
    h = load_history(tmp_path)
    v = eos_verdict(h)
    assert v.verdict == "reproduced" and v.numbers["median_ratio_after_reach"] == pytest.approx(1.0)
    assert v.claim == "preconditioned sharpness λ_max(P^-1 H) rises to (2 + 2 β1)/((1 − β1) lr) and hovers there"
    assert eos_table(h)["rows"].iloc[0] == len(rows) - 1  # the row without P is left out, not compared with 2/lr


def test_edge_of_stability_judges_each_arm_alone(tmp_path):
    above = _with(_rise_hover_decline(0.1), hessian_top_eigenvalue=lambda r: r["hessian_top_eigenvalue"] * 1.4)
    recs = [make_record(batch_size=4000, history=rows, peak_lr=0.1, num_train=4000, replica_index=i)
            for i, rows in enumerate((_rise_hover_decline(0.1), above))]
    for rec, name in zip(recs, ("tanh_mse", "relu_ce")):
        rec["config"]["name"] = name  # the preset's name labels its arm
    write_records(tmp_path, recs)
    h = load_history(tmp_path)
    assert eos_verdict(h, arm="tanh_mse").verdict == "reproduced"
    above_v = eos_verdict(h, arm="relu_ce")
    assert above_v.verdict == "not reproduced" and above_v.claim.endswith("(relu_ce)")
    assert above_v.numbers["median_ratio_after_reach"] == pytest.approx(1.4)
