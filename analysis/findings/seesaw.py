"""Meterez et al. 2025 (Seesaw, arXiv:2510.14717): replacing each halving of the LR by an LR
cut of 1/sqrt(2) and a doubling of the batch keeps the loss at equal tokens, in fewer steps.

The paper (abstract): "whenever a standard scheduler would halve the learning rate, Seesaw
instead multiplies it by 1/sqrt(2) and doubles the batch size, preserving loss dynamics while
reducing serial steps [...] on 150M/300M/600M-parameter models trained at Chinchilla scale using
a constant (critical) batch size, Seesaw matches cosine decay at equal FLOPs while reducing
wall-clock time by ~36%". Protocol (Figure 1's caption): "Runs are swept over learning rates
and plotted at the best learning rate for cosine annealing in terms of validation loss, at each
batch size." The rule is ``batch_schedule=seesaw`` (bench.rules.batch_schedules).

Arms: ``cosine`` (the constant-B baseline) and ``seesaw`` (the same preset with Seesaw), at
equal tokens over one LR grid. The verdict compares Seesaw at the cosine arm's best LR (the
paper's protocol); Seesaw at its own best LR is reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import arm_curve, best_lr_rows, finished, lr_table
from analysis.findings._schedules import schedule_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.plotting import NoData, arm_label
from analysis.report_format import fmt
from analysis.verdicts import Verdict, match_tolerance, noise, seeds_of

CLAIM = "Seesaw matches the cosine baseline's loss at equal tokens in fewer steps"


def _row_at(runs: pd.DataFrame, arm: str, base_lr: float) -> dict | None:
    """The ``lr_table`` row of ``arm`` at ``base_lr`` plus its step count (None if absent)."""
    f = runs[runs["name"] == arm]
    t = lr_table(f)
    t = t[np.isclose(t["base_lr"].astype(float), float(base_lr))] if len(t) else t
    if t.empty:
        return None
    r = t.iloc[0].to_dict()
    steps = f.loc[np.isclose(f["base_lr"].astype(float), float(base_lr)), "total_steps"]
    r["steps"] = float(steps.iloc[0]) if len(steps) else math.nan
    return r


def seesaw_verdicts(runs: pd.DataFrame, history: pd.DataFrame, *, cosine: str, seesaw: str,
                    k: float = 1.0, min_tol: float = 0.01, min_seeds: int = 2) -> list[Verdict]:
    """Seesaw vs the cosine baseline at equal tokens: reproduced when, at the cosine arm's best
    LR, Seesaw's seed-mean final test loss is within ``max(k x the larger seed std, min_tol)``
    nats of the baseline's (or lower) and it takes fewer steps. Also in the numbers: Seesaw at
    its own best LR, and the steps saved."""
    arms = [cosine, seesaw]
    seeds = seeds_of(finished(runs[runs["name"].isin(arms)])) if "name" in runs else ()
    best = {r["name"]: r for r in best_lr_rows(runs, arms).to_dict("records")}
    if cosine not in best or seesaw not in best:
        return [Verdict("seesaw", CLAIM, "inconclusive", "", seeds,
                        details=f"needs finished runs of {cosine!r} and {seesaw!r}")]
    c = best[cosine]
    s = _row_at(runs, seesaw, c["base_lr"])
    if s is None or not math.isfinite(float(s["mean"])):
        return [Verdict("seesaw", CLAIM, "inconclusive", "", seeds,
                        details=f"no finished {seesaw!r} runs at the cosine arm's best LR {c['base_lr']:g}")]
    tol = match_tolerance(noise(c, s), k, min_tol)
    diff = float(s["mean"]) - float(c["mean"])            # > 0: Seesaw is worse
    saved = 1 - float(s["steps"]) / float(c["steps"])
    own = best[seesaw]
    verdict = ("inconclusive" if min(int(c["n"]), int(s["n"])) < min_seeds
               else "reproduced" if diff <= tol and saved > 0 else "not reproduced")
    table = pd.DataFrame([{**c, "arm": cosine, "lr_rule": "own best"},
                          {**s, "arm": seesaw, "lr_rule": "cosine's best"},
                          {**own, "arm": seesaw, "lr_rule": "own best"}])
    return [Verdict(
        "seesaw", f"{CLAIM} (at the cosine arm's best LR)", verdict,
        f"loss within max({k:g} x the larger seed std, {min_tol:g}) nats of the cosine arm (or lower), "
        "and fewer steps", seeds,
        {"seesaw_loss": s["mean"], "cosine_loss": c["mean"], "seesaw_minus_cosine": diff, "tolerance": tol,
         "base_lr": c["base_lr"], "seesaw_steps": s["steps"], "cosine_steps": c["steps"],
         "steps_saved": saved, "seesaw_best_lr": own["base_lr"], "seesaw_best_loss": own["mean"],
         "seesaw_best_minus_cosine": float(own["mean"]) - float(c["mean"]),
         "cosine_lr_at_grid_edge": bool(c["base_lr"] == runs.loc[runs["name"] == cosine, "base_lr"].max()
                                        or c["base_lr"] == runs.loc[runs["name"] == cosine, "base_lr"].min())},
        table=table)]


def seesaw_figure(runs: pd.DataFrame, history: pd.DataFrame, cosine: str, seesaw: str) -> Figure:
    """Both arms at the cosine arm's best LR (the paper's protocol): seed-mean test loss (band:
    the seeds' range) vs steps and vs tokens, and the batch size vs tokens."""
    best = best_lr_rows(runs, [cosine])
    if best.empty:
        raise NoData("seesaw: no cosine runs")
    lr = float(best["base_lr"].iloc[0])
    curves = [(f"{arm_label(arm)} ({int(g['step'].max()) if len(g) else 0} steps)", g)
              for arm in (cosine, seesaw) for g in [arm_curve(history, arm, lr)]]
    if all(g.empty for _, g in curves):
        raise NoData("seesaw: no history at the cosine arm's best LR")
    return schedule_figure(curves, f"Seesaw vs cosine at equal tokens (the cosine arm's best LR, {lr:.2g})",
                           seed_band=True)


class Seesaw(Finding):
    name = "seesaw"
    title = "Meterez et al. 2025: Seesaw matches cosine decay at equal tokens in fewer steps"
    sources = ("meterez2025",)
    offline = (Arm("seesaw_offline_cosine", "cosine"), Arm("seesaw_offline", "seesaw"))
    paper = (Arm("seesaw_150m_cosine", "cosine"), Arm("seesaw_150m", "seesaw"))
    one_paper_report = True

    def verdicts(self, runs, history, *, cosine="", seesaw="", k=1.0, **_):
        return seesaw_verdicts(runs, history, cosine=cosine, seesaw=seesaw, k=k)

    def figures(self, runs, history, out, *, cosine="", seesaw="", **_) -> FigureBuilders:
        return {"seesaw_loss_vs_tokens_and_steps": lambda: seesaw_figure(runs, history, cosine, seesaw)}

    def comparison(self, verdicts, bl):
        return [Comparison(
            "serial steps saved at matched loss (equal tokens)",
            f"{v.numbers['steps_saved']:.0%} ({v.numbers['seesaw_steps']:.0f} vs "
            f"{v.numbers['cosine_steps']:.0f} steps); loss {fmt(v.numbers['seesaw_loss'])} vs "
            f"{fmt(v.numbers['cosine_loss'])}",
            "matches cosine at equal FLOPs with ~36% less wall-clock time (150M-600M, Chinchilla scale)",
            "meterez2025 (abstract)", ("meterez2025/",))
            for v in verdicts if "steps_saved" in v.numbers]


FINDING = Seesaw()
