"""``python -m analysis.laws <results dir>``: fit the hyperparameter laws on a grid of records.

Writes to ``--out`` (default ``<results dir>/laws``): ``cells.csv`` (per (N, D): the optimum of
the fitted landscape with 95% bootstrap intervals), ``laws.csv`` (B_opt(D), B_opt(N, D),
LR_opt(N, D), B_crit(D) with exponent intervals), ``audit_exponents.csv`` and ``audit_gaps.csv``
(each published law's exponents beside ours; the loss gap of its prediction after refitting its
constant), ``report.md``, and the figures. Bad input: one ``error:`` line, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.baselines import load_baselines
from analysis.laws.audit import audit, published_laws
from analysis.laws.critical import cbs_cells
from analysis.laws.figures import landscape_figure, laws_figure
from analysis.laws.landscape import cell_optima
from analysis.laws.power import fit_laws
from analysis.laws.published_data import (PublishedDataError, b_opt_overlay_figure, load_csv,
                                          steps_overlay_figure)
from analysis.laws.records import GridError, check_grid, load_grid
from analysis.plotting import save_figures
from analysis.report import md_table
from bench.record import atomic_write_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.laws", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a results directory holding the grid's run records")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <results>/laws)")
    p.add_argument("--metric", default=None, help="the records' final metric to fit (default final_test_loss)")
    p.add_argument("--data-sizes", type=float, nargs="+", default=None, metavar="D",
                   help="read each run's loss at these token counts from its evaluations (constant-LR "
                        "runs: one run gives every D; --metric is then a history column, default test_loss)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap draws per cell (20 .. 10000)")
    p.add_argument("--no-figures", action="store_true", help="write tables and the report only")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _laws_table(laws) -> pd.DataFrame:
    rows = []
    for name, law in laws.items():
        for v in law.variables:
            rows.append({"law": name, "target": law.target, "variable": v, "exponent": law.exponents[v],
                         "lo": law.intervals[v][0], "hi": law.intervals[v][1], "coefficient": law.coefficient,
                         "cells": law.n_cells, "r2_log": law.r2, "reason": law.reason})
    return pd.DataFrame(rows)


def _report(cells, laws_t, aud, dropped) -> str:
    lines = ["# Hyperparameter laws", "",
             "Per (N, D) cell: optimum of a quadratic fit of the final loss in (ln B, ln LR); intervals: 95% "
             "percentile bootstrap over seeds and grid points (laws: refitted on each draw).", ""]
    if dropped:
        lines += ["Runs left out: " + ", ".join(f"{k}: {v}" for k, v in dropped.items()), ""]
    for title, frame in (("Cells", cells), ("Laws", laws_t), ("Published exponents beside ours", aud["exponents"]),
                         ("Loss gap of each source's prediction (constants refitted)", aud["gaps"])):
        lines += [f"## {title}", "", md_table(frame) if len(frame) else "(none)", ""]
    lines += ["Published entries whose confidence is not `high` are provisional (see published.yaml).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.results.is_dir():
        return _fail(f"results directory {args.results} does not exist")
    if not 20 <= args.n_boot <= 10000:
        return _fail(f"--n-boot {args.n_boot} is outside 20 .. 10000")
    out = args.out or args.results / "laws"
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} exists and is not a directory")
    try:
        metric = args.metric or ("test_loss" if args.data_sizes else "final_test_loss")
        table, history, dropped = load_grid(args.results, metric, args.data_sizes)
        check_grid(table)
    except GridError as exc:
        return _fail(str(exc))
    cells, fits = cell_optima(table, n_boot=args.n_boot)
    cbs, ours_steps = cbs_cells(table, history)
    if len(cbs):
        cells = cells.merge(cbs[["num_params", "tokens", "cbs"]], on=["num_params", "tokens"], how="left")
    laws = fit_laws(cells, {k: v.draws for k, v in fits.items()}, n_boot=args.n_boot)
    published = published_laws(load_baselines())
    aud = audit(cells, fits, table, published, n_boot=args.n_boot)
    out.mkdir(parents=True, exist_ok=True)
    laws_t = _laws_table(laws)
    for name, frame in (("cells", cells), ("laws", laws_t), ("audit_exponents", aud["exponents"]),
                        ("audit_gaps", aud["gaps"]), ("audit_cells", aud["cells"])):
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
    atomic_write_text(out / "report.md", _report(cells, laws_t, aud, dropped))
    if not args.no_figures:
        def zhang():
            try:
                return load_csv("zhang2024", "steps_to_target.csv")
            except PublishedDataError:
                return pd.DataFrame()
        done = save_figures({"laws_landscape": lambda: landscape_figure(table, fits),
                             "laws_fits": lambda: laws_figure(cells, laws),
                             "laws_b_opt_overlay": lambda: b_opt_overlay_figure(cells, published),
                             "laws_steps_overlay": lambda: steps_overlay_figure(ours_steps, zhang())}, out)
        for name, what in done.items():
            print(f"{name}: {what if isinstance(what, str) else ', '.join(str(p) for p in what)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
