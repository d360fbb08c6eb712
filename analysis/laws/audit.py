"""Audit of the published hyperparameter laws on our grid.

A published law (an entry of ``analysis/baselines/published.yaml`` with a ``law`` block) gives
``target`` (b_opt, lr_opt or b_crit), a ``coefficient`` and ``exponents`` in ``num_params`` (N),
``tokens`` (D) or ``compute`` (C; read as C = 6 N D, so an exponent e in C is e in N and e in D).
Constants do not transfer between setups (units, tokenizer, architecture), exponents and shapes
can be compared, so for each law:

* its exponents beside ours (ours fitted on the same variables, with bootstrap intervals), and
  whether each published exponent lies inside our interval;
* the loss gap of the (B, LR) it predicts after refitting only its constant to our cells
  (least squares in log space), evaluated on each cell's fitted landscape: gap = L(B_pred,
  LR_pred) - L(B*, LR*). A source with only a B law is scored at the best LR for that B on our
  landscape, one with only an LR law at the best B for that LR. B_crit laws get exponents only
  (the critical batch size is not a loss optimum). Cells where the prediction lies outside the
  grid are counted (the quadratic is extrapolated there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from analysis.laws.landscape import CellOptimum, predict
from analysis.laws.power import PowerLaw, power_law

VARIABLES = ("num_params", "tokens")
TARGET_COLUMN = {"b_opt": "b_opt", "lr_opt": "lr_opt", "b_crit": "cbs"}


def published_laws(doc: Mapping) -> list[dict]:
    """Entries of a loaded baselines document that carry a ``law`` block, with their source."""
    return [{**e["law"], "id": e["id"], "source": e["source"], "confidence": e["confidence"]}
            for e in doc["entries"] if "law" in e]


def in_nd(exponents: Mapping[str, float]) -> dict[str, float]:
    """A law's exponents as exponents in N and D (compute C = 6 N D)."""
    out = {v: float(exponents.get(v, 0.0)) for v in VARIABLES}
    c = float(exponents.get("compute", 0.0))
    return {v: out[v] + c for v in VARIABLES}


def _cells_with_compute(cells: pd.DataFrame) -> pd.DataFrame:
    return cells.assign(compute=6.0 * cells["num_params"] * cells["tokens"])


def law_shape(frame: pd.DataFrame, law: Mapping) -> np.ndarray:
    """prod_i x_i^e_i of the law at the rows of ``frame`` (columns num_params, tokens)."""
    e = in_nd(law["exponents"])
    return np.exp(sum(e[v] * np.log(frame[v].to_numpy(float)) for v in VARIABLES))


def law_constant(cells: pd.DataFrame, law: Mapping) -> float:
    """The law's constant refitted to our optima: least squares in log space (the mean log ratio)."""
    y = cells[TARGET_COLUMN[law["target"]]].to_numpy(float)
    shape = law_shape(cells, law)
    ok = np.isfinite(y) & (y > 0)
    return float(np.exp(np.mean(np.log(y[ok]) - np.log(shape[ok])))) if ok.any() else math.nan


def refit_constant(cells: pd.DataFrame, law: Mapping) -> np.ndarray:
    """The law's predictions per cell with only its constant refitted to our optima."""
    return law_constant(cells, law) * law_shape(cells, law)


def best_lr_given_b(coef: np.ndarray, b: float) -> float:
    x = math.log(b)
    return math.exp(-(coef[2] + coef[4] * x) / (2 * coef[5]))


def best_b_given_lr(coef: np.ndarray, lr: float) -> float:
    y = math.log(lr)
    return math.exp(-(coef[1] + coef[4] * y) / (2 * coef[3]))


def _grid_ranges(table: pd.DataFrame) -> dict[tuple[float, float], tuple[float, float, float, float]]:
    g = table.groupby(["num_params", "tokens"])
    return {(float(n), float(d)): (c["batch_size"].min(), c["batch_size"].max(), c["lr"].min(), c["lr"].max())
            for (n, d), c in g}


