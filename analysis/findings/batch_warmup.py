"""Merrill et al. 2025: batch-size warmup (a ramp from a small to a large batch) reaches the
small-batch control's loss with fewer steps, and a better loss than the large-batch control.

Arms: ``small`` and ``large`` (constant batch sizes) and the ramps (``ramps``: one or more
batch-size schedules), compared at equal tokens, each at its best LR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import arm_curve, best_lr_rows, finished
from analysis.findings._schedules import schedule_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.plotting import NoData, arm_label
from analysis.report_format import fmt
from analysis.verdicts import Verdict, directional_verdict, match_tolerance, noise, seeds_of

LOSS = "test_loss"


def warmup_table(runs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per arm (in ``arms`` order): its best LR by mean final test loss, that loss (mean, std,
    n over seeds) and the steps the arm takes (``steps``)."""
    return best_lr_rows(runs, arms, LOSS)


def warmup_verdicts(runs: pd.DataFrame, history: pd.DataFrame, *, small: str, large: str,
                    ramps: Sequence[str], k: float = 1.0, min_tol: float = 0.01,
                    min_seeds: int = 2) -> list[Verdict]:
    """Each ramp arm vs the constant small-batch control (``small``) and the constant
    large-batch control (``large``), at equal tokens, best LR per arm.

    Claim 1 (per ramp): final loss within ``max(k x seed noise, min_tol)`` of the small control
    or better, with fewer steps. Claim 2: final loss below the large control by more than k x
    the seed noise. Also reported: steps saved at equal tokens and at equal loss (the step at
    which the small control's best-LR runs, averaged over seeds, first reach the ramp's loss)."""
    t = warmup_table(runs, [small, large, *ramps])
    seeds = seeds_of(finished(runs[runs["name"].isin([small, large, *ramps])])) if "name" in runs else ()
    get = {r["name"]: r for r in t.to_dict("records")}
    out = []
    if small not in get or large not in get:
        return [Verdict("batch_warmup", "batch-size warmup saves steps at equal loss", "inconclusive", "",
                        seeds, details=f"needs finished runs of {small!r} and {large!r}")]
    for ramp in ramps:
        if ramp not in get or not math.isfinite(float(get[ramp]["mean"])):
            out.append(Verdict("batch_warmup", f"{ramp}: saves steps at the small-batch loss", "inconclusive",
                               "", seeds, details=f"no finished runs of {ramp!r}"))
            continue
        out += _ramp_verdicts(history, ramp, get[ramp], get[small], get[large], small, seeds,
                              k=k, min_tol=min_tol, min_seeds=min_seeds)
    if out:
        out[0].table = t
    return out


def _ramp_verdicts(history: pd.DataFrame, ramp: str, r: dict, s: dict, l_: dict, small: str,
                   seeds: tuple[int, ...], *, k: float, min_tol: float, min_seeds: int) -> list[Verdict]:
    """A ramp (``r``) vs the small (``s``) and the large (``l_``) control (``warmup_table`` rows)."""
    noise_s = noise(s, r)
    tol = match_tolerance(noise_s, k, min_tol)
    diff = float(r["mean"]) - float(s["mean"])            # > 0: the ramp is worse
    saved = 1 - float(r["steps"]) / float(s["steps"])
    at_loss = _steps_to_loss(history, small, s["base_lr"], float(r["mean"]))
    ok = diff <= tol and saved > 0
    noise_l = noise(l_, r)
    return [Verdict(
        "batch_warmup", f"{ramp}: final loss no worse than the small-batch control with fewer steps",
        "inconclusive" if min(int(s["n"]), int(r["n"])) < min_seeds else ("reproduced" if ok else "not reproduced"),
        f"loss within max({k:g} x the larger seed std, {min_tol:g}) nats of the small-batch control "
        "(or lower), and fewer steps", seeds,
        {"ramp_loss": r["mean"], "small_loss": s["mean"], "ramp_minus_small": diff, "tolerance": tol,
         "ramp_steps": r["steps"], "small_steps": s["steps"], "steps_saved_equal_tokens": saved,
         "small_steps_to_ramp_loss": at_loss,
         "steps_saved_equal_loss": (1 - float(r["steps"]) / at_loss) if math.isfinite(at_loss) else math.nan}),
        Verdict(
        "batch_warmup", f"{ramp}: final loss below the large-batch control",
        directional_verdict(float(l_["mean"]) - float(r["mean"]), noise_l, int(l_["n"]), int(r["n"]),
                            k=k, min_seeds=min_seeds),
        f"difference must exceed {k:g} x the larger seed std", seeds,
        {"ramp_loss": r["mean"], "large_loss": l_["mean"], "large_minus_ramp": float(l_["mean"]) - float(r["mean"]),
         "seed_noise": noise_l, "ramp_steps": r["steps"], "large_steps": l_["steps"]})]


