"""The critical batch size per (N, D) cell of the grid, for the B_crit(D) law and the overlay.

Per cell the target is the final ``test_loss`` that every seed of the smallest batch size reaches
at its best LR (the highest of the per-seed best final losses); each run's steps to that target come from its history and the CBS is
``analysis.critical_batch.cbs_cell``'s: where steps exceed perfect linear scaling from the
smallest B by 20% (Zhang et al. 2024; their code measures the overhead against linear scaling
from a reference batch size, see published.yaml ``zhang2024/definition/cbs``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from analysis.critical_batch import cbs_cell
from analysis.steps_to_result import Goal


def cbs_cells(table: pd.DataFrame, history: pd.DataFrame, overhead: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per cell: num_params, tokens, cbs, seed_min, seed_max, target_loss; the steps
    to target per B per cell, columns model, batch_size, steps_to_target)."""
    if history.empty or "test_loss" not in history:
        return pd.DataFrame(columns=["num_params", "tokens", "cbs"]), pd.DataFrame()
    rows, steps = [], []
    for (n, d), cell in table.groupby(["num_params", "tokens"], sort=True):
        b0 = cell["batch_size"].min()
        # the loss every seed of the smallest B reaches at its best LR (the highest of the per-seed
        # bests): the reference must reach the target for the 20% comparison to exist
        target = float(cell[cell["batch_size"] == b0].groupby("seed")["loss"].min().max())
        h = history[history["run_id"].isin(set(cell["run_id"]))].copy()
        h["base_lr"] = h["run_id"].map(dict(zip(cell["run_id"], cell["lr"])))
        if h.empty or not math.isfinite(target):
            continue
        res = cbs_cell(h, Goal(target, "test_loss", higher_is_better=False), overhead)
        rows.append({"num_params": n, "tokens": d, "cbs": res["cbs"], "seed_min": res.get("seed_min", math.nan),
                     "seed_max": res.get("seed_max", math.nan), "target_loss": target})
        t = res.get("table")
        if t is not None and len(t):
            steps.append(t.rename(columns={"steps": "steps_to_target"})
                         .assign(model=f"N={n:.3g}, D={d:.3g}")[["model", "batch_size", "steps_to_target"]])
    return pd.DataFrame(rows), (pd.concat(steps, ignore_index=True).dropna() if steps else pd.DataFrame())


def fitted_cbs(batch_sizes, steps, *, reference_batch: float, overhead: float = 0.2) -> dict[str, float]:
    """Zhang et al.'s CBS as their code computes it: fit steps S(B) = a + b / B (least squares of
    ln S, ``scipy.optimize.curve_fit``), then the B where S exceeds perfect linear scaling from
    ``reference_batch`` by ``overhead``: S(B) = (1 + o) S(B_ref) B_ref / B, i.e.
    B* = ((1 + o)(a B_ref + b) - b) / a (= b / (5a) + 1.2 B_ref for o = 0.2; their B_ref is 256).
    Beside the model-free first crossing of ``analysis.critical_batch`` (reference: the smallest
    B), the fit smooths the seed and sweep noise of single batch sizes."""
    b = np.asarray(batch_sizes, float)
    s = np.asarray(steps, float)
    ok = np.isfinite(s) & (s > 0)
    (a, bb), _ = curve_fit(lambda x, a, c: np.log(np.abs(a + c / x)), b[ok], np.log(s[ok]),
                           p0=(float(s[ok].min()), float(s[ok].max() * b[ok].min())), maxfev=20000)
    cbs = ((1 + overhead) * (a * reference_batch + bb) - bb) / a if a > 0 else math.inf
    return {"cbs": float(cbs), "a": float(a), "b": float(bb), "reference_batch": float(reference_batch)}
