"""Seed statistics and setting selection on the run table (pure pandas).

Conventions used by figures and verdicts:

* statistics over seeds are mean and sample standard deviation (ddof=1; NaN for one seed);
* a *setting* is (scaling, base_lr, peak_lr): the LR actually used. When several settings
  exist at one batch size, selection rules are explicit functions here, never implicit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

SETTING = ("scaling", "base_lr", "peak_lr")


def where(df: pd.DataFrame, conditions: Mapping[str, str]) -> pd.DataFrame:
    """Rows whose columns equal the given values, compared as strings (``batch_size=64``,
    ``dataset=mnist1d``); an unknown column raises KeyError."""
    mask = pd.Series(True, index=df.index)
    for col, value in conditions.items():
        if col not in df.columns:
            raise KeyError(f"no column {col!r} to filter on")
        as_str = df[col].map(lambda v: f"{v:g}" if isinstance(v, float) else str(v))
        mask &= (as_str == str(value)) | (df[col].astype(str) == str(value))
    return df[mask]


def select_runs(runs: pd.DataFrame, history: pd.DataFrame,
                conditions: Mapping[str, str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Filter the run table with ``where`` and keep the history rows of the runs kept."""
    if not conditions:
        return runs, history
    runs = where(runs, conditions)
    return runs, history[history["run_id"].isin(runs["run_id"])] if "run_id" in history else history


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with status 'finished'."""
    return runs[runs["status"] == "finished"]


def metric(runs: pd.DataFrame, key: str) -> pd.Series:
    """``curvature_<key>``, else ``final_<key>``, else ``<key>``: the first non-null per run."""
    out = pd.Series(np.nan, index=runs.index, dtype=float)
    for col in (f"curvature_{key}", f"final_{key}", key):
        if col in runs.columns:
            out = out.fillna(pd.to_numeric(runs[col], errors="coerce"))
    return out


def has_metric(runs: pd.DataFrame, key: str) -> bool:
    return bool(len(runs)) and metric(runs, key).notna().any()


def seed_stats(df: pd.DataFrame, by: Sequence[str], value: str | pd.Series) -> pd.DataFrame:
    """Mean, std (ddof=1), count and seeds of ``value`` over rows grouped by ``by``.

    Rows whose value is NaN are ignored. Columns: ``*by, mean, std, n, seeds``.
    """
    vals = df[value] if isinstance(value, str) else value
    data = df[list(by)].assign(_v=pd.to_numeric(vals, errors="coerce"),
                               _s=df["seed"] if "seed" in df else np.nan)
    data = data[data["_v"].notna()]
    cols = [*by, "mean", "std", "n", "seeds"]
    if data.empty:
        return pd.DataFrame(columns=cols)
    g = data.groupby(list(by), dropna=False, sort=True)
    out = g["_v"].agg(mean="mean", std=lambda s: s.std(ddof=1), n="count").reset_index()
    seeds = g["_s"].agg(lambda s: tuple(sorted(int(x) for x in s.dropna().unique())))
    out["seeds"] = list(seeds.values)
    return out[cols]


def best_setting_per_batch(runs: pd.DataFrame, value: str = "final_test_accuracy",
                           higher_is_better: bool = True) -> pd.DataFrame:
    """The runs of the best setting at each batch size (best mean ``value`` over seeds).

    Used where a claim is about the best achievable result at each B (tuned per B).
    """
    if runs.empty:
        return runs
    keys = [c for c in SETTING if c in runs.columns]
    stats = seed_stats(runs, ["batch_size", *keys], value)
    if stats.empty:
        return runs.iloc[0:0]
    stats = stats.sort_values("mean", ascending=not higher_is_better, kind="stable")
    best = stats.groupby("batch_size", sort=True).head(1)[["batch_size", *keys]]
    return runs.merge(best, on=["batch_size", *keys], how="inner")


def reference_lr_per_rule(runs: pd.DataFrame, value: str = "final_test_accuracy",
                          higher_is_better: bool = True) -> pd.DataFrame:
    """For each scaling rule keep one base LR: the best (mean over seeds) at that rule's
    smallest batch size, then scaled by the rule to every B (how a rule is used in practice:
    tune at small B, scale up)."""
    if runs.empty or "scaling" not in runs:
        return runs
    keep = []
    for _, r in runs.groupby("scaling", dropna=False, sort=True):
        small = r[r["batch_size"] == r["batch_size"].min()]
        stats = seed_stats(small, ["base_lr"], value)
        if stats.empty:
            continue
        stats = stats.sort_values("mean", ascending=not higher_is_better, kind="stable")
        lr = stats["base_lr"].iloc[0]
        keep.append(r[r["base_lr"].isna() if pd.isna(lr) else r["base_lr"] == lr])
    return pd.concat(keep) if keep else runs.iloc[0:0]


# --------------------------------------------------------------- per-arm LR tables
def lr_table(runs: pd.DataFrame, value: str = "test_loss") -> pd.DataFrame:
    """Per (name, batch_size, base_lr): mean, std, n of the final ``value`` over seeds of the
    finished runs; a diverged or failed run counts as +inf (the LR is unusable there), so a
    setting with any such seed has mean +inf. ``name`` is the arm (the preset's name)."""
    cols = ["name", "batch_size", "base_lr", "peak_lr", "mean", "std", "n", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    v = metric(runs, value).where(runs["status"] == "finished", math.inf)
    data = runs.assign(_v=v)
    rows = []
    for (name, b, lr), g in data.groupby(["name", "batch_size", "base_lr"], sort=True, dropna=False):
        vals = g["_v"].astype(float)
        ok = np.isfinite(vals).all()
        rows.append({"name": name, "batch_size": b, "base_lr": lr, "peak_lr": g["peak_lr"].iloc[0],
                     "mean": float(vals.mean()) if ok else math.inf,
                     "std": float(vals.std(ddof=1)) if ok and len(vals) > 1 else math.nan,
                     "n": int(len(vals)),
                     "seeds": tuple(sorted(int(s) for s in g["seed"].dropna().unique())) if "seed" in g else ()})
    return pd.DataFrame(rows, columns=cols)


def best_lr_rows(runs: pd.DataFrame, arms: Sequence[str], value: str = "test_loss") -> pd.DataFrame:
    """Per arm (in ``arms`` order): the ``lr_table`` row of its best LR (lowest mean final
    ``value`` over seeds) and the steps that arm takes at that LR (``steps``)."""
    f = runs[runs["name"].isin(arms)] if "name" in runs else runs.iloc[0:0]
    table = lr_table(f, value)
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


def arm_curve(history: pd.DataFrame, arm: str, base_lr: float, value: str = "test_loss") -> pd.DataFrame:
    """Per eval step of arm ``arm`` at ``base_lr``: the seed mean, min and max of ``value``
    (``loss``, ``lo``, ``hi``), the tokens seen and the batch size then (``b``; NaN where the
    history lacks it). Empty when the history holds no such rows."""
    cols = ["step", "loss", "lo", "hi", "tokens", "b"]
    if history.empty or "name" not in history:
        return pd.DataFrame(columns=cols)
    h = history[(history["name"] == arm) & np.isclose(history["base_lr"].astype(float), float(base_lr))]
    if h.empty:
        return pd.DataFrame(columns=cols)
    h = h.assign(_b=h["current_batch_size"] if "current_batch_size" in h else np.nan,
                 _t=h["tokens"] if "tokens" in h else np.nan)
    g = h.groupby("step").agg(loss=(value, "mean"), lo=(value, "min"), hi=(value, "max"),
                              tokens=("_t", "first"), b=("_b", "first"))
    return g.sort_index().reset_index()[cols]


def best_per_batch(table: pd.DataFrame) -> pd.DataFrame:
    """Per (name, batch_size) of an ``lr_table``: the best LR row (lowest mean) plus the LR
    sensitivity band: ``band_low`` / ``band_high`` (lowest and highest finite mean over the LR
    grid) and ``band_width`` (their difference); ``lr_at_grid_edge``: the best LR is the grid's end."""
    rows = []
    for (name, b), g in table.groupby(["name", "batch_size"], sort=True):
        g = g.sort_values("mean", kind="stable")
        best = g.iloc[0].to_dict()
        ok = g["mean"][np.isfinite(g["mean"].astype(float))]
        best.update(band_low=float(ok.min()) if len(ok) else math.nan,
                    band_high=float(ok.max()) if len(ok) else math.nan,
                    n_lrs=len(g), n_lrs_finite=len(ok),
                    lr_at_grid_edge=bool(best["base_lr"] in (g["base_lr"].min(), g["base_lr"].max())))
        best["band_width"] = best["band_high"] - best["band_low"]
        rows.append(best)
    cols = [*table.columns, "band_low", "band_high", "n_lrs", "n_lrs_finite", "lr_at_grid_edge", "band_width"]
    return pd.DataFrame(rows, columns=cols)


def arm_row(best: pd.DataFrame, name: str, b: float) -> dict | None:
    """The ``best_per_batch`` row of arm ``name`` at batch size ``b`` (None if absent)."""
    r = best[(best["name"] == name) & (best["batch_size"] == b)]
    return None if r.empty else r.iloc[0].to_dict()


def best_lr_curves(history: pd.DataFrame, best: pd.DataFrame, name: str,
                   x: str = "tokens") -> dict[float, pd.Series]:
    """{B: seed-mean test loss vs ``x`` (tokens or step)} of each B's best LR in arm ``name``."""
    out = {}
    for r in best[best["name"] == name].to_dict("records"):
        h = history[(history["name"] == name) & (history["batch_size"] == r["batch_size"])
                    & np.isclose(history["base_lr"].astype(float), float(r["base_lr"]))]
        if len(h):
            out[float(r["batch_size"])] = h.groupby(x)["test_loss"].mean().sort_index()
    return out
