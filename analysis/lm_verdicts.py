"""Verdicts on the language-model batch-size findings: pure functions of the run / history tables.

Conventions (as ``analysis.verdicts``): losses are test losses in nats per token (lower is
better); statistics over seeds are mean and sample std (ddof=1); a difference "exceeds the
seed noise" when it is larger than ``k`` x the larger seed std of the two sides; every verdict
states its tolerance and the seeds it used. An *arm* is one preset of a finding (the run
table's ``name`` column: the preset's ``name``).

* marek (Marek et al. 2025): per arm and batch size the best base LR by mean final test loss
  (``lr_table``); small batches with the beta2 half-life held fixed match or beat larger ones
  at equal tokens; beta2 fixed at its large-batch value hurts the smallest batch and moves its
  best LR down; small batches are less sensitive to the LR; plain SGD is competitive at the
  smallest batch and its gap to Adam grows with B.
* zhang_cbs (Zhang et al. 2024): in ``analysis.critical_batch``.
* shallue_lm: the regimes of steps-to-result on a target test loss (``analysis.verdicts``), and
  no final-loss degradation at the largest B when tuned per B.
* batch_warmup (Merrill et al. 2025): a batch-size ramp reaches the small-batch control's final
  loss with fewer steps, and a better loss than the large-batch control.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import finished, metric
from analysis.steps_to_result import Goal
from analysis.verdicts import Verdict, directional_verdict, shallue_verdicts

LOSS = "test_loss"


def _seeds(df: pd.DataFrame) -> tuple[int, ...]:
    return tuple(sorted(int(s) for s in df["seed"].dropna().unique())) if "seed" in df else ()


# ------------------------------------------------------------------------ LR tables
def lr_table(runs: pd.DataFrame, value: str = LOSS) -> pd.DataFrame:
    """Per (name, batch_size, base_lr): mean, std, n of the final ``value`` over seeds of the
    finished runs; a diverged or failed run counts as +inf (the LR is unusable there), so a
    setting with any such seed has mean +inf."""
    cols = ["name", "batch_size", "base_lr", "peak_lr", "mean", "std", "n", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    v = metric(runs, value).where(runs["status"] == "finished", math.inf)
    data = runs.assign(_v=v)
    rows = []
    for (name, b, lr), g in data.groupby(["name", "batch_size", "base_lr"], sort=True, dropna=False):
        vals = g["_v"].astype(float)
        finite = np.isfinite(vals).all()
        rows.append({"name": name, "batch_size": b, "base_lr": lr, "peak_lr": g["peak_lr"].iloc[0],
                     "mean": float(vals.mean()) if finite else math.inf,
                     "std": float(vals.std(ddof=1)) if finite and len(vals) > 1 else math.nan,
                     "n": int(len(vals)), "seeds": _seeds(g)})
    return pd.DataFrame(rows, columns=cols)


def best_per_batch(table: pd.DataFrame) -> pd.DataFrame:
    """Per (name, batch_size): the best LR row (lowest mean) plus the LR sensitivity band:
    ``band_low`` / ``band_high`` (lowest and highest finite mean over the LR grid) and
    ``band_width`` (their difference); ``lr_at_grid_edge``: the best LR is the grid's end."""
    rows = []
    for (name, b), g in table.groupby(["name", "batch_size"], sort=True):
        g = g.sort_values("mean", kind="stable")
        best = g.iloc[0].to_dict()
        finite = g["mean"][np.isfinite(g["mean"].astype(float))]
        best.update(band_low=float(finite.min()) if len(finite) else math.nan,
                    band_high=float(finite.max()) if len(finite) else math.nan,
                    n_lrs=len(g), n_lrs_finite=len(finite),
                    lr_at_grid_edge=bool(best["base_lr"] in (g["base_lr"].min(), g["base_lr"].max())))
        best["band_width"] = best["band_high"] - best["band_low"]
        rows.append(best)
    cols = [*table.columns, "band_low", "band_high", "n_lrs", "n_lrs_finite", "lr_at_grid_edge", "band_width"]
    return pd.DataFrame(rows, columns=cols)


def _row(best: pd.DataFrame, name: str, b: float) -> dict[str, Any] | None:
    r = best[(best["name"] == name) & (best["batch_size"] == b)]
    return None if r.empty else r.iloc[0].to_dict()


def _noise(*rows: dict[str, Any] | None) -> float:
    stds = [float(r["std"]) for r in rows if r is not None]
    return max(stds) if stds and all(math.isfinite(s) for s in stds) else math.nan


