"""Zhang 2024, Bergsma 2025, StepFun 2025: the optimal batch size grows with data size D and
hardly with model size N.

Cells: one per (model size N, data size D), the loss of each run at D tokens read from its
evaluations (``analysis.laws.records.grid_table_at``: at a constant LR one run gives every D).
Per cell the optimum (B_opt, LR_opt) of the fitted (ln B, ln LR) landscape with bootstrap
intervals over seeds and grid points (``analysis.laws.landscape``); then the power law
B_opt(N, D) = k N^a D^b with bootstrap intervals of a and b (``analysis.laws.power``), and the
audit of every published law (its exponents beside ours; the loss gap of its predicted (B, LR)
after refitting its constant, ``analysis.laws.audit``).

Verdicts: (1) B_opt grows with D: the 95% interval of b lies above 0 (reversed: below 0);
(2) B_opt hardly depends on N: the interval of a lies inside [-n_tolerance, n_tolerance] (not
reproduced when it lies outside; inconclusive when it straddles a bound: the grid cannot tell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.baselines import load_baselines
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.laws.audit import audit, published_laws
from analysis.laws.figures import landscape_figure, laws_figure
from analysis.laws.landscape import cell_optima
from analysis.laws.power import PowerLaw, fit_laws
from analysis.laws.records import GridError, grid_table, grid_table_at
from analysis.plotting import no_data
from analysis.report import md_table
from analysis.report_format import fmt
from analysis.verdicts import Verdict

META_OPTIONS = ("data_sizes", "n_tolerance", "n_boot")
LAWS_DIR = "laws"
CLAIM_ENTRIES = ("zhang2024/claim/data_not_model", "bergsma2025/claim/bopt_bcrit_data",
                 "stepfun2025/claim/bopt_data_lr_both")


def laws_of(runs: pd.DataFrame, history: pd.DataFrame, data_sizes: Sequence[float], n_boot: int = 200):
    """(grid table, cells with their optima, per-cell fits, laws) of the records; GridError when
    the records do not make a grid."""
    if runs.empty:
        raise GridError("no run records")
    table, _ = grid_table(runs)
    table = grid_table_at(table, history, data_sizes) if data_sizes else table
    cells, fits = cell_optima(table, n_boot=n_boot)
    laws = fit_laws(cells, {k: v.draws for k, v in fits.items()}, n_boot=n_boot)
    return table, cells, fits, laws


def _interval_text(law: PowerLaw, v: str) -> str:
    lo, hi = law.intervals[v]
    return f"{law.exponents[v]:.3f} [{lo:.3f}, {hi:.3f}]"


def scaling_verdicts(law: PowerLaw, *, n_tolerance: float = 0.2, seeds: tuple[int, ...] = (),
                     cells: pd.DataFrame | None = None) -> list[Verdict]:
    """The two verdicts from the joint law B_opt = k N^a D^b (``law``: ``power_law`` of b_opt in
    (num_params, tokens))."""
    note = "95% percentile bootstrap over seeds and grid points of every cell (refitted per draw)"
    if law.reason or not all(math.isfinite(x) for x in (*law.intervals["tokens"], *law.intervals["num_params"])):
        why = law.reason or "no interval"
        return [Verdict("scaling_laws", claim, "inconclusive", "", seeds, details=f"B_opt(N, D): {why}")
                for claim in ("B_opt grows with data size D", "B_opt hardly depends on model size N")]
    d_lo, d_hi = law.intervals["tokens"]
    n_lo, n_hi = law.intervals["num_params"]
    numbers = {"exponent_D": law.exponents["tokens"], "exponent_D_lo": d_lo, "exponent_D_hi": d_hi,
               "exponent_N": law.exponents["num_params"], "exponent_N_lo": n_lo, "exponent_N_hi": n_hi,
               "cells": law.n_cells, "r2_log": law.r2}
    data = Verdict("scaling_laws", "B_opt grows with data size D (at fixed N)",
                   "reproduced" if d_lo > 0 else "reversed" if d_hi < 0 else "not reproduced",
                   f"the interval of b in B_opt = k N^a D^b above 0; {note}", seeds, numbers,
                   f"b = {_interval_text(law, 'tokens')}", cells)
    inside = -n_tolerance <= n_lo and n_hi <= n_tolerance
    outside = n_lo > n_tolerance or n_hi < -n_tolerance
    model = Verdict("scaling_laws", "B_opt hardly depends on model size N (at fixed D)",
                    "reproduced" if inside else "not reproduced" if outside else "inconclusive",
                    f"the interval of a inside [-{n_tolerance:g}, {n_tolerance:g}] (outside: not reproduced; "
                    f"straddling a bound: the grid cannot tell); {note}", seeds, dict(numbers),
                    f"a = {_interval_text(law, 'num_params')}")
    return [data, model]


class ScalingLaws(Finding):
    name = "scaling_laws"
    title = "Zhang 2024, Bergsma 2025, StepFun 2025: B_opt grows with data size, hardly with model size"
    sources = ("zhang2024", "bergsma2025", "stepfun2025", "deepseek2024")
    offline = (Arm("scaling_laws_n1"), Arm("scaling_laws_n2"), Arm("scaling_laws_n3"))
    paper = (Arm("scaling_laws_paper_n1"), Arm("scaling_laws_paper_n2"), Arm("scaling_laws_paper_n3"))
    defaults = {"n_tolerance": 0.2, "n_boot": 200}
    one_paper_report = True
    meta_options = META_OPTIONS


    def _laws(self, runs, history, data_sizes, n_boot):
        try:
            return laws_of(runs, history, data_sizes or (), n_boot)
        except GridError as exc:
            return exc

    def verdicts(self, runs, history, *, data_sizes=(), n_tolerance=0.2, n_boot=200, **_):
        seeds = tuple(sorted(int(x) for x in runs["seed"].dropna().unique())) if "seed" in runs else ()
        got = self._laws(runs, history, data_sizes, n_boot)
        if isinstance(got, Exception):
            return [Verdict("scaling_laws", "B_opt grows with data size D", "inconclusive", "", seeds,
                            details=str(got))]
        table, cells, fits, laws = got
        out = scaling_verdicts(laws["b_opt(N,D)"], n_tolerance=n_tolerance, seeds=seeds, cells=cells)
        # each published law's exponents beside ours (the loss gaps: the footer, from analysis.laws)
        out[1].table = audit(cells, fits, table, published_laws(load_baselines()), n_boot=n_boot)["exponents"]
        return out

    def figures(self, runs, history, out, *, data_sizes=(), n_boot=200, **_) -> FigureBuilders:
        def build(which):
            got = self._laws(runs, history, data_sizes, n_boot)
            if isinstance(got, Exception):
                no_data(str(got))
            table, cells, fits, laws = got
            return landscape_figure(table, fits) if which == "landscape" else laws_figure(cells, laws)
        return {"scaling_laws_landscape": lambda: build("landscape"),
                "scaling_laws_fits": lambda: build("laws")}

    def after_training(self, records, out, options, *, batch_sizes=None, paper=False):
        """The fitter's full output (cells, laws, audit, figures) under ``out/laws``."""
        from analysis.laws.__main__ import main as laws_main
        sizes = [str(d) for d in options.get("data_sizes", ())]
        laws_main([str(records), "--out", str(out / LAWS_DIR), "--n-boot", str(options.get("n_boot", 200)),
                   *(["--data-sizes", *sizes] if sizes else [])])

    def footer(self, out):
        """The audit's loss gaps (each source's predicted (B, LR), constants refitted)."""
        gaps = out / LAWS_DIR / "audit_gaps.csv"
        if not gaps.is_file():
            return ""
        return "\n".join(["## Audit: loss gap of each published law's (B, LR) on our grid", "",
                          "Each law's constant refitted to our optima (constants do not transfer between "
                          "setups), its exponents kept; the gap is the fitted loss at its (B, LR) minus the "
                          f"cell's optimum (nats). Full output: `{LAWS_DIR}/report.md`.", "",
                          md_table(pd.read_csv(gaps)), ""])

    def comparison(self, verdicts, bl):
        rows = []
        if len(verdicts) > 1 and verdicts[1].table is not None and len(verdicts[1].table):
            for r in verdicts[1].table.to_dict("records"):
                rows.append(Comparison(f"exponent of {r['target']} in {r['variable']}",
                                       f"{fmt(r['ours'], 3)} [{fmt(r['ours_lo'], 3)}, {fmt(r['ours_hi'], 3)}]",
                                       fmt(r["published"], 3), r["law"], (r["law"],)))
        if verdicts and verdicts[0].numbers:
            n = verdicts[0].numbers
            rows.append(Comparison("B_opt = k N^a D^b: (a, b)",
                                   f"a {fmt(n['exponent_N'], 3)} [{fmt(n['exponent_N_lo'], 3)}, "
                                   f"{fmt(n['exponent_N_hi'], 3)}], b {fmt(n['exponent_D'], 3)} "
                                   f"[{fmt(n['exponent_D_lo'], 3)}, {fmt(n['exponent_D_hi'], 3)}]",
                                   "a ~ 0, b > 0", "zhang2024, bergsma2025, stepfun2025 (claims)", CLAIM_ENTRIES))
        return rows


FINDING = ScalingLaws()
