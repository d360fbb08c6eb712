"""Run records -> the grid table the laws are fitted on.

One row per finished run: ``num_params`` (N, the record's parameter count), ``tokens`` (D: the
run's total steps x batch size x tokens per example; examples for data without tokens),
``batch_size`` (B, per step), ``lr`` (the base LR), ``seed``, ``loss`` (the final value of
``metric``, by default ``final_test_loss``) and ``run_id``. Runs that did not finish, diverged,
or use a batch-size schedule (B is then not one number) are left out and counted.

``grid_table_at`` reads one row per (run, data size D) from the runs' evaluations instead: at a
constant LR without warmup the weights after D tokens of a longer run are those of a run of D
tokens (same data order; nothing in the step depends on the total), so one run per
(N, B, LR, seed) gives every D at which it was evaluated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import load_history, load_records

TABLE_COLUMNS = ("num_params", "tokens", "batch_size", "lr", "seed", "loss", "run_id")


class GridError(ValueError):
    """The results directory does not hold a grid the laws can be fitted on."""


def _tokens(runs: pd.DataFrame) -> pd.Series:
    per = pd.to_numeric(runs.get("tokens_per_example", pd.Series(math.nan, index=runs.index)), errors="coerce")
    per = per.where(np.isfinite(per) & (per > 0), 1.0)
    return pd.to_numeric(runs["total_steps"], errors="coerce") * pd.to_numeric(runs["batch_size"]) * per


def _scheduled(runs: pd.DataFrame) -> pd.Series:
    """Runs whose batch size changes during training (a record names its constant B "constant")."""
    sched = runs.get("batch_schedule", pd.Series(None, index=runs.index))
    return sched.notna() & ~sched.astype(str).isin(["constant", "none", ""])


def grid_table(runs: pd.DataFrame, metric: str = "final_test_loss") -> tuple[pd.DataFrame, dict[str, int]]:
    """The grid table from ``load_records`` rows, and how many runs were left out and why."""
    if metric not in runs:
        raise GridError(f"the records have no {metric!r} (choose --metric among the final_* columns)")
    dropped: dict[str, int] = {}
    keep = pd.Series(True, index=runs.index)
    for why, mask in (("not finished", runs["status"] != "finished"),
                      ("batch-size schedule", _scheduled(runs)),
                      (f"no finite {metric}", ~np.isfinite(pd.to_numeric(runs[metric], errors="coerce")))):
        mask = mask & keep
        if mask.any():
            dropped[why] = int(mask.sum())
        keep &= ~mask
    r = runs[keep]
    table = pd.DataFrame({"num_params": pd.to_numeric(r["num_params"], errors="coerce").astype(float),
                          "tokens": _tokens(r).astype(float), "batch_size": pd.to_numeric(r["batch_size"]).astype(float),
                          "lr": pd.to_numeric(r["base_lr"], errors="coerce").astype(float),
                          "seed": r["seed"], "loss": pd.to_numeric(r[metric]).astype(float),
                          "run_id": r["run_id"]}, columns=list(TABLE_COLUMNS))
    return table.reset_index(drop=True), dropped


def grid_table_at(table: pd.DataFrame, history: pd.DataFrame, data_sizes, metric: str = "test_loss") -> pd.DataFrame:
    """The rows of ``table`` (``grid_table``'s) repeated at each data size D of ``data_sizes``:
    ``tokens`` = D and ``loss`` = the run's ``metric`` at its evaluation after D tokens (a run
    evaluated neither at D nor beyond has no row; one not evaluated exactly at D raises, as an
    interpolated loss would not be a run's loss)."""
    if history.empty or metric not in history:
        raise GridError(f"the records' histories have no {metric!r} (needed to read the loss at each D)")
    h = history[history["run_id"].isin(set(table["run_id"]))]
    rows = []
    for d in data_sizes:
        at = h[np.isclose(h["tokens"].to_numpy(float), float(d))].drop_duplicates("run_id", keep="last")
        longer = set(table.loc[table["tokens"] >= d, "run_id"])
        if missing := sorted(longer - set(at["run_id"])):
            raise GridError(f"{len(missing)} runs of {d:g}+ tokens have no evaluation at D = {d:g} tokens "
                            "(set eval.every_steps_at so that every B evaluates there)")
        loss = at.set_index("run_id")[metric].astype(float)
        cell = table[table["run_id"].isin(loss.index)].assign(tokens=float(d))
        rows.append(cell.assign(loss=cell["run_id"].map(loss)))
    return pd.concat(rows, ignore_index=True) if rows else table.iloc[:0]


def load_grid(root: Path | str, metric: str = "final_test_loss",
              data_sizes=None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(grid table, history of the same runs, runs left out) for a results directory; with
    ``data_sizes``, the table of ``grid_table_at`` (``metric`` then a history column)."""
    runs = load_records(root)
    if runs.empty:
        raise GridError(f"no run records under {root}")
    table, dropped = grid_table(runs, "final_test_loss" if data_sizes else metric)
    if table.empty:
        raise GridError(f"no finished run under {root} has a finite {metric}")
    history = load_history(root)
    if not history.empty:
        history = history[history["run_id"].isin(set(table["run_id"]))]
    if data_sizes:
        table = grid_table_at(table, history, data_sizes, metric)
    return table, history, dropped


def check_grid(table: pd.DataFrame) -> None:
    """A grid the fits can use: per (N, D) at least 3 batch sizes and 3 LRs; >= 2 data sizes."""
    counts = table.groupby(["num_params", "tokens"]).agg(b=("batch_size", "nunique"), lr=("lr", "nunique"))
    usable = counts[(counts["b"] >= 3) & (counts["lr"] >= 3)]
    if usable.empty:
        raise GridError("no (N, D) cell has >= 3 batch sizes and >= 3 LRs (a quadratic landscape needs them)")
    if usable.reset_index()["tokens"].nunique() < 2:
        raise GridError("the usable cells span one data size D; the laws need >= 2")