def _tol(noise: float, k: float, min_tol: float) -> float:
    return max(k * noise, min_tol) if math.isfinite(noise) else min_tol


# ---------------------------------------------------------------------------- Marek
def marek_verdicts(runs: pd.DataFrame, *, halflife: str, beta2: str | None = None,
                   sgd: str | None = None, accum: str | None = None, k: float = 1.0, min_tol: float = 0.01,
                   sgd_rel_tol: float = 0.03, min_seeds: int = 2) -> list[Verdict]:
    """The Marek et al. 2025 claims on the arms ``halflife`` (Adam, b2 from a fixed half-life
    in tokens), ``beta2`` (Adam, b2 fixed), ``sgd`` (plain SGD) and ``accum`` (the half-life rule
    at a batch size B made of ``accumulate`` micro-batches), each a ``name`` in ``runs``.

    Tolerances: "match" = within ``max(k x seed noise, min_tol)`` nats; SGD is "competitive"
    when within ``max(k x seed noise, sgd_rel_tol x the Adam loss)``."""
    f = runs[runs["name"].isin([a for a in (halflife, beta2, sgd, accum) if a])] if "name" in runs else runs.iloc[0:0]
    best = best_per_batch(lr_table(f))
    seeds = _seeds(finished(f))
    match_tol = f"within max({k:g} x the larger seed std, {min_tol:g}) nats/token"
    hl = best[best["name"] == halflife].sort_values("batch_size")
    if len(hl) < 2 or not np.isfinite(hl["mean"].astype(float)).any():
        return [Verdict("marek", "small batches match or beat large ones (beta2 half-life fixed)",
                        "inconclusive", match_tol, seeds, details=f"needs arm {halflife!r} at >= 2 batch sizes")]
    b_min = float(hl["batch_size"].iloc[0])
    small = _row(best, halflife, b_min)
    larger = best[(best["batch_size"] > b_min) & best["name"].isin([halflife, beta2])]  # accum: below
    larger = larger[np.isfinite(larger["mean"].astype(float))]
    out = []
    if larger.empty:
        out.append(Verdict("marek", "small batches match or beat large ones", "inconclusive", match_tol,
                           seeds, details="no finished larger batch size"))
    else:
        rival = larger.sort_values("mean", kind="stable").iloc[0].to_dict()
        noise = _noise(small, rival)
        tol = _tol(noise, k, min_tol)
        diff = float(rival["mean"]) - float(small["mean"])      # > 0: the small batch is better
        if min(int(small["n"]), int(rival["n"])) < min_seeds:
            verdict = "inconclusive"
        else:
            verdict = "reproduced" if diff >= -tol else "not reproduced"
        out.append(Verdict(
            "marek", f"at equal tokens, B = {b_min:g} with the beta2 half-life held fixed matches or "
                     "beats every larger batch size (each tuned over the LR grid and either beta2 rule)",
            verdict, match_tol, seeds,
            {"small_batch": b_min, "small_loss": small["mean"], "small_std": small["std"],
             "small_best_lr": small["peak_lr"], "best_larger_batch": rival["batch_size"],
             "best_larger_arm": rival["name"], "best_larger_loss": rival["mean"],
             "best_larger_std": rival["std"], "larger_minus_small": diff, "tolerance": tol},
            "per arm and B the base LR with the lowest mean final test loss", best))
    if beta2:
        fx = _row(best, beta2, b_min)
        if fx is None or not math.isfinite(float(fx["mean"])):
            out.append(Verdict("marek", f"beta2 fixed hurts B = {b_min:g}", "inconclusive", "", seeds,
                               details=f"no finished {beta2!r} runs at B = {b_min:g}"))
        else:
            noise = _noise(small, fx)
            diff = float(fx["mean"]) - float(small["mean"])      # > 0: the fixed beta2 is worse
            out.append(Verdict(
                "marek", f"with beta2 fixed at its large-batch value, B = {b_min:g} reaches a worse "
                         "loss than with the half-life rule",
                directional_verdict(diff, noise, int(small["n"]), int(fx["n"]), k=k, min_seeds=min_seeds),
                f"difference must exceed {k:g} x the larger seed std", seeds,
                {"batch_size": b_min, "halflife_loss": small["mean"], "beta2_fixed_loss": fx["mean"],
                 "beta2_fixed_minus_halflife": diff, "seed_noise": noise,
                 "halflife_best_lr": small["peak_lr"], "beta2_fixed_best_lr": fx["peak_lr"],
                 "lr_ratio_halflife_over_fixed": float(small["peak_lr"]) / float(fx["peak_lr"])}))
            lr_h, lr_f = float(small["peak_lr"]), float(fx["peak_lr"])
            verdict = "reproduced" if lr_f < lr_h else ("reversed" if lr_f > lr_h else "not reproduced")
            out.append(Verdict(
                "marek", f"with beta2 fixed, the best LR at B = {b_min:g} is smaller than with the half-life rule",
                verdict, "compared on the LR grid (a grid step is the resolution)", seeds,
                {"halflife_best_lr": lr_h, "beta2_fixed_best_lr": lr_f,
                 "beta2_fixed_best_lr_at_grid_edge": fx["lr_at_grid_edge"]}))
    b_max = float(hl["batch_size"].iloc[-1])
    lo, hi = _row(best, halflife, b_min), _row(best, halflife, b_max)
    if lo["n_lrs_finite"] >= 2 and hi["n_lrs_finite"] >= 2:
        w_lo, w_hi = float(lo["band_width"]), float(hi["band_width"])
        out.append(Verdict(
            "marek", f"B = {b_min:g} is less sensitive to the LR than B = {b_max:g} (half-life rule)",
            "reproduced" if w_lo < w_hi else "not reproduced",
            "band = highest minus lowest mean final loss over the LR grid (diverged LRs left out); "
            "the same relative grid at every B (LR scaled by the preset's rule)", seeds,
            {"band_small": w_lo, "band_large": w_hi, "finite_lrs_small": lo["n_lrs_finite"],
             "finite_lrs_large": hi["n_lrs_finite"]}))
    if sgd:
        out += _sgd_verdicts(best, halflife, sgd, seeds, k=k, rel_tol=sgd_rel_tol, min_seeds=min_seeds)
    if accum:
        out.append(_accumulation_verdict(f, best, halflife, accum, seeds, k=k, min_seeds=min_seeds))
    return out


