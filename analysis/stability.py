"""The edge of stability (Cohen et al. 2021, 2022): each run's sharpness against its optimizer's
stability threshold, the window rule and the verdict, shared by the edge-of-stability findings,
their figure and the cross-check outside the harness (pure functions of the history table).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.verdicts import Verdict

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


def eos_verdict(history: pd.DataFrame, *, finding: str, tol: float = 0.2, min_fraction: float = 0.5,
                loss_fraction: float = 0.1, arm: str | None = None) -> Verdict:
    """Reproduced when, among the runs (full-batch ones if any) whose sharpness reaches
    (1 - tol) x its stability threshold (``stability_columns``), at least ``min_fraction`` then
    hover with median ratio within 1 +- tol over the window of ``eos_table``. Runs that never
    reach it (a step size whose threshold lies above the sharpness training attains) are listed
    but do not count either way; if none reaches, the claim is not reproduced. ``arm``: the
    records' ``name`` to judge alone (findings with several presets); ``finding`` labels the verdict."""
    if arm is not None and "name" in history:
        history = history[history["name"] == arm]
    t = eos_table(history, tol, loss_fraction)
    what, thr = _threshold_name(history, t)
    tol_text = (f"reach: {what} >= {1 - tol:g} x {thr}; hover: median ratio within "
                f"1 ± {tol:g} (>= 2 rows) from the reach until the train loss falls below "
                f"{loss_fraction:g} x its value there; >= {min_fraction:.0%} of the runs that reach")
    claim = f"{what} rises to {thr} and hovers there" + (f" ({arm})" if arm else "")
    if t.empty:
        return Verdict(finding, claim, "inconclusive", tol_text, (),
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
    return Verdict(finding, claim, verdict, tol_text,
                   tuple(sorted(int(s) for s in used["seed"].dropna().unique())),
                   {"runs": len(used), "runs_reaching": len(reached), "fraction_hovering": frac,
                    "median_ratio_after_reach": float(reached["median_ratio_after"].median())
                    if len(reached) else math.nan,
                    "max_ratio": float(used["max_ratio"].max())},
                   note, table.reset_index(drop=True))
