"""Steps-to-result (Shallue et al. 2019) and the regimes of data parallelism.

Definitions (all on the history table of ``analysis.load.load_history``):

* A *trial* is one run (one LR value x one seed) at one batch size. Its steps-to-goal is the
  ``step`` of its first eval row meeting the goal (so the resolution is the eval cadence);
  NaN if it never does. Every run with history counts, whatever its final status (a run that
  reached the goal and diverged later still reached it).
* ``steps`` at batch size B (Shallue's steps-to-result): the fewest steps-to-goal over all
  trials at B; ``best_lr`` is that trial's LR (metaparameters tuned per B). ``mean_steps``
  and ``std_steps`` are over the seeds of the best trial's setting (scaling, base_lr, LR)
  that reached the goal (``n_seeds_reached`` of ``n_seeds``): the seed spread of the tuned
  result.
* Perfect scaling up to B: the largest B such that every B' <= B (that reached the goal)
  needs at most ``(1 + tol)`` times the perfect-scaling steps ``S(B0) * B0 / B'`` (B0 the
  smallest batch size). Default tol = 0.2.
* Local scaling efficiency between consecutive batch sizes:
  ``log(S_prev / S) / log(B / B_prev)`` (1 = perfect scaling, 0 = no gain).
  Regime of each B: "perfect scaling" inside the perfect-scaling range, else "maximal data
  parallelism" when the local efficiency is below ``flat`` (default 0.1), else
  "diminishing returns".
* Critical batch size (measured): fit McCandlish et al.'s ``S = S_min (1 + B_noise / B)`` to
  the (B, steps) points by least squares on relative residuals; ``b_crit = B_noise``, the B
  where the steps are twice the asymptotic minimum, i.e. where the curve turns from
  perfect scaling (S ~ S_min B_noise / B) to its plateau (S ~ S_min). ``b_crit`` is ``inf``
  when no plateau is visible in the data (the fitted S_min <= 0) and 0 when no perfect
  scaling is visible (the fitted slope <= 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

TRIAL_COLUMNS = ("run_id", "batch_size", "scaling", "base_lr", "peak_lr", "seed", "status")


@dataclass(frozen=True)
class Goal:
    """A goal on an eval-row metric. ``test_error``/``train_error`` are derived as
    ``1 - *_accuracy`` when the history has no such column."""

    target: float
    metric: str = "test_accuracy"
    higher_is_better: bool = True

    @classmethod
    def accuracy(cls, target: float, split: str = "test") -> Goal:
        return cls(float(target), f"{split}_accuracy", True)

    @classmethod
    def error(cls, goal_error: float, split: str = "test") -> Goal:
        return cls(float(goal_error), f"{split}_error", False)

    def values(self, history: pd.DataFrame) -> pd.Series:
        if self.metric in history:
            return pd.to_numeric(history[self.metric], errors="coerce")
        if self.metric.endswith("_error"):
            acc = self.metric.removesuffix("_error") + "_accuracy"
            if acc in history:
                return 1.0 - pd.to_numeric(history[acc], errors="coerce")
        raise KeyError(f"history has no column {self.metric!r} for the goal {self}")

    def reached(self, history: pd.DataFrame) -> pd.Series:
        v = self.values(history)
        return v >= self.target if self.higher_is_better else v <= self.target

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.target:g}"


def resolve_goal(runs: pd.DataFrame, target_accuracy: float | None = None,
                 goal_error: float | None = None) -> Goal | None:
    """The goal asked for (an error goal first), else the records' own target
    (``convergence.target_test_accuracy``, median over runs), else None."""
    if goal_error is not None:
        return Goal.error(goal_error)
    if target_accuracy is not None:
        return Goal.accuracy(target_accuracy)
    if "target_test_accuracy" in runs and runs["target_test_accuracy"].notna().any():
        return Goal.accuracy(float(runs["target_test_accuracy"].median()))
    return None


def trials(history: pd.DataFrame, goal: Goal) -> pd.DataFrame:
    """One row per run: its identity and ``steps`` (first eval step meeting the goal, NaN
    if never) and ``examples`` (examples seen then, when the history logs them)."""
    cols = [c for c in TRIAL_COLUMNS if c in history.columns]
    if history.empty:
        return pd.DataFrame(columns=[*cols, "steps", "examples"])
    h = history.sort_values(["run_id", "step"], kind="stable")
    hit = h[goal.reached(h).fillna(False).to_numpy(bool)]
    first = hit.groupby("run_id", sort=False).head(1).set_index("run_id")
    out = h.groupby("run_id", sort=False).head(1)[cols].set_index("run_id")
    out["steps"] = first["step"].reindex(out.index).astype(float)
    out["examples"] = (first["examples"].reindex(out.index).astype(float)
                       if "examples" in first else out["steps"] * out["batch_size"])
    return out.reset_index()


def steps_to_result(history: pd.DataFrame, goal: Goal, lr: str = "peak_lr") -> pd.DataFrame:
    """Per batch size: ``batch_size, steps, examples, best_lr, n_trials, n_reached,
    mean_steps, std_steps, n_seeds, n_seeds_reached`` (see module doc)."""
    t = trials(history, goal)
    rows = []
    for b, tb in t.groupby("batch_size", sort=True):
        reached = tb[tb["steps"].notna()]
        row = {"batch_size": b, "steps": math.nan, "examples": math.nan, "best_lr": math.nan,
               "n_trials": len(tb), "n_reached": len(reached), "mean_steps": math.nan,
               "std_steps": math.nan, "n_seeds": 0, "n_seeds_reached": 0}
        if len(reached):
            best = reached.sort_values(["steps", lr], kind="stable").iloc[0]
            same = np.isclose(tb[lr].astype(float), float(best[lr]), equal_nan=True)
            for col in ("scaling", "base_lr"):  # the best trial's whole setting, not just its LR
                if col in tb and col != lr:
                    same &= ((tb[col] == best[col]) | (tb[col].isna() & pd.isna(best[col]))).to_numpy()
            at_lr = tb[same]
            ok = at_lr["steps"].dropna()
            row.update(steps=best["steps"], examples=best["examples"], best_lr=best[lr],
                       mean_steps=ok.mean(), std_steps=ok.std(ddof=1) if len(ok) > 1 else math.nan,
                       n_seeds=at_lr["seed"].nunique(), n_seeds_reached=at_lr.loc[ok.index, "seed"].nunique())
        rows.append(row)
    return pd.DataFrame(rows, columns=["batch_size", "steps", "examples", "best_lr", "n_trials",
                                       "n_reached", "mean_steps", "std_steps", "n_seeds",
                                       "n_seeds_reached"])


def _reached(table: pd.DataFrame) -> pd.DataFrame:
    return table[np.isfinite(table["steps"].astype(float))].sort_values("batch_size")


def fit_mccandlish(table: pd.DataFrame) -> dict[str, float]:
    """Fit ``S = s_min (1 + b_noise / B)``; returns ``{s_min, b_noise, b_crit}``."""
    t = _reached(table)
    if len(t) < 2:
        return {"s_min": math.nan, "b_noise": math.nan, "b_crit": math.nan}
    b, s = t["batch_size"].to_numpy(float), t["steps"].to_numpy(float)
    # a + c / B = S, residuals relative to S:  a / S + c / (B S) = 1
    (a, c), *_ = np.linalg.lstsq(np.stack([1 / s, 1 / (b * s)], axis=1), np.ones_like(s), rcond=None)
    if a <= 0:
        b_noise = math.inf
    elif c <= 0:
        b_noise = 0.0
    else:
        b_noise = c / a
    return {"s_min": float(a) if a > 0 else math.nan, "b_noise": b_noise, "b_crit": b_noise}


def perfect_scaling_max_b(table: pd.DataFrame, tol: float = 0.2) -> float:
    """Largest B up to which steps stay within (1 + tol) of perfect scaling from the
    smallest B; NaN when no batch size reached the goal."""
    t = _reached(table)
    if t.empty:
        return math.nan
    b, s = t["batch_size"].to_numpy(float), t["steps"].to_numpy(float)
    excess = s * b / (s[0] * b[0])
    last = b[0]
    for bi, e in zip(b, excess):
        if e > 1 + tol:
            break
        last = bi
    return float(last)


def regimes(table: pd.DataFrame, tol: float = 0.2, flat: float = 0.1) -> pd.DataFrame:
    """The reached rows with ``excess_over_perfect``, ``scaling_efficiency`` and ``regime``."""
    t = _reached(table).copy()
    if t.empty:
        return t.assign(excess_over_perfect=[], scaling_efficiency=[], regime=[])
    b, s = t["batch_size"].to_numpy(float), t["steps"].to_numpy(float)
    t["excess_over_perfect"] = s * b / (s[0] * b[0])
    eff = np.full(len(t), np.nan)
    eff[1:] = np.log(s[:-1] / s[1:]) / np.log(b[1:] / b[:-1])
    t["scaling_efficiency"] = eff
    b_perfect = perfect_scaling_max_b(table, tol)
    t["regime"] = ["perfect scaling" if bi <= b_perfect else
                   ("maximal data parallelism" if e < flat else "diminishing returns")
                   for bi, e in zip(b, eff)]
    return t
