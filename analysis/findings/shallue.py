"""Shallue et al. 2019: steps-to-result regimes (with McCandlish et al. 2018).

Verdicts: the regimes of steps-to-result (``analysis.steps_to_result``) to the preset's target
test accuracy, with the measured B_crit beside B_simple; and no test-accuracy degradation at
large B when the LR is tuned per B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import best_setting_per_batch, finished, has_metric, metric, seed_stats
from analysis.figures import accuracy_gap_figure, steps_to_result_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders, Preset
from analysis.plotting import no_data
from analysis.report_format import fmt, pct
from analysis.steps_to_result import (Goal, fit_mccandlish, perfect_scaling_max_b, regimes,
                                      resolve_goal, steps_to_result)
from analysis.verdicts import ABSENCE, Verdict, directional_verdict, sb_lb, seeds_of, side

NO_GOAL = ("no goal: pass --target-accuracy/--goal-error or record "
           "convergence.target_test_accuracy")


def regimes_verdict(history: pd.DataFrame, runs: pd.DataFrame, *, goal: Goal, tol: float = 0.2,
                    flat: float = 0.1, min_points: int = 3, finding: str = "shallue") -> Verdict:
    """The regimes of steps-to-result to ``goal``: perfect scaling, then diminishing returns
    (then maximal data parallelism), with the McCandlish fit and B_simple beside."""
    tol_text = (f"perfect scaling: steps within {1 + tol:g} x S(B0) B0 / B; maximal data "
                f"parallelism: local scaling efficiency < {flat:g}; goal {goal}")
    table = steps_to_result(history, goal) if not history.empty else pd.DataFrame(
        columns=["batch_size", "steps"])
    reg = regimes(table, tol, flat) if len(table) else table
    fit = fit_mccandlish(table) if len(table) else {"b_crit": math.nan, "s_min": math.nan}
    b_perf = perfect_scaling_max_b(table, tol) if len(table) else math.nan
    maximal = reg.loc[reg["regime"] == "maximal data parallelism", "batch_size"] if len(reg) else []
    numbers = {"perfect_scaling_up_to": b_perf, "b_crit_fit": float(fit["b_crit"]),
               "s_min_fit": float(fit["s_min"]),
               "maximal_data_parallelism_from": float(min(maximal)) if len(maximal) else math.nan,
               "batch_sizes_reaching_goal": len(reg), "batch_sizes_tried": len(table)}
    if has_metric(runs, "noise_scale_simple"):
        numbers["b_simple_median"] = float(metric(runs, "noise_scale_simple").median())
    if len(reg) < min_points:
        verdict, details = "inconclusive", f"only {len(reg)} batch sizes reached the goal (need {min_points})"
    else:
        s = reg["steps"].to_numpy(float)
        if s[-1] > s[0] * (1 + tol):
            verdict, details = "reversed", "the largest batch size needs more steps than the smallest"
        elif b_perf <= reg["batch_size"].iloc[0]:
            verdict, details = "not reproduced", "no perfect-scaling region: the first increase of B already falls short"
        elif b_perf >= reg["batch_size"].iloc[-1]:
            verdict, details = "inconclusive", ("perfect scaling over the whole range: the sweep "
                                                "does not reach the critical batch size")
        else:
            verdict, details = "reproduced", "perfect scaling, then " + " then ".join(
                dict.fromkeys(r for r in reg["regime"] if r != "perfect scaling"))
    return Verdict(finding, "steps-to-result shows perfect scaling, then diminishing returns "
                   "(then maximal data parallelism)", verdict, tol_text, seeds_of(history),
                   numbers, details, reg if len(reg) else table)


def no_degradation_verdict(runs: pd.DataFrame, *, k: float = 1.0, min_seeds: int = 2) -> Verdict:
    """No test-accuracy degradation at the largest B vs the smallest, each tuned per B."""
    f = finished(runs)
    if f.empty or not has_metric(f, "test_accuracy") or f["batch_size"].nunique() < 2:
        return Verdict("shallue", "no test-accuracy degradation at large B when tuned",
                       "inconclusive", "", seeds_of(f), details="needs finished runs at >= 2 batch sizes")
    sel = best_setting_per_batch(f)
    sb, lb = sb_lb(sel, None, None)
    acc = seed_stats(sel, ["batch_size"], metric(sel, "test_accuracy"))
    (ms, ss, ns), (ml, sl, nl) = side(acc, sb), side(acc, lb)
    noise = max(ss, sl) if ns >= 2 and nl >= 2 else math.nan
    verdict = ABSENCE[directional_verdict(ms - ml, noise, ns, nl, k=k, min_seeds=min_seeds)]
    return Verdict(
        "shallue", f"no test-accuracy degradation at B={lb:g} vs B={sb:g} when tuned per B", verdict,
        f"a drop larger than {k:g} x the larger seed std counts as degradation", seeds_of(sel),
        {"sb": sb, "lb": lb, "sb_test_accuracy": ms, "sb_std": ss, "lb_test_accuracy": ml,
         "lb_std": sl, "difference_sb_minus_lb": ms - ml, "seed_noise": noise},
        "best setting per B by mean final test accuracy (not at a fixed budget of steps)")


class Shallue(Finding):
    name = "shallue"
    title = "Shallue et al. 2019: steps-to-result regimes (with McCandlish et al. 2018)"
    sources = ("shallue2019", "mccandlish2018")
    offline = (Arm("shallue_offline"),)
    paper = (Arm("shallue_steps_to_result"),)

    def options(self, presets: Sequence[Preset]) -> dict[str, Any]:
        """The goal is the preset's ``target.test_accuracy``."""
        return {**super().options(presets), "target_accuracy": presets[0].config.target.test_accuracy}

    def verdicts(self, runs, history, *, target_accuracy=None, goal_error=None, tol=0.2, k=1.0, **_):
        goal = resolve_goal(runs, target_accuracy, goal_error)
        if goal is None:
            return [Verdict("shallue", "steps-to-result regimes", "inconclusive", "", (), details=NO_GOAL)]
        return [regimes_verdict(history, runs, goal=goal, tol=tol), no_degradation_verdict(runs, k=k)]

    def figures(self, runs, history, out, *, target_accuracy=None, goal_error=None, **_) -> FigureBuilders:
        goal = resolve_goal(runs, target_accuracy, goal_error)
        return {"steps_to_result": lambda: steps_to_result_figure(history, runs, goal=goal)
                if goal else no_data("steps-to-result: " + NO_GOAL),
                "accuracy_gap_vs_batch": lambda: accuracy_gap_figure(runs)}

    def comparison(self, verdicts, bl):
        n = verdicts[0].numbers
        rows = [Comparison("perfect scaling up to B", fmt(n.get("perfect_scaling_up_to")),
                           "a perfect-scaling regime exists, then diminishing returns", "shallue2019 (claim)",
                           ("shallue2019/claim/regimes",)),
                Comparison("critical batch size: measured B_crit (fit) vs B_simple",
                           f"{fmt(n.get('b_crit_fit'))} vs {fmt(n.get('b_simple_median', math.nan))}",
                           "S = S_min(1 + B_crit/B); B_simple = tr(Σ)/|G|²", "mccandlish2018 (definitions)",
                           ("mccandlish2018/definition/tradeoff", "mccandlish2018/definition/b_simple"))]
        if len(verdicts) > 1 and verdicts[1].numbers:
            m = verdicts[1].numbers
            rows.append(Comparison("tuned test accuracy SB − LB (pp)",
                                   f"{pct(m['difference_sb_minus_lb'])} (seed noise {pct(m['seed_noise'])})",
                                   "no evidence of degradation when tuned", "shallue2019 (claim)",
                                   ("shallue2019/claim/no_degradation",)))
        return rows


FINDING = Shallue()
