"""The critical batch size (Zhang et al. 2024): pure functions of the history tables.

``critical_batch_size`` is the B where steps to a target loss exceed perfect linear scaling
from the smallest B by ``overhead`` (20%), computed per (model, data size) cell from each
seed's first crossing of the target (``crossing_steps``; ``cbs_cell``). Statistics over seeds
as in ``analysis.verdicts``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.steps_to_result import Goal


def critical_batch_size(table: pd.DataFrame, overhead: float = 0.2) -> dict[str, Any]:
    """The batch size at which steps to the target exceed perfect linear scaling from the
    smallest batch size B0 by ``overhead`` (Zhang et al.: 20%).

    ``table``: ``batch_size, steps`` (NaN: not reached) and optionally ``max_steps`` (the steps
    the runs had). Excess over perfect scaling e(B) = S(B) B / (S(B0) B0) (e(B0) = 1); the CBS is
    where e first crosses 1 + overhead, interpolated linearly in (log B, e) between the last
    batch size within and the first beyond. A batch size that never reached the target has
    e >= max_steps B / (S(B0) B0): that lower bound is used (the CBS is then an upper bound,
    ``upper_bound_only``). Returns ``cbs`` (inf when no batch size exceeds: ``censored``),
    ``bracket`` (the two batch sizes around the crossing) and the excess per B.
    """
    t = table.sort_values("batch_size").reset_index(drop=True)
    if t.empty or not np.isfinite(float(t["steps"].iloc[0])):
        return {"cbs": math.nan, "bracket": (math.nan, math.nan), "censored": False,
                "upper_bound_only": False, "excess": {}, "reason": "the smallest batch size did not reach the target"}
    b, s = t["batch_size"].to_numpy(float), t["steps"].to_numpy(float)
    cap = t["max_steps"].to_numpy(float) if "max_steps" in t else np.full(len(t), np.nan)
    ref = s[0] * b[0]
    reached = np.isfinite(s)
    e = np.where(reached, s * b / ref, cap * b / ref)
    limit = 1 + overhead
    excess = {float(bi): (float(ei) if reached[i] else math.nan) for i, (bi, ei) in enumerate(zip(b, e))}
    for i in range(1, len(b)):
        beyond = (e[i] > limit) if reached[i] else (not np.isfinite(e[i]) or e[i] > limit)
        if not beyond:
            continue
        if not np.isfinite(e[i]):  # unreached with no step count: only the bracket is known
            cbs = math.sqrt(b[i - 1] * b[i])
        else:
            frac = (limit - e[i - 1]) / (e[i] - e[i - 1]) if e[i] != e[i - 1] else 0.0
            cbs = float(math.exp(math.log(b[i - 1]) + min(max(frac, 0.0), 1.0) * math.log(b[i] / b[i - 1])))
        return {"cbs": cbs, "bracket": (float(b[i - 1]), float(b[i])), "censored": False,
                "upper_bound_only": not reached[i], "excess": excess, "reason": ""}
    return {"cbs": math.inf, "bracket": (float(b[-1]), math.inf), "censored": True,
            "upper_bound_only": False, "excess": excess,
            "reason": f"within {overhead:.0%} of perfect scaling up to the largest B = {b[-1]:g}"}


def crossing_steps(history: pd.DataFrame, goal: Goal) -> pd.DataFrame:
    """Per run: ``steps`` at which the goal is first met, interpolated linearly between the
    evaluation before and the first one meeting it (NaN: never met), and ``max_steps`` (the
    run's last evaluated step). Interpolation removes most of the evaluation cadence from the
    20% comparisons of the CBS."""
    cols = ["run_id", "batch_size", "seed", "base_lr", "steps", "max_steps"]
    rows = []
    for rid, h in history.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=False):
        v = goal.values(h).to_numpy(float)
        st = h["step"].to_numpy(float)
        ok = goal.reached(h).fillna(False).to_numpy(bool)
        steps = math.nan
        if ok.any():
            i = int(np.argmax(ok))
            steps = st[i]
            if i > 0 and np.isfinite(v[i - 1]) and v[i - 1] != v[i]:
                steps = st[i - 1] + (goal.target - v[i - 1]) / (v[i] - v[i - 1]) * (st[i] - st[i - 1])
        first = h.iloc[0]
        rows.append({"run_id": rid, "batch_size": first["batch_size"], "seed": first.get("seed"),
                     "base_lr": first.get("base_lr"), "steps": float(steps), "max_steps": float(st[-1])})
    return pd.DataFrame(rows, columns=cols)


def steps_per_seed(history: pd.DataFrame, goal: Goal) -> pd.DataFrame:
    """Per (batch_size, seed): the fewest (interpolated) steps to the goal over the LR grid
    (NaN: no LR reached it) and ``max_steps`` (the longest run there)."""
    t = crossing_steps(history, goal)
    if t.empty:
        return pd.DataFrame(columns=["batch_size", "seed", "steps", "max_steps"])
    g = t.groupby(["batch_size", "seed"], sort=True)
    return g.agg(steps=("steps", "min"), max_steps=("max_steps", "max")).reset_index()


def cbs_cell(history: pd.DataFrame, goal: Goal, overhead: float = 0.2) -> dict[str, Any]:
    """The CBS of one (model, data size) cell: from the steps averaged over seeds (each seed's
    best LR; a batch size counts as reached only if every seed reached the goal) and per seed
    (the seed spread is the uncertainty besides the grid bracket)."""
    per_seed = steps_per_seed(history, goal)
    if per_seed.empty:
        return {"cbs": math.nan, "per_seed": {}, "table": per_seed, "bracket": (math.nan, math.nan)}
    mean = per_seed.groupby("batch_size").agg(steps=("steps", lambda x: x.mean() if x.notna().all() else math.nan),
                                             max_steps=("max_steps", "max")).reset_index()
    overall = critical_batch_size(mean, overhead)
    seeds = {int(s): critical_batch_size(g[["batch_size", "steps", "max_steps"]], overhead)["cbs"]
             for s, g in per_seed.groupby("seed")}
    finite = [v for v in seeds.values() if math.isfinite(v)]
    return {**overall, "per_seed": seeds, "seed_min": min(finite) if finite else math.nan,
            "seed_max": max(finite) if finite else math.nan, "table": mean}
