"""Verdicts on the published findings: pure functions of the run and history tables.

Every verdict is one of ``VERDICTS`` and states its tolerance and the seeds it used.
Seed statistics are mean and sample std (ddof=1). A difference "exceeds the seed noise"
when it is larger than ``k`` times the larger of the two seed stds (k = 1 by default);
fewer than ``min_seeds`` seeds on either side makes the verdict "inconclusive" (no std).

* keskar: LB (largest B) final test accuracy below SB (smallest B), and LB sharper, per
  batch size using the best setting by mean test accuracy (tuned per B: this can only
  shrink the gap, so a gap that survives is not an artifact of a bad LB learning rate).
* goyal: with the linear rule, the largest B up to which the mean final test accuracy stays
  within ``tolerance`` (absolute, accuracy as a fraction) of the smallest-B baseline.
* shallue: the regimes of steps-to-result (``analysis.steps_to_result``), and no test-accuracy
  degradation at large B when tuned.
* edge_of_stability: history sharpness reaches 2/lr and hovers within ``tol`` of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import (best_setting_per_batch, finished, has_metric, metric,
                                reference_lr_per_rule, seed_stats)
from analysis.steps_to_result import (Goal, fit_mccandlish, perfect_scaling_max_b, regimes,
                                      steps_to_result)

VERDICTS = ("reproduced", "not reproduced", "reversed", "inconclusive")
SHARPNESS_KEYS = ("sharpness_full_eps1e-03", "hessian_top_eigenvalue", "hessian_trace",
                  "batch_sharpness", "preconditioned_top_eigenvalue")


@dataclass(eq=False)
class Verdict:
    finding: str
    claim: str
    verdict: str
    tolerance: str
    seeds: tuple[int, ...]
    numbers: dict[str, Any] = field(default_factory=dict)
    details: str = ""
    table: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} not in {VERDICTS}")


def directional_verdict(diff: float, noise: float, n_a: int, n_b: int, *, k: float = 1.0,
                        min_seeds: int = 2) -> str:
    """``diff`` is oriented so that > 0 is the claimed direction. Reproduced if it exceeds
    ``k * noise``, reversed if it is below ``-k * noise``, else not reproduced; inconclusive
    with fewer than ``min_seeds`` seeds on a side or a NaN."""
    if min(n_a, n_b) < min_seeds or not (math.isfinite(diff) and math.isfinite(noise)):
        return "inconclusive"
    if diff > k * noise:
        return "reproduced"
    if diff < -k * noise:
        return "reversed"
    return "not reproduced"


def _seeds(*frames: pd.DataFrame) -> tuple[int, ...]:
    vals = pd.concat([f["seed"] for f in frames if "seed" in f]) if frames else pd.Series([])
    return tuple(sorted(int(s) for s in vals.dropna().unique()))


def _side(stats: pd.DataFrame, b: float) -> tuple[float, float, int]:
    row = stats[stats["batch_size"] == b]
    if row.empty:
        return math.nan, math.nan, 0
    return float(row["mean"].iloc[0]), float(row["std"].iloc[0]), int(row["n"].iloc[0])


def _sb_lb(runs: pd.DataFrame, sb: float | None, lb: float | None) -> tuple[float, float]:
    bs = sorted(float(b) for b in runs["batch_size"].dropna().unique())
    return float(bs[0] if sb is None else sb), float(bs[-1] if lb is None else lb)


# ---------------------------------------------------------------------------- Keskar
def keskar_verdicts(runs: pd.DataFrame, *, sb: float | None = None, lb: float | None = None,
                    k: float = 1.0, min_seeds: int = 2) -> list[Verdict]:
    """Generalization gap (test accuracy SB - LB) and sharpness (LB vs SB, each recorded key)."""
    tol = (f"difference must exceed {k:g} x the larger seed std (sample std over seeds); "
           f"< {min_seeds} seeds on a side -> inconclusive")
    f = finished(runs)
    if f.empty or not has_metric(f, "test_accuracy") or f["batch_size"].nunique() < 2:
        return [Verdict("keskar", "LB test accuracy below SB", "inconclusive", tol, _seeds(f),
                        details="needs finished runs with final test_accuracy at >= 2 batch sizes")]
    sel = best_setting_per_batch(f)
    sb, lb = _sb_lb(sel, sb, lb)
    pick = sel[sel["batch_size"].isin([sb, lb])]
    acc = seed_stats(pick, ["batch_size"], metric(pick, "test_accuracy"))
    train = seed_stats(pick, ["batch_size"], metric(pick, "train_accuracy"))
    (ms, ss, ns), (ml, sl, nl) = _side(acc, sb), _side(acc, lb)
    noise = max(ss, sl) if ns >= 2 and nl >= 2 else math.nan
    diff = ms - ml
    setting = pick.groupby("batch_size")[["scaling", "base_lr", "peak_lr"]].first()
    table = acc.rename(columns={"mean": "test_accuracy_mean", "std": "test_accuracy_std"}).merge(
        train[["batch_size", "mean"]].rename(columns={"mean": "train_accuracy_mean"}),
        on="batch_size", how="left").merge(setting.reset_index(), on="batch_size", how="left")
    out = [Verdict(
        "keskar", f"LB (B={lb:g}) final test accuracy is lower than SB (B={sb:g})",
        directional_verdict(diff, noise, ns, nl, k=k, min_seeds=min_seeds), tol, _seeds(pick),
        {"sb": sb, "lb": lb, "sb_test_accuracy": ms, "sb_std": ss, "sb_n": ns,
         "lb_test_accuracy": ml, "lb_std": sl, "lb_n": nl, "difference_sb_minus_lb": diff,
         "seed_noise": noise},
        "per B, the setting with the best mean test accuracy (tuned per B)", table)]
    for key in SHARPNESS_KEYS:
        if not has_metric(pick, key):
            continue
        st = seed_stats(pick, ["batch_size"], metric(pick, key))
        (s_m, s_s, s_n), (l_m, l_s, l_n) = _side(st, sb), _side(st, lb)
        noise_k = max(s_s, l_s) if s_n >= 2 and l_n >= 2 else math.nan
        out.append(Verdict(
            "keskar", f"LB (B={lb:g}) is sharper than SB (B={sb:g}) by {key}",
            directional_verdict(l_m - s_m, noise_k, s_n, l_n, k=k, min_seeds=min_seeds), tol,
            _seeds(pick),
            {"metric": key, "sb_mean": s_m, "sb_std": s_s, "lb_mean": l_m, "lb_std": l_s,
             "ratio_lb_over_sb": l_m / s_m if s_m else math.nan, "seed_noise": noise_k}))
    return out


# ----------------------------------------------------------------------------- Goyal
def goyal_verdict(runs: pd.DataFrame, *, tolerance: float = 0.01, rule: str = "linear",
                  required_factor: float = 32.0, min_seeds: int = 2) -> Verdict:
    """Largest B up to which (every B' <= B) the ``rule`` keeps the mean final test accuracy
    no more than ``tolerance`` below the smallest-B baseline. Reproduced when that B reaches
    ``min(required_factor * B0, largest B tested)`` (Goyal: 256 -> 8k is 32x)."""
    tol = (f"within {tolerance * 100:g} percentage points (absolute) of the B0 baseline mean "
           f"final test accuracy; must hold up to min({required_factor:g} x B0, largest B)")
    f = finished(runs)
    lin = f[f["scaling"] == rule] if "scaling" in f else f.iloc[0:0]
    if lin.empty or not has_metric(lin, "test_accuracy"):
        return Verdict("goyal", f"{rule} LR scaling keeps test accuracy flat", "inconclusive", tol,
                       _seeds(lin), details=f"no finished runs with scaling={rule!r} and test accuracy")
    every = reference_lr_per_rule(f)
    stats = seed_stats(every, ["scaling", "batch_size"], metric(every, "test_accuracy"))
    ours = stats[stats["scaling"] == rule].sort_values("batch_size")
    b0 = float(ours["batch_size"].iloc[0])
    base_mean, base_n = float(ours["mean"].iloc[0]), int(ours["n"].iloc[0])
    stats["drop_vs_baseline"] = base_mean - stats["mean"]
    ours = stats[stats["scaling"] == rule].sort_values("batch_size")
    within = ours["drop_vs_baseline"] <= tolerance + 1e-12
    holds = b0
    for b, ok in zip(ours["batch_size"], within):
        if not ok:
            break
        holds = float(b)
    largest = float(ours["batch_size"].iloc[-1])
    required = min(required_factor * b0, largest)
    if base_n < min_seeds or len(ours) < 2:
        verdict = "inconclusive"
    else:
        verdict = "reproduced" if holds >= required else "not reproduced"
    return Verdict(
        "goyal", f"{rule} LR scaling keeps final test accuracy within tolerance of B0={b0:g}",
        verdict, tol, _seeds(every[every["scaling"] == rule]),
        {"baseline_batch_size": b0, "baseline_test_accuracy": base_mean,
         "baseline_std": float(ours["std"].iloc[0]), "holds_up_to_batch_size": holds,
         "holds_up_to_factor": holds / b0, "required_batch_size": required,
         "largest_batch_size": largest,
         "drop_at_largest": float(ours["drop_vs_baseline"].iloc[-1])},
        "batch sizes within tolerance: "
        + ", ".join(f"{b:g}" for b in ours.loc[within.to_numpy(), "batch_size"])
        + "; other rules are listed for comparison (per rule, the base LR best at its smallest B)",
        stats.sort_values(["scaling", "batch_size"], ignore_index=True))


# --------------------------------------------------------------------------- Shallue
def shallue_verdicts(history: pd.DataFrame, runs: pd.DataFrame, *, goal: Goal,
                     tol: float = 0.2, flat: float = 0.1, min_points: int = 3,
                     k: float = 1.0, min_seeds: int = 2) -> list[Verdict]:
    """Regimes of steps-to-result, and (tuned per B) no accuracy degradation at large B."""
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
    out = [Verdict("shallue", "steps-to-result shows perfect scaling, then diminishing returns "
                   "(then maximal data parallelism)", verdict, tol_text, _seeds(history),
                   numbers, details, reg if len(reg) else table)]
    f = finished(runs)
    if f.empty or not has_metric(f, "test_accuracy") or f["batch_size"].nunique() < 2:
        out.append(Verdict("shallue", "no test-accuracy degradation at large B when tuned",
                           "inconclusive", "", _seeds(f), details="needs finished runs at >= 2 batch sizes"))
        return out
    sel = best_setting_per_batch(f)
    sb, lb = _sb_lb(sel, None, None)
    acc = seed_stats(sel, ["batch_size"], metric(sel, "test_accuracy"))
    (ms, ss, ns), (ml, sl, nl) = _side(acc, sb), _side(acc, lb)
    noise = max(ss, sl) if ns >= 2 and nl >= 2 else math.nan
    degraded = directional_verdict(ms - ml, noise, ns, nl, k=k, min_seeds=min_seeds)
    # the claim is the *absence* of a degradation
    verdict = {"reproduced": "not reproduced", "not reproduced": "reproduced",
               "reversed": "reproduced", "inconclusive": "inconclusive"}[degraded]
    out.append(Verdict(
        "shallue", f"no test-accuracy degradation at B={lb:g} vs B={sb:g} when tuned per B", verdict,
        f"a drop larger than {k:g} x the larger seed std counts as degradation", _seeds(sel),
        {"sb": sb, "lb": lb, "sb_test_accuracy": ms, "sb_std": ss, "lb_test_accuracy": ml,
         "lb_std": sl, "difference_sb_minus_lb": ms - ml, "seed_noise": noise},
        "best setting per B by mean final test accuracy (not at a fixed budget of steps)"))
    return out


# -------------------------------------------------------------------- edge of stability
def stability_columns(history: pd.DataFrame) -> pd.DataFrame:
    """Per history row, the sharpness that the run's optimizer makes unstable and its threshold:
    ``eos_value`` / ``eos_threshold`` / ``eos_quantity``.

    Adam (rows with ``preconditioned_top_eigenvalue``): the preconditioned sharpness against
    ``preconditioned_stability_threshold`` ((2 + 2 b1) / ((1 - b1) lr), Cohen et al. 2022).
    Otherwise lambda_max against ``stability_threshold`` (2/lr for GD, (2 + 2 beta) / lr for heavy
    ball), falling back to ``two_over_lr`` and then 2/lr for records written before thresholds
    were stored. An Adam row without its preconditioned sharpness has no threshold (NaN): 2/lr
    is not Adam's."""
    def col(name: str) -> pd.Series:
        return (pd.to_numeric(history[name], errors="coerce") if name in history
                else pd.Series(np.nan, index=history.index))

    pre, pre_thr = col("preconditioned_top_eigenvalue"), col("preconditioned_stability_threshold")
    use_pre = pre.notna() & pre_thr.notna()
    thr = col("stability_threshold").fillna(col("two_over_lr"))
    if "lr" in history:
        thr = thr.fillna(2.0 / col("lr"))
    thr = thr.where(pre_thr.isna(), np.nan)  # an Adam row: only the preconditioned pair applies
    return pd.DataFrame({
        "eos_value": col("hessian_top_eigenvalue").where(~use_pre, pre),
        "eos_threshold": thr.where(~use_pre, pre_thr),
        "eos_quantity": np.where(use_pre, "lambda_max(P^-1 H)", "lambda_max")}, index=history.index)


def eos_table(history: pd.DataFrame, tol: float = 0.2, loss_fraction: float = 0.1) -> pd.DataFrame:
    """Per run with sharpness history: ``max_ratio`` of sharpness / its stability threshold
    (``stability_columns``: 2/lr for GD, (2 + 2 beta)/lr heavy ball, Adam's preconditioned
    sharpness against (2 + 2 b1)/((1 - b1) lr)), ``first_reach_step`` (first row with
    ratio >= 1 - tol), ``median_ratio_after`` over the edge-of-stability window, ``hovers``
    (|median_ratio_after - 1| <= tol, >= 2 rows), ``loss_drop_after_reach``.

    The window runs from the first reach while the training loss is still >= ``loss_fraction``
    x its value at the reach (``window_end_step``): with cross-entropy the Hessian shrinks as
    the loss goes to zero, so sharpness falls late in training whatever the step size (Cohen
    et al. 2021 note this for cross-entropy); that end phase is not the edge of stability."""
    cols = ["run_id", "name", "batch_size", "peak_lr", "seed", "full_batch", "quantity", "rows",
            "max_ratio", "first_reach_step", "window_end_step", "window_rows", "median_ratio_after",
            "hovers", "loss_drop_after_reach"]
    if history.empty or "hessian_top_eigenvalue" not in history:
        return pd.DataFrame(columns=cols)
    h = history.join(stability_columns(history))
    h = h[h["eos_value"].notna() & h["eos_threshold"].notna()].sort_values(["run_id", "step"])
    h = h.assign(_ratio=h["eos_value"] / h["eos_threshold"])
    rows = []
    for rid, r in h.groupby("run_id", sort=True):
        cur = r["current_batch_size"] if "current_batch_size" in r else r["batch_size"]
        full = bool("num_train" in r and pd.notna(r["num_train"].iloc[0])
                    and (cur >= r["num_train"]).all())
        reached = r[r["_ratio"] >= 1 - tol]
        after = r[r["step"] >= reached["step"].iloc[0]] if len(reached) else r.iloc[0:0]
        if len(after) and "train_loss" in after:
            low = after["train_loss"] < loss_fraction * after["train_loss"].iloc[0]
            after = after[~low.cummax()]  # up to the first row below the loss floor
        med = float(after["_ratio"].median()) if len(after) else math.nan
        loss_drop = (float(after["train_loss"].iloc[0] - after["train_loss"].iloc[-1])
                     if len(after) and "train_loss" in after else math.nan)
        rows.append({"run_id": rid, "name": r["name"].iloc[0] if "name" in r else None,
                     "batch_size": r["batch_size"].iloc[0],
                     "peak_lr": r["peak_lr"].iloc[0], "seed": r["seed"].iloc[0],
                     "full_batch": full, "quantity": r["eos_quantity"].iloc[-1], "rows": len(r),
                     "max_ratio": float(r["_ratio"].max()),
                     "first_reach_step": float(reached["step"].iloc[0]) if len(reached) else math.nan,
                     "window_end_step": float(after["step"].iloc[-1]) if len(after) else math.nan,
                     "window_rows": len(after),
                     "median_ratio_after": med, "hovers": bool(len(after) >= 2 and abs(med - 1) <= tol),
                     "loss_drop_after_reach": loss_drop})
    return pd.DataFrame(rows, columns=cols).sort_values(
        ["name", "batch_size", "peak_lr", "seed"], kind="stable", ignore_index=True)


def _threshold_name(history: pd.DataFrame, table: pd.DataFrame) -> tuple[str, str]:
    """(what rises, the threshold it meets), in words, for the runs of ``table``."""
    if len(table) and (table["quantity"] == "lambda_max(P^-1 H)").all():
        return "preconditioned sharpness λ_max(P^-1 H)", "(2 + 2 β1)/((1 − β1) lr)"
    h = history[history["run_id"].isin(table["run_id"])] if len(table) else history
    if "stability_threshold" in h and "lr" in h:
        ratio = pd.to_numeric(h["stability_threshold"], errors="coerce") * pd.to_numeric(h["lr"], errors="coerce")
        if ratio.notna().any() and (ratio.dropna() - 2).abs().max() > 1e-6:
            return "sharpness", "the optimizer's threshold ((2 + 2 β)/lr with momentum)"
    return "sharpness", "2/lr"


def eos_verdict(history: pd.DataFrame, *, tol: float = 0.2, min_fraction: float = 0.5,
                loss_fraction: float = 0.1, arm: str | None = None) -> Verdict:
    """Reproduced when, among the runs (full-batch ones if any) whose sharpness reaches
    (1 - tol) x its stability threshold (``stability_columns``), at least ``min_fraction`` then
    hover with median ratio within 1 +- tol over the window of ``eos_table``. Runs that never
    reach it (a step size whose threshold lies above the sharpness training attains) are listed
    but do not count either way; if none reaches, the claim is not reproduced. ``arm``: the
    records' ``name`` to judge alone (findings with several presets)."""
    if arm is not None and "name" in history:
        history = history[history["name"] == arm]
    t = eos_table(history, tol, loss_fraction)
    what, thr = _threshold_name(history, t)
    tol_text = (f"reach: {what} >= {1 - tol:g} x {thr}; hover: median ratio within "
                f"1 ± {tol:g} (>= 2 rows) from the reach until the train loss falls below "
                f"{loss_fraction:g} x its value there; >= {min_fraction:.0%} of the runs that reach")
    claim = f"{what} rises to {thr} and hovers there" + (f" ({arm})" if arm else "")
    if t.empty:
        return Verdict("edge_of_stability", claim, "inconclusive", tol_text, (),
                       details="no history rows with sharpness and a stability threshold")
    used = t[t["full_batch"]] if t["full_batch"].any() else t
    note = ("full-batch runs only" if t["full_batch"].any() else
            "no full-batch run found (Cohen et al. use full-batch GD): all runs with sharpness history used")
    reached = used[np.isfinite(used["first_reach_step"].astype(float))]
    frac = float(reached["hovers"].mean()) if len(reached) else 0.0
    if reached.empty:
        verdict, note = "not reproduced", note + f"; {what} never reached {1 - tol:g} x {thr}"
    else:
        verdict = "reproduced" if frac >= min_fraction else "not reproduced"
        missing = sorted({float(x) for x in used.loc[~used.index.isin(reached.index), "peak_lr"]})
        if missing:
            note += (f"; {len(used) - len(reached)} of {len(used)} runs never reached {thr} "
                     f"(lr {', '.join(f'{x:g}' for x in missing)}) and are not counted")
    table = used.drop(columns=[c for c in ("name", "quantity") if used[c].nunique(dropna=False) <= 1])
    return Verdict("edge_of_stability", claim, verdict, tol_text,
                   tuple(sorted(int(s) for s in used["seed"].dropna().unique())),
                   {"runs": len(used), "runs_reaching": len(reached), "fraction_hovering": frac,
                    "median_ratio_after_reach": float(reached["median_ratio_after"].median())
                    if len(reached) else math.nan,
                    "max_ratio": float(used["max_ratio"].max())},
                   note, table.reset_index(drop=True))
