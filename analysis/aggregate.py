"""Seed statistics and setting selection on the run table (pure pandas).

Conventions used by figures and verdicts:

* statistics over seeds are mean and sample standard deviation (ddof=1; NaN for one seed);
* a *setting* is (scaling, base_lr, peak_lr): the LR actually used. When several settings
  exist at one batch size, selection rules are explicit functions here, never implicit.
"""

from __future__ import annotations

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