def _accumulation_verdict(runs: pd.DataFrame, best: pd.DataFrame, direct: str, accum: str,
                          seeds: tuple[int, ...], *, k: float, min_seeds: int) -> Verdict:
    """On one device, A micro-batches of b accumulated into B = A b cost the tokens and the
    gradient computations of training at b, but take B's steps: wasteful when that ends worse
    than training at b directly (both tuned over the LR grid). The accumulated run should also
    land at B's own loss (accumulation is the large-batch update: tests/test_accumulation.py)."""
    claim = "gradient accumulation on one device is wasteful: B = A x b by accumulation ends worse than b directly"
    a = best[(best["name"] == accum) & np.isfinite(best["mean"].astype(float))]
    mine = runs[runs["name"] == accum]
    if a.empty or "accumulate" not in mine or mine["accumulate"].isna().all():
        return Verdict("marek", claim, "inconclusive", "", seeds, details=f"no finished {accum!r} runs")
    acc = a.iloc[0].to_dict()
    steps = int(mine["accumulate"].dropna().iloc[0])
    b_big, b_micro = float(acc["batch_size"]), float(acc["batch_size"]) / steps
    micro, big = _row(best, direct, b_micro), _row(best, direct, b_big)
    if micro is None or not math.isfinite(float(micro["mean"])):
        return Verdict("marek", claim, "inconclusive", "", seeds,
                       details=f"no finished {direct!r} runs at the micro-batch size {b_micro:g}")
    noise = _noise(acc, micro)
    diff = float(acc["mean"]) - float(micro["mean"])      # > 0: accumulating is worse
    return Verdict(
        "marek", f"gradient accumulation on one device is wasteful: B = {b_big:g} as {steps} x {b_micro:g} "
                 f"accumulated ends worse than B = {b_micro:g} directly (equal tokens and gradient computations)",
        directional_verdict(diff, noise, int(acc["n"]), int(micro["n"]), k=k, min_seeds=min_seeds),
        f"difference must exceed {k:g} x the larger seed std", seeds,
        {"batch_size": b_big, "micro_batch_size": b_micro, "accumulate": steps,
         "accumulated_loss": acc["mean"], "micro_batch_loss": micro["mean"],
         "accumulated_minus_micro": diff, "seed_noise": noise,
         "direct_large_batch_loss": big["mean"] if big else math.nan,
         "accumulated_minus_direct_large": float(acc["mean"]) - float(big["mean"]) if big else math.nan},
        "each side at its best LR; the accumulated run should match B's direct run up to float "
        "round-off (summation order) amplified by training")


