"""Shallue et al. 2019 on a language model (their LM1B transformer workload, here a byte-level
transformer): the steps-to-result regimes to the preset's target test loss (the rule of
``shallue``), and no degradation of the tuned final test loss at the largest B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import best_lr_curves, best_per_batch, lr_table
from analysis.figures import steps_to_result_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders, Preset
from analysis.findings.shallue import regimes_verdict
from analysis.plotting import NoData, new_figure, no_data
from analysis.report_format import fmt
from analysis.steps_to_result import Goal
from analysis.verdicts import ABSENCE, Verdict, directional_verdict, seeds_of

LOSS = "test_loss"


def shallue_lm_verdicts(history: pd.DataFrame, runs: pd.DataFrame, *, target_loss: float,
                        tol: float = 0.2, k: float = 1.0, min_seeds: int = 2) -> list[Verdict]:
    """Regimes of steps-to-result to ``test_loss <= target_loss`` (as ``shallue``), and no
    degradation of the tuned final test loss at the largest B."""
    goal = Goal(float(target_loss), LOSS, higher_is_better=False)
    first = regimes_verdict(history, runs, goal=goal, tol=tol, finding="shallue_lm")
    best = best_per_batch(lr_table(runs.assign(name=runs.get("name", "all")) if "name" not in runs else runs))
    best = best[np.isfinite(best["mean"].astype(float))].sort_values("batch_size")
    if len(best) < 2:
        return [first, Verdict("shallue_lm", "no loss degradation at large B when tuned", "inconclusive", "",
                               seeds_of(runs), details="needs >= 2 batch sizes")]
    lo, hi = best.iloc[0], best.iloc[-1]
    noise = max(float(lo["std"]), float(hi["std"]))
    verdict = ABSENCE[directional_verdict(float(hi["mean"]) - float(lo["mean"]), noise, int(lo["n"]),
                                          int(hi["n"]), k=k, min_seeds=min_seeds)]
    return [first, Verdict(
        "shallue_lm", f"no final test-loss degradation at B={hi['batch_size']:g} vs B={lo['batch_size']:g} "
                      "when tuned per B", verdict,
        f"a loss increase larger than {k:g} x the larger seed std counts as degradation", seeds_of(runs),
        {"sb": lo["batch_size"], "lb": hi["batch_size"], "sb_loss": lo["mean"], "lb_loss": hi["mean"],
         "lb_minus_sb": float(hi["mean"]) - float(lo["mean"]), "seed_noise": noise},
        "best LR per B by mean final test loss, at the preset's equal-token budget")]


def lm_loss_vs_tokens_figure(runs: pd.DataFrame, history: pd.DataFrame, *, target: float | None = None) -> Figure:
    """Test loss vs tokens (left) and vs steps (right) of each B's best LR (seed means)."""
    r = runs.assign(name=runs["name"].fillna("all")) if "name" in runs else runs.assign(name="all")
    h = history.assign(name=history["name"].fillna("all")) if "name" in history else history.assign(name="all")
    best = best_per_batch(lr_table(r))
    if best.empty or h.empty:
        raise NoData("loss vs tokens: no runs")
    fig, (ax, ax2) = new_figure(ncols=2, width=4.6, height=3.8)
    for name in best["name"].unique():
        by_step = best_lr_curves(h, best, name, "step")
        for j, (b, curve) in enumerate(sorted(best_lr_curves(h, best, name).items())):
            ax.plot(curve.index, curve.to_numpy(float), "-", color=f"C{j}", label=f"B = {b:g}")
            ax2.plot(by_step[b].index, by_step[b].to_numpy(float), "-", color=f"C{j}")
    for a, xl in ((ax, "tokens"), (ax2, "steps")):
        a.set_xscale("log")
        a.set_xlabel(xl)
        if target is not None:
            a.axhline(target, color="0.4", ls="--", lw=0.8)
    ax.set_ylabel("test loss (nats / token)")
    ax.legend(fontsize=7)
    return fig


class ShallueLM(Finding):
    name = "shallue_lm"
    title = "Shallue et al. 2019 (LM1B transformer): steps-to-result regimes on a language model"
    sources = ("shallue2019", "mccandlish2018")
    offline = (Arm("shallue_lm_offline"),)
    paper = (Arm("shallue_lm1b"),)
    one_paper_report = True

    def options(self, presets: Sequence[Preset]) -> dict[str, Any]:
        """The goal is the preset's ``target.test_loss``."""
        opts = super().options(presets)
        for preset in presets:
            opts["target_loss"] = preset.config.target.test_loss
        return opts

    def verdicts(self, runs, history, *, target_loss=None, tol=0.2, k=1.0, **_):
        if target_loss is None:
            return [Verdict("shallue_lm", "steps-to-result regimes", "inconclusive", "", (),
                            details="no target test loss (target.test_loss of the preset)")]
        return shallue_lm_verdicts(history, runs, target_loss=target_loss, tol=tol, k=k)

    def figures(self, runs, history, out, *, target_loss=None, **_) -> FigureBuilders:
        goal = Goal(float(target_loss), LOSS, higher_is_better=False) if target_loss is not None else None
        return {"steps_to_result": lambda: steps_to_result_figure(history, runs, goal=goal)
                if goal else no_data("no target loss"),
                "lm_loss_vs_tokens": lambda: lm_loss_vs_tokens_figure(runs, history, target=target_loss)}

    def comparison(self, verdicts, bl):
        n = verdicts[0].numbers if verdicts else {}
        return [Comparison("perfect scaling up to B", fmt(n.get("perfect_scaling_up_to")),
                           "perfect scaling, then diminishing returns, then maximal data parallelism "
                           "(every workload, LM1B transformers included)", "shallue2019 (claim)",
                           ("shallue2019/claim/regimes",)),
                Comparison("B_crit (McCandlish fit)", fmt(n.get("b_crit_fit")), "S = S_min (1 + B_crit / B)",
                           "mccandlish2018 (definition)", ("mccandlish2018/definition/tradeoff",))]


FINDING = ShallueLM()