def loss_gaps(cells: pd.DataFrame, fits: Mapping[tuple[float, float], CellOptimum], table: pd.DataFrame,
              b_pred: np.ndarray | None, lr_pred: np.ndarray | None) -> pd.DataFrame:
    """Per cell: the predicted (B, LR), its fitted loss, the gap to the cell's optimum and whether
    the point lies inside the cell's grid."""
    ranges = _grid_ranges(table)
    rows = []
    for i, (n, d) in enumerate(zip(cells["num_params"], cells["tokens"])):
        o = fits[(float(n), float(d))]
        if not o.ok:
            continue
        b = float(b_pred[i]) if b_pred is not None else best_b_given_lr(o.coef, float(lr_pred[i]))
        lr = float(lr_pred[i]) if lr_pred is not None else best_lr_given_b(o.coef, b)
        loss = float(predict(o.coef, b, lr)[0])
        b_lo, b_hi, lr_lo, lr_hi = ranges[(float(n), float(d))]
        rows.append({"num_params": n, "tokens": d, "b_pred": b, "lr_pred": lr, "loss_pred": loss,
                     "loss_opt": o.loss_opt, "gap": loss - o.loss_opt, "relative_gap": (loss - o.loss_opt) / o.loss_opt,
                     "inside_grid": bool(b_lo <= b <= b_hi and lr_lo <= lr <= lr_hi)})
    return pd.DataFrame(rows)


def exponent_rows(cells: pd.DataFrame, laws: Iterable[Mapping], draws: Mapping | None, *,
                  n_boot: int = 200, seed: int = 0) -> tuple[pd.DataFrame, dict[str, PowerLaw]]:
    """One row per (law, variable): the published exponent beside ours with our interval."""
    cc = _cells_with_compute(cells)
    rows, ours = [], {}
    for law in laws:
        col = TARGET_COLUMN[law["target"]]
        if col not in cc:
            continue
        variables = tuple(law["exponents"])
        fit = power_law(cc, col, variables, draws=draws, n_boot=n_boot, seed=seed)
        ours[law["id"]] = fit
        for v in variables:
            lo, hi = fit.intervals[v]
            pub = float(law["exponents"][v])
            rows.append({"law": law["id"], "source": law["source"], "target": law["target"], "variable": v,
                         "published": pub, "ours": fit.exponents[v], "ours_lo": lo, "ours_hi": hi,
                         "published_inside_ours": bool(lo <= pub <= hi) if math.isfinite(lo) else None,
                         "confidence": law["confidence"]})
    return pd.DataFrame(rows), ours


def audit(cells: pd.DataFrame, fits: Mapping[tuple[float, float], CellOptimum], table: pd.DataFrame,
          laws: Iterable[Mapping], *, n_boot: int = 200, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``exponents``: each law's exponents beside ours; ``gaps``: per source, the loss gap of its
    predicted (B, LR) after refitting its constants (mean, max over cells; cells outside the grid);
    ``cells``: the same per cell."""
    laws = list(laws)
    draws = {k: v.draws for k, v in fits.items()}
    exps, _ = exponent_rows(cells, laws, draws, n_boot=n_boot, seed=seed)
    by_source: dict[str, dict[str, Mapping]] = {}
    for law in laws:
        if law["target"] in ("b_opt", "lr_opt"):
            by_source.setdefault(law["source"], {})[law["target"]] = law
    summary, per_cell = [], []
    for source, pair in by_source.items():
        b = refit_constant(cells, pair["b_opt"]) if "b_opt" in pair else None
        lr = refit_constant(cells, pair["lr_opt"]) if "lr_opt" in pair else None
        g = loss_gaps(cells, fits, table, b, lr).assign(source=source)
        per_cell.append(g)
        summary.append({"source": source, "laws": ", ".join(sorted(p["id"] for p in pair.values())),
                        "scored_with": "B and LR from the laws" if b is not None and lr is not None else
                        ("B from the law, best LR for it" if b is not None else "LR from the law, best B for it"),
                        "mean_gap": float(g["gap"].mean()) if len(g) else math.nan,
                        "max_gap": float(g["gap"].max()) if len(g) else math.nan,
                        "mean_relative_gap": float(g["relative_gap"].mean()) if len(g) else math.nan,
                        "cells": len(g), "cells_outside_grid": int((~g["inside_grid"]).sum()) if len(g) else 0})
    return {"exponents": exps, "gaps": pd.DataFrame(summary),
            "cells": pd.concat(per_cell, ignore_index=True) if per_cell else pd.DataFrame()}