def _steps_to_loss(history: pd.DataFrame, arm: str, base_lr: float, loss: float) -> float:
    """First eval step at which the seed-mean test loss of ``arm`` at ``base_lr`` is <= loss
    (inf if never)."""
    if history.empty or "name" not in history:
        return math.nan
    curve = arm_curve(history, arm, base_lr, LOSS)
    if curve.empty:
        return math.nan
    hit = curve[curve["loss"] <= loss]
    return float(hit["step"].iloc[0]) if len(hit) else math.inf


def warmup_figure(runs: pd.DataFrame, history: pd.DataFrame, arms: Sequence[str]) -> Figure:
    """Per arm (best LR): test loss vs steps, vs tokens, and the batch size vs tokens."""
    table = best_lr_rows(runs, arms, LOSS)
    if table.empty:
        raise NoData("warmup: no runs")
    curves = []
    for r in table.to_dict("records"):
        g = arm_curve(history, r["name"], r["base_lr"], LOSS)
        label = f"{arm_label(r['name'])} (lr {float(r['base_lr']):.2g}, {int(g['step'].max()) if len(g) else 0} steps)"
        curves.append((label, g))
    return schedule_figure(curves, "Batch-size warmup vs constant small / large batches (equal tokens, best LR per arm)")


class BatchWarmup(Finding):
    name = "batch_warmup"
    title = "Merrill et al. 2025: batch-size warmup saves steps at equal loss"
    sources = ("merrill2025", "malladi2022")
    offline = (Arm("warmup_offline_small", "small"), Arm("warmup_offline_large", "large"),
               Arm("warmup_offline_merrill", "ramps"), Arm("warmup_offline_ramp", "ramps"))
    paper = (Arm("merrill_small", "small"), Arm("merrill_large", "large"), Arm("merrill_warmup", "ramps"))
    list_roles = ("ramps",)
    one_paper_report = True

    def verdicts(self, runs, history, *, small="", large="", ramps=(), k=1.0, **_):
        return warmup_verdicts(runs, history, small=small, large=large, ramps=ramps, k=k)

    def figures(self, runs, history, out, *, small=None, large=None, ramps=None, **_) -> FigureBuilders:
        arms = [a for a in (small, large, *(ramps or ())) if a]
        return {"warmup_loss_vs_steps": lambda: warmup_figure(runs, history, arms)}

    def published_tables(self, bl):
        r = bl[(bl["source"] == "merrill2025") & (bl["kind"] == "result")]
        if r.empty:
            return []
        tab = pd.DataFrame({"arm": r["setting_arm"], "metric": r["metric"], "stage": r.get("setting_stage"),
                            "value": r["value"], "units": r["units"], "confidence": r["confidence"]})
        lines = ["Merrill et al. Table 1 (OLMo 1B; confidence as marked):", "",
                 "| arm | metric | stage | value | units | confidence |", "|---|---|---|---|---|---|"]
        lines += [f"| {a} | {m} | {s if isinstance(s, str) else '—'} | {v:g} | {u} | {c} |"
                  for a, m, s, v, u, c in tab.itertuples(index=False)]
        return [*lines, ""]

    def comparison(self, verdicts, bl):
        table1 = {k: _table1(bl, k) for k in ("steps_saved/warmup", "mt_loss/warmup", "mt_loss/small")}
        published = (f"{table1['steps_saved/warmup']:g}% fewer steps, slightly better loss "
                     f"({table1['mt_loss/warmup']:g} vs {table1['mt_loss/small']:g} after mid-training)")
        return [Comparison(
            f"{v.claim.split(':')[0]}: steps saved vs small control (equal tokens / equal loss)",
            f"{v.numbers['steps_saved_equal_tokens']:.0%} / {fmt(v.numbers['steps_saved_equal_loss'], 2)}; "
            f"loss {fmt(v.numbers['ramp_loss'])} vs {fmt(v.numbers['small_loss'])}",
            published, "merrill2025 (abstract; Table 1)",
            ("merrill2025/claim/batch_warmup", *(f"merrill2025/table1/{k}" for k in table1)))
            for v in verdicts if "steps_saved_equal_tokens" in v.numbers]


def _table1(bl: pd.DataFrame, key: str) -> float:
    """Merrill et al.'s Table 1 entry ``key`` (NaN when published.yaml lacks it)."""
    value = bl.loc[bl["id"] == f"merrill2025/table1/{key}", "value"]
    return float(value.iloc[0]) if len(value) else math.nan


FINDING = BatchWarmup()