def _sgd_verdicts(best: pd.DataFrame, adam: str, sgd: str, seeds: tuple[int, ...], *, k: float,
                  rel_tol: float, min_seeds: int) -> list[Verdict]:
    s = best[(best["name"] == sgd) & np.isfinite(best["mean"].astype(float))].sort_values("batch_size")
    if s.empty:
        return [Verdict("marek", "plain SGD is competitive at small B", "inconclusive", "", seeds,
                        details=f"no finished {sgd!r} runs")]
    gaps = []
    for b in s["batch_size"]:
        a, g = _row(best, adam, b), _row(best, sgd, b)
        if a is not None and math.isfinite(float(a["mean"])):
            gaps.append({"batch_size": b, "adam_loss": a["mean"], "sgd_loss": g["mean"],
                         "gap": float(g["mean"]) - float(a["mean"]), "noise": _noise(a, g),
                         "sgd_best_lr": g["peak_lr"], "n": min(int(a["n"]), int(g["n"]))})
    if not gaps:
        return [Verdict("marek", "plain SGD is competitive at small B", "inconclusive", "", seeds,
                        details="no batch size with both SGD and Adam runs")]
    gt = pd.DataFrame(gaps)
    first = gt.iloc[0]
    tol = max(k * first["noise"] if math.isfinite(first["noise"]) else 0.0, rel_tol * first["adam_loss"])
    out = [Verdict(
        "marek", f"plain SGD (no momentum) at B = {first['batch_size']:g} is competitive with Adam",
        "inconclusive" if first["n"] < min_seeds else ("reproduced" if first["gap"] <= tol else "not reproduced"),
        f"SGD loss within max({k:g} x seed std, {rel_tol:.0%} of the Adam loss) of Adam (half-life rule) "
        "at the same B", seeds,
        {"batch_size": first["batch_size"], "sgd_minus_adam": first["gap"], "tolerance": tol,
         "sgd_loss": first["sgd_loss"], "adam_loss": first["adam_loss"], "sgd_best_lr": first["sgd_best_lr"]},
        "", gt)]
    if len(gt) >= 2:
        last = gt.iloc[-1]
        noise = max(float(first["noise"]), float(last["noise"]))
        out.append(Verdict(
            "marek", f"the SGD - Adam gap grows from B = {first['batch_size']:g} to B = {last['batch_size']:g}",
            directional_verdict(float(last["gap"]) - float(first["gap"]), noise, int(first["n"]), int(last["n"]),
                                k=k, min_seeds=min_seeds),
            f"difference of the gaps must exceed {k:g} x the larger seed std", seeds,
            {"gap_small": first["gap"], "gap_large": last["gap"], "seed_noise": noise}))
    return out


# ------------------------------------------------------------------------- Shallue LM
def shallue_lm_verdicts(history: pd.DataFrame, runs: pd.DataFrame, *, target_loss: float,
                        tol: float = 0.2, k: float = 1.0, min_seeds: int = 2) -> list[Verdict]:
    """Regimes of steps-to-result to ``test_loss <= target_loss`` (analysis.verdicts), and no
    degradation of the tuned final test loss at the largest B."""
    goal = Goal(float(target_loss), LOSS, higher_is_better=False)
    first = shallue_verdicts(history, runs, goal=goal, tol=tol, k=k, min_seeds=min_seeds)[0]
    first.finding = "shallue_lm"
    best = best_per_batch(lr_table(runs.assign(name=runs.get("name", "all")) if "name" not in runs else runs))
    best = best[np.isfinite(best["mean"].astype(float))].sort_values("batch_size")
    if len(best) < 2:
        return [first, Verdict("shallue_lm", "no loss degradation at large B when tuned", "inconclusive", "",
                               _seeds(runs), details="needs >= 2 batch sizes")]
    lo, hi = best.iloc[0], best.iloc[-1]
    noise = max(float(lo["std"]), float(hi["std"]))
    degraded = directional_verdict(float(hi["mean"]) - float(lo["mean"]), noise, int(lo["n"]), int(hi["n"]),
                                   k=k, min_seeds=min_seeds)
    verdict = {"reproduced": "not reproduced", "not reproduced": "reproduced", "reversed": "reproduced",
               "inconclusive": "inconclusive"}[degraded]
    return [first, Verdict(
        "shallue_lm", f"no final test-loss degradation at B={hi['batch_size']:g} vs B={lo['batch_size']:g} "
                      "when tuned per B", verdict,
        f"a loss increase larger than {k:g} x the larger seed std counts as degradation", _seeds(runs),
        {"sb": lo["batch_size"], "lb": hi["batch_size"], "sb_loss": lo["mean"], "lb_loss": hi["mean"],
         "lb_minus_sb": float(hi["mean"]) - float(lo["mean"]), "seed_noise": noise},
        "best LR per B by mean final test loss, at the preset's equal-token budget")]


