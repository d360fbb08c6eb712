"""Merrill et al. 2025: the local critical batch size, measured by branching, is near zero at
initialization, rises fast, then plateaus; B_simple beside it.

Two staged arms: a ``reference`` run at B0 that checkpoints, and its ``branch`` runs (from each
checkpoint T0, B = k B0 for Delta tokens, LR sqrt(k) eta; ``analysis.reproduce.plan`` plans
them from the branch preset's ``reproduce.branch_from``). A branch's checkpoint is its record's
``parent`` block (tokens). Per (T0, seed): L_k = the EMA (alpha) of the branch's held-out loss
over its evaluations after T0; k* and B* by ``analysis.local_cbs``; B_simple from the reference
run's measurement at T0. Verdicts: rises (from the grid floor B0), plateaus, and how far
B_simple is from B* (ratio with its seed range, trend sign).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders, Preset
from analysis.local_cbs import ema, local_cbs, rise_and_plateau
from analysis.plotting import NoData, new_figure
from analysis.report_format import fmt
from analysis.verdicts import Verdict
from bench.record import read_record

CLAIM = "merrill2025/claim/cbs_over_training"
RECIPE = "merrill2025/recipe/branching"
LOSS = "test_loss"  # the held-out loss: the eval's train loss is a fixed small subset here
NOISE_KEYS = ("noise_scale_simple",)  # estimates beside the direct CBS (reference history columns)


def branch_origins(runs: pd.DataFrame) -> pd.Series:
    """The parent checkpoint's tokens of each run (index: run_id), from its record's ``parent``
    block; NaN for a run that is not a branch."""
    out = {}
    for run_id, path in zip(runs["run_id"], runs["path"]):
        parent = read_record(path).get("parent") or {}
        out[run_id] = float(parent.get("tokens", math.nan))
    return pd.Series(out, dtype=float)


def branch_losses(runs: pd.DataFrame, history: pd.DataFrame, *, branch: str, alpha: float) -> pd.DataFrame:
    """One row per branch run: T0 (its checkpoint's tokens), seed, B, the smoothed final loss."""
    b = runs[runs["name"] == branch]
    if b.empty:
        return pd.DataFrame(columns=["t0", "seed", "batch_size", "loss"])
    origin = branch_origins(b)
    rows = []
    for r in b.to_dict("records"):
        t0 = origin.get(r["run_id"], math.nan)
        h = history[(history["run_id"] == r["run_id"]) & (history["tokens"] > t0)].sort_values("tokens")
        loss = ema(h[LOSS].to_numpy(float), alpha) if len(h) and r["status"] == "finished" else math.nan
        rows.append({"t0": t0, "seed": r["seed"], "batch_size": float(r["batch_size"]), "loss": loss,
                     "status": r["status"]})
    return pd.DataFrame(rows)


def _noise_at(history: pd.DataFrame, reference: str, t0: float, seed: Any, key: str) -> float:
    h = history[(history["name"] == reference) & (history["seed"] == seed)]
    if key not in h:
        return math.nan
    h = h[h[key].notna()]
    if h.empty:
        return math.nan
    near = h.assign(_d=(h["tokens"] - t0).abs()).sort_values("_d").iloc[0]
    return float(near[key])


def cbs_table(runs: pd.DataFrame, history: pd.DataFrame, *, reference: str, branch: str,
              tolerance: float = 0.01, smoothing_alpha: float = 0.5) -> pd.DataFrame:
    """One row per (checkpoint T0, seed): k*, B* (censored at the grid top), the branch grid, and
    each noise estimate of the reference run at T0."""
    losses = branch_losses(runs, history, branch=branch, alpha=smoothing_alpha)
    ref = runs[runs["name"] == reference]
    if losses.empty or ref.empty:
        return pd.DataFrame()
    b0 = float(ref["batch_size"].min())
    rows = []
    for (t0, seed), g in losses.groupby(["t0", "seed"], sort=True):
        by_k = {b / b0: l for b, l in zip(g["batch_size"], g["loss"])}
        cell = local_cbs(by_k, b0, tolerance)
        rows.append({"tokens": t0, "seed": seed, "reference_batch": b0, "k_star": cell["k_star"],
                     "cbs": cell["cbs"], "censored": cell["censored"], "grid_max": max(g["batch_size"]),
                     **{f"loss_B{int(b)}": l for b, l in zip(g["batch_size"], g["loss"])},
                     **{k: _noise_at(history, reference, t0, seed, k) for k in NOISE_KEYS}})
    return pd.DataFrame(rows)


def trajectory_verdicts(cells: pd.DataFrame, *, rise: float = 1.0, plateau: float = 1.0,
                        seeds: tuple[int, ...] = ()) -> list[Verdict]:
    """"Rises from near zero" and "then plateaus" on the per-seed CBS trajectory (see
    ``analysis.local_cbs.rise_and_plateau`` for the tests and tolerances)."""
    tol = (f"seed-median log2 B*: rise >= {rise:g} doubling(s) from the first to the middle checkpoint "
           f"with the seed ranges ordered; plateau: <= {plateau:g} doubling(s) from the middle to the "
           f"last and less than the early rise")
    if cells.empty:
        return [Verdict("merrill_cbs", c, "inconclusive", tol, seeds, details="no branch records")
                for c in ("the local CBS rises from near zero", "the local CBS then plateaus")]
    by_t = cells.groupby("tokens", sort=True)
    tokens = list(by_t.groups)
    shape = rise_and_plateau(tokens, [g["cbs"].to_numpy(float) for _, g in by_t], rise=rise, plateau=plateau)
    numbers = {f"B* at {fmt(t)} tokens (median [min, max] over seeds)":
               f"{fmt(g['cbs'].median(), 3)} [{fmt(g['cbs'].min(), 3)}, {fmt(g['cbs'].max(), 3)}]"
               for t, g in by_t}
    numbers.update({k: shape[k] for k in ("rise_early_doublings", "rise_late_doublings") if k in shape})
    floor = bool((by_t.get_group(tokens[0])["k_star"] == 1).all())
    top_late = bool(by_t.get_group(tokens[-1])["censored"].any())
    reason = str(shape.get("reason", ""))
    rises = "inconclusive" if reason else "reproduced" if shape["rises"] else "not reproduced"
    plateaus = ("inconclusive" if reason or top_late or not shape["rises"] else
                "reproduced" if shape["plateaus"] else "not reproduced")
    note = (("B* at the first checkpoint is the grid floor B0 for every seed (near zero at this "
             "resolution: a bound, not a value). " if floor else "B* at the first checkpoint is above the "
             "grid floor B0. ") + ("Some seed's B* at the last checkpoint is the grid's ceiling: the plateau "
             "cannot be told from the grid's edge. " if top_late else "") + reason)
    return [Verdict("merrill_cbs", "the local CBS is near zero at initialization and rises fast", rises, tol,
                    seeds, numbers, note, cells),
            Verdict("merrill_cbs", "the local CBS then plateaus", plateaus, tol, seeds,
                    {k: numbers[k] for k in list(numbers)[-2:]}, note)]


def noise_verdict(cells: pd.DataFrame, key: str, seeds: tuple[int, ...]) -> Verdict:
    """How far an estimate is from B* (ratio per checkpoint, [min, max] over seeds) and whether
    its trend (last vs first checkpoint, seed medians) has B*'s sign. "reproduced" reads: the
    estimate does NOT track B* (Merrill et al.'s argument), i.e. ratios leave [1/2, 2] or the
    trend signs differ."""
    claim = f"{key} does not predict the local CBS"
    c = cells.dropna(subset=[key, "cbs"]) if key in cells else pd.DataFrame()
    if c.empty:
        return Verdict("merrill_cbs", claim, "inconclusive", "", seeds, details=f"no {key} at the checkpoints")
    ratio = c.assign(r=c[key] / c["cbs"]).groupby("tokens", sort=True)["r"]
    numbers = {f"{key} / B* at {fmt(t)} tokens (median [min, max])":
               f"{fmt(g.median(), 3)} [{fmt(g.min(), 3)}, {fmt(g.max(), 3)}]" for t, g in ratio}
    med = c.groupby("tokens", sort=True)[[key, "cbs"]].median()
    trend = np.sign(np.log(med.iloc[-1] / med.iloc[0])) if len(med) > 1 else pd.Series(dtype=float)
    agree = bool(len(trend) == 2 and trend[key] == trend["cbs"])
    within = bool(ratio.median().between(0.5, 2).all())
    numbers.update({"trend sign agrees (last vs first checkpoint)": agree, "every median ratio within [1/2, 2]": within})
    verdict = "inconclusive" if len(med) < 2 else "not reproduced" if (within and agree) else "reproduced"
    return Verdict("merrill_cbs", claim, verdict, "tracks = every checkpoint's seed-median ratio within "
                   "[1/2, 2] (one grid step) and the same trend sign", seeds, numbers)


class MerrillCBS(Finding):
    name = "merrill_cbs"
    title = "Merrill et al. 2025: the local critical batch size over training, measured by branching"
    sources = ("merrill2025", "mccandlish2018")
    offline = (Arm("merrill_cbs_offline", "reference"), Arm("merrill_cbs_offline_branch", "branch"))
    paper = (Arm("merrill_cbs_olmo1b", "reference"), Arm("merrill_cbs_olmo1b_branch", "branch"))
    defaults = {"tolerance": 0.01, "smoothing_alpha": 0.5, "rise": 1.0, "plateau": 1.0}
    one_paper_report = True

    def options(self, presets: Sequence[Preset]) -> dict[str, Any]:
        opts = super().options(presets)
        for preset in presets:
            opts.update({k: preset.meta[k] for k in ("tolerance", "smoothing_alpha") if k in preset.meta})
        return opts

    @staticmethod
    def _cells(runs, history, reference: str, branch: str, tolerance: float, smoothing_alpha: float) -> pd.DataFrame:
        if runs.empty or not reference or not branch:
            return pd.DataFrame()
        return cbs_table(runs, history, reference=reference, branch=branch, tolerance=tolerance,
                         smoothing_alpha=smoothing_alpha)

    def verdicts(self, runs, history, *, reference="", branch="", tolerance=0.01, smoothing_alpha=0.5,
                 rise=1.0, plateau=1.0, **_):
        cells = self._cells(runs, history, reference, branch, tolerance, smoothing_alpha)
        seeds = tuple(sorted(int(s) for s in cells["seed"].unique())) if not cells.empty else ()
        return [*trajectory_verdicts(cells, rise=rise, plateau=plateau, seeds=seeds),
                *(noise_verdict(cells, k, seeds) for k in NOISE_KEYS)]

    def figures(self, runs, history, out, *, reference="", branch="", tolerance=0.01, smoothing_alpha=0.5,
                **_) -> FigureBuilders:
        return {"merrill_local_cbs": lambda: cbs_figure(self._cells(runs, history, reference, branch, tolerance,
                                                                    smoothing_alpha)),
                "merrill_branch_losses": lambda: branches_figure(runs, history, branch, reference)}

    def comparison(self, verdicts, bl):
        t = verdicts[0].table if verdicts and verdicts[0].table is not None else pd.DataFrame()
        if t.empty:
            return []
        return [Comparison(f"local CBS B* at {fmt(tok)} tokens", f"{fmt(g['cbs'].median(), 3)} "
                           f"[seeds {fmt(g['cbs'].min(), 3)}-{fmt(g['cbs'].max(), 3)}]; B_simple "
                           f"{fmt(g['noise_scale_simple'].median(), 3)}",
                           "near 0 at init, rises fast, then plateaus (OLMo 1B, 7B)", "merrill2025 (claim)",
                           (CLAIM, RECIPE)) for tok, g in t.groupby("tokens", sort=True)]


def cbs_figure(cells: pd.DataFrame) -> Figure:
    """B* vs tokens (seed median, [min, max] bars; open markers: censored at the grid top) and
    each noise estimate at the same checkpoints."""
    if cells.empty:
        raise NoData("merrill_cbs: no branch records")
    fig, (ax,) = new_figure(width=5.6, height=4.0)
    g = cells.groupby("tokens", sort=True)
    t, med = np.array(list(g.groups), float), g["cbs"].median().to_numpy(float)
    ax.errorbar(t, med, yerr=[med - g["cbs"].min().to_numpy(float), g["cbs"].max().to_numpy(float) - med],
                fmt="o-", capsize=3, label="local CBS B* (branching; seed median, range)")
    for i, key in enumerate(NOISE_KEYS, 1):
        if key in cells and cells[key].notna().any():
            ax.plot(t, g[key].median().to_numpy(float), "v--", color=f"C{i}", label=f"{key} (reference run)")
    ax.axhline(float(cells["reference_batch"].iloc[0]), color="gray", ls=":", lw=0.8, label="grid floor B0")
    ax.axhline(float(cells["grid_max"].max()), color="gray", ls="-.", lw=0.8, label="grid ceiling")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens at the checkpoint T0")
    ax.set_ylabel("batch size (sequences)")
    ax.legend(fontsize=7)
    return fig


def branches_figure(runs: pd.DataFrame, history: pd.DataFrame, branch: str, reference: str) -> Figure:
    """The held-out loss of the reference run and of every branch (seed 0), one color per B."""
    h = history[history["name"] == branch]
    if h.empty:
        raise NoData("merrill_cbs: no branch records")
    fig, (ax,) = new_figure(width=6.4, height=4.2)
    ref = history[(history["name"] == reference) & (history["seed"] == history["seed"].min())]
    ax.plot(ref["tokens"], ref[LOSS], color="k", lw=1, label="reference")
    sizes = sorted(h["batch_size"].unique())
    first = h[h["seed"] == h["seed"].min()]
    for run_id, g in first.groupby("run_id"):
        c = sizes.index(g["batch_size"].iloc[0])
        ax.plot(g["tokens"], g[LOSS], color=f"C{c}", lw=0.8)
    for c, b in enumerate(sizes):
        ax.plot([], [], color=f"C{c}", label=f"branch B = {b:g}")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("held-out loss (nats per byte)")
    ax.legend(fontsize=7)
    return fig


FINDING = MerrillCBS()