# ------------------------------------------------------------------------ batch warmup
def warmup_table(runs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per arm (in ``arms`` order): its best LR by mean final test loss, that loss (mean, std,
    n over seeds) and the steps the arm takes (``total_steps``)."""
    f = runs[runs["name"].isin(arms)] if "name" in runs else runs.iloc[0:0]
    table = lr_table(f)
    rows = []
    for arm in arms if len(table) else ():
        g = table[table["name"] == arm].sort_values("mean", kind="stable")
        if g.empty:
            continue
        r = g.iloc[0].to_dict()
        steps = f.loc[(f["name"] == arm) & (f["base_lr"] == r["base_lr"]), "total_steps"]
        r["steps"] = float(steps.iloc[0]) if len(steps) else math.nan
        rows.append(r)
    return pd.DataFrame(rows)


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
    seeds = _seeds(finished(runs[runs["name"].isin([small, large, *ramps])])) if "name" in runs else ()
    get = {r["name"]: r for r in t.to_dict("records")}
    out = []
    if small not in get or large not in get:
        return [Verdict("batch_warmup", "batch-size warmup saves steps at equal loss", "inconclusive", "",
                        seeds, details=f"needs finished runs of {small!r} and {large!r}")]
    s, l_ = get[small], get[large]
    for ramp in ramps:
        if ramp not in get or not math.isfinite(float(get[ramp]["mean"])):
            out.append(Verdict("batch_warmup", f"{ramp}: saves steps at the small-batch loss", "inconclusive",
                               "", seeds, details=f"no finished runs of {ramp!r}"))
            continue
        r = get[ramp]
        noise = _noise(s, r)
        tol = _tol(noise, k, min_tol)
        diff = float(r["mean"]) - float(s["mean"])            # > 0: the ramp is worse
        saved = 1 - float(r["steps"]) / float(s["steps"])
        at_loss = _steps_to_loss(history, small, s["base_lr"], float(r["mean"]))
        ok = diff <= tol and saved > 0
        out.append(Verdict(
            "batch_warmup", f"{ramp}: final loss no worse than the small-batch control with fewer steps",
            "inconclusive" if min(int(s["n"]), int(r["n"])) < min_seeds else ("reproduced" if ok else "not reproduced"),
            f"loss within max({k:g} x the larger seed std, {min_tol:g}) nats of the small-batch control "
            "(or lower), and fewer steps", seeds,
            {"ramp_loss": r["mean"], "small_loss": s["mean"], "ramp_minus_small": diff, "tolerance": tol,
             "ramp_steps": r["steps"], "small_steps": s["steps"], "steps_saved_equal_tokens": saved,
             "small_steps_to_ramp_loss": at_loss,
             "steps_saved_equal_loss": (1 - float(r["steps"]) / at_loss) if math.isfinite(at_loss) else math.nan}))
        noise_l = _noise(l_, r)
        out.append(Verdict(
            "batch_warmup", f"{ramp}: final loss below the large-batch control",
            directional_verdict(float(l_["mean"]) - float(r["mean"]), noise_l, int(l_["n"]), int(r["n"]),
                                k=k, min_seeds=min_seeds),
            f"difference must exceed {k:g} x the larger seed std", seeds,
            {"ramp_loss": r["mean"], "large_loss": l_["mean"], "large_minus_ramp": float(l_["mean"]) - float(r["mean"]),
             "seed_noise": noise_l, "ramp_steps": r["steps"], "large_steps": l_["steps"]}))
    if out:
        out[0].table = t
    return out


def _steps_to_loss(history: pd.DataFrame, arm: str, base_lr: float, loss: float) -> float:
    """First eval step at which the seed-mean test loss of ``arm`` at ``base_lr`` is <= loss
    (inf if never)."""
    if history.empty or "name" not in history:
        return math.nan
    h = history[(history["name"] == arm) & np.isclose(history["base_lr"].astype(float), float(base_lr))]
    if h.empty:
        return math.nan
    mean = h.groupby("step")[LOSS].mean().sort_index()
    hit = mean[mean <= loss]
    return float(hit.index[0]) if len(hit) else math.inf
