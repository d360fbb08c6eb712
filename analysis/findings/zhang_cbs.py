"""Zhang et al. 2024: the critical batch size grows with data size, not with model size.

Cells: one per (model arm, data size D): the target loss (the smallest batch size's seed-mean
test loss at D tokens, best LR at D) and the CBS to that target (``analysis.critical_batch``:
where steps exceed perfect scaling by ``overhead``), with its seed range and grid bracket, and
the McCandlish B_simple measured on the same runs. Verdicts: the CBS grows with D at each model
size, and hardly changes with model size at each D. The data sizes (and optionally
``overhead``, ``model_factor``) are the presets' ``reproduce:`` node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.critical_batch import cbs_cell, steps_per_seed
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.plotting import NoData, arm_label, log2_batch_axis, new_figure
from analysis.report_format import fmt
from analysis.steps_to_result import Goal
from analysis.verdicts import Verdict

META_OPTIONS = ("data_sizes", "overhead", "model_factor")


def zhang_cells(runs: pd.DataFrame, history: pd.DataFrame, *, data_sizes: Sequence[float],
                overhead: float = 0.2) -> pd.DataFrame:
    """One row per (model arm, data size D): the target loss (the smallest batch size's seed-mean
    test loss at D tokens, best LR at D), the CBS with its seed range and grid bracket, and the
    McCandlish B_simple measured on the same runs (EMA, the smallest B's best-LR runs at the
    evaluation nearest D; median over seeds)."""
    rows = []
    if history.empty or "name" not in history:
        return pd.DataFrame(rows)
    for arm, h in history.groupby("name", sort=True):
        b0 = float(h["batch_size"].min())
        ref = h[h["batch_size"] == b0]
        n_params = runs.loc[runs["name"] == arm, "num_params"]
        for d in data_sizes:
            at = ref[ref["tokens"] == d]
            if at.empty:
                rows.append({"model": arm, "tokens": d, "cbs": math.nan, "reason": f"no evaluation at {d:g} tokens"})
                continue
            by_lr = at.groupby("base_lr")["test_loss"].mean()
            lr, target = float(by_lr.idxmin()), float(by_lr.min())
            cell = cbs_cell(h, Goal(target, "test_loss", higher_is_better=False), overhead)
            b_simple = math.nan
            if "noise_scale_simple_ema" in ref:
                ns = ref[(ref["base_lr"] == lr) & ref["noise_scale_simple_ema"].notna()]
                if len(ns):
                    near = ns.assign(_d=(ns["tokens"] - d).abs()).sort_values("_d")
                    b_simple = float(near.groupby("seed").head(1)["noise_scale_simple_ema"].median())
            rows.append({"model": arm, "num_params": float(n_params.iloc[0]) if len(n_params) else math.nan,
                         "tokens": d, "target_loss": target, "reference_batch": b0, "reference_lr": lr,
                         "cbs": cell["cbs"], "seed_min": cell.get("seed_min", math.nan),
                         "seed_max": cell.get("seed_max", math.nan),
                         "bracket_low": cell.get("bracket", (math.nan,))[0],
                         "bracket_high": cell.get("bracket", (math.nan, math.nan))[1],
                         "upper_bound_only": cell.get("upper_bound_only", False),
                         "b_simple": b_simple, "reason": cell.get("reason", "")})
    return pd.DataFrame(rows)


def zhang_verdicts(cells: pd.DataFrame, *, growth: float = 1.2, model_factor: float = 2.0,
                   seeds: tuple[int, ...] = ()) -> list[Verdict]:
    """``cells``: one row per (model, data) cell with ``model`` (a label), ``num_params``,
    ``tokens`` (data size D), ``cbs``, ``seed_min``, ``seed_max`` (per-seed CBS range).

    Data: at each model size the CBS at the largest D exceeds ``growth`` x the CBS at the
    smallest D and the per-seed ranges do not overlap (reversed if it is lower by that factor
    with non-overlapping ranges); ``growth`` 1.2 keeps the interpolation error between grid
    points (a few percent) from counting as growth.
    Model: at each D the CBS of the largest and smallest model differ by at most a factor
    ``model_factor`` (one step of a doubling grid). The mean |log ratio| of both effects is
    reported beside (which one dominates is read from them, not a verdict)."""
    c = cells.dropna(subset=["cbs"])
    data, data_effects = _data_verdict(c, growth, seeds)
    model = _model_verdict(c, model_factor, seeds, data_effects)
    return [data, model]


def _data_verdict(c: pd.DataFrame, growth: float, seeds: tuple[int, ...]) -> tuple[Verdict, list[float]]:
    """The CBS at the largest vs the smallest data size, per model (and the |log ratios|)."""
    seeds_note = "per-seed CBS from each seed's best LR per B; spread = [min, max] over seeds"
    data_effects = []
    rows = []
    for model, g in c.groupby("model", sort=False):
        g = g.sort_values("tokens")
        if len(g) < 2:
            continue
        lo, hi = g.iloc[0], g.iloc[-1]
        ratio = float(hi["cbs"]) / float(lo["cbs"]) if lo["cbs"] > 0 else math.nan
        separated = hi["seed_min"] > lo["seed_max"] and ratio > growth
        below = hi["seed_max"] < lo["seed_min"] and ratio < 1 / growth
        rows.append({"model": model, "d_small": lo["tokens"], "d_large": hi["tokens"], "cbs_small_d": lo["cbs"],
                     "cbs_large_d": hi["cbs"], "ratio": ratio, "seed_ranges_separate": bool(separated or below),
                     "direction": "grows" if separated else "falls" if below else (
                         "higher, within the seed spread" if ratio > growth else
                         "lower, within the seed spread" if ratio < 1 / growth else "flat (within 1.2x)")})
        data_effects.append(abs(math.log(ratio)) if ratio > 0 and math.isfinite(ratio) else math.nan)
    dt = pd.DataFrame(rows)
    if dt.empty:
        return Verdict("zhang_cbs", "CBS grows with data size at fixed model size", "inconclusive",
                       "", seeds, details="needs >= 2 data sizes with a finite CBS per model"), data_effects
    dirs = set(dt["direction"])
    verdict = ("reproduced" if dirs == {"grows"} else "reversed" if dirs == {"falls"} else "not reproduced")
    numbers = {f"{r['model']}: CBS ratio D {r['d_large']:g} / {r['d_small']:g}": r["ratio"] for r in rows}
    numbers.update({f"{r['model']}: direction": r["direction"] for r in rows})
    return Verdict("zhang_cbs", "the critical batch size grows with data size at fixed model size",
                   verdict, f"at every model size: CBS(largest D) > {growth:g} x CBS(smallest D) with the "
                   f"per-seed ranges separate; {seeds_note}", seeds, numbers, "", dt), data_effects


def _model_verdict(c: pd.DataFrame, model_factor: float, seeds: tuple[int, ...],
                   data_effects: list[float]) -> Verdict:
    """The CBS of the largest vs the smallest model, per data size."""
    model_effects = []
    rows = []
    for tokens, g in c.groupby("tokens", sort=True):
        if len(g) < 2:
            continue
        g = g.sort_values("num_params")
        lo, hi = g.iloc[0], g.iloc[-1]
        ratio = float(hi["cbs"]) / float(lo["cbs"]) if lo["cbs"] > 0 else math.nan
        rows.append({"tokens": tokens, "small_model": lo["model"], "large_model": hi["model"],
                     "cbs_small_model": lo["cbs"], "cbs_large_model": hi["cbs"], "ratio": ratio})
        model_effects.append(abs(math.log(ratio)) if ratio > 0 and math.isfinite(ratio) else math.nan)
    mt = pd.DataFrame(rows)
    if mt.empty:
        return Verdict("zhang_cbs", "CBS roughly constant in model size at fixed data size", "inconclusive",
                       "", seeds, details="needs >= 2 model sizes with a finite CBS per data size")
    within = bool((mt["ratio"].between(1 / model_factor, model_factor)).all())
    return Verdict(
        "zhang_cbs", "the critical batch size hardly changes with model size at fixed data size",
        "reproduced" if within else "not reproduced",
        f"at every data size the CBS ratio largest/smallest model within [1/{model_factor:g}, "
        f"{model_factor:g}] (one step of a doubling grid)", seeds,
        {"mean_abs_log_ratio_model": float(np.nanmean(model_effects)) if model_effects else math.nan,
         "mean_abs_log_ratio_data": float(np.nanmean(data_effects)) if data_effects else math.nan},
        "", mt)


def zhang_figure(runs: pd.DataFrame, history: pd.DataFrame, *, data_sizes: Sequence[float],
                 overhead: float = 0.2) -> Figure:
    """Steps to each cell's target vs B (seed mean of each seed's best LR), one panel per data
    size D, one line per model; perfect scaling from the smallest B (dashed) and the 20%
    overhead line (dotted); the CBS (vertical, with its seed range) and B_simple (triangle)."""
    cells = zhang_cells(runs, history, data_sizes=data_sizes, overhead=overhead)
    if cells.empty or "target_loss" not in cells:
        raise NoData("zhang: no cells with a target")
    fig, axes = new_figure(ncols=len(data_sizes), width=4.6, height=4.0)
    models = sorted(cells["model"].unique())
    for ax, d in zip(axes, data_sizes):
        for i, m in enumerate(models):
            c = cells[(cells["model"] == m) & (cells["tokens"] == d)]
            if c.empty or not np.isfinite(c["target_loss"].iloc[0]):
                continue
            c = c.iloc[0]
            goal = Goal(float(c["target_loss"]), "test_loss", higher_is_better=False)
            ps = steps_per_seed(history[history["name"] == m], goal)
            mean = ps.groupby("batch_size")["steps"].agg(lambda x: x.mean() if x.notna().all() else np.nan)
            ok = mean[np.isfinite(mean.to_numpy(float))]
            missed = [f"{b:g}" for b in mean.index[~np.isfinite(mean.to_numpy(float))]]
            if missed:
                ax.plot([], [], " ", label=f"{arm_label(m)}: target not reached at B = {', '.join(missed)}")
            if ok.empty:
                continue
            b, s = ok.index.to_numpy(float), ok.to_numpy(float)
            lo = ps.groupby("batch_size")["steps"].min().reindex(ok.index).to_numpy(float)
            hi = ps.groupby("batch_size")["steps"].max().reindex(ok.index).to_numpy(float)
            ax.errorbar(b, s, yerr=[s - lo, hi - s], fmt="o-", color=f"C{i}", ms=4, capsize=3,
                        label=f"{arm_label(m)} (target {c['target_loss']:.3f})")
            grid = np.geomspace(b.min(), max(b.max(), b.min() * 2), 50)
            ax.plot(grid, s[0] * b[0] / grid, "--", color=f"C{i}", lw=0.8)
            ax.plot(grid, (1 + overhead) * s[0] * b[0] / grid, ":", color=f"C{i}", lw=0.8)
            if math.isfinite(c["cbs"]):
                ax.axvline(c["cbs"], color=f"C{i}", ls="-.", lw=1,
                           label=f"CBS {c['cbs']:.3g} (seeds {c['seed_min']:.3g}-{c['seed_max']:.3g})")
            if math.isfinite(c.get("b_simple", math.nan)):
                ax.plot([c["b_simple"]], [s.min()], "v", color=f"C{i}", ms=8,
                        label=f"B_simple {c['b_simple']:.3g}")
        ax.set_yscale("log")
        log2_batch_axis(ax, history["batch_size"].unique())
        ax.set_ylabel("steps to target")
        ax.set_title(f"D = {d:g} tokens", fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle(f"Steps to target vs B (dashed: perfect scaling from the smallest B; dotted: +{overhead:.0%})",
                 fontsize=10)
    return fig


class ZhangCBS(Finding):
    name = "zhang_cbs"
    title = "Zhang et al. 2024: the critical batch size grows with data size, not model size"
    sources = ("zhang2024", "mccandlish2018", "kaplan2020")
    offline = (Arm("zhang_offline_n1"), Arm("zhang_offline_n2"))
    paper = (Arm("zhang_cbs_151m"), Arm("zhang_cbs_604m"))
    one_paper_report = True
    meta_options = META_OPTIONS


    def verdicts(self, runs, history, *, data_sizes=(), overhead=0.2, model_factor=2.0, **_):
        cells = zhang_cells(runs, history, data_sizes=data_sizes or (), overhead=overhead)
        if cells.empty or "cbs" not in cells:
            return [Verdict("zhang_cbs", "the critical batch size grows with data size", "inconclusive", "",
                            (), details="no data sizes given or no records")]
        seeds = tuple(sorted(int(x) for x in history["seed"].dropna().unique())) if "seed" in history else ()
        out = zhang_verdicts(cells, model_factor=model_factor, seeds=seeds)
        # the cells (targets, CBS with seed range and bracket, B_simple) under the first verdict;
        # its per-model ratios are in its numbers
        out[0].table = cells.drop(columns=[c for c in ("reason",) if c in cells and not cells[c].any()])
        return out

    def figures(self, runs, history, out, *, data_sizes=(), overhead=0.2, **_) -> FigureBuilders:
        return {"zhang_steps_to_target": lambda: zhang_figure(runs, history, data_sizes=data_sizes or (),
                                                              overhead=overhead)}

    def comparison(self, verdicts, bl):
        t = verdicts[0].table if verdicts and verdicts[0].table is not None else pd.DataFrame()
        return [Comparison(
            f"CBS, {r['model']}, D = {fmt(r['tokens'])} tokens (target {fmt(r.get('target_loss'))})",
            f"{fmt(r['cbs'], 3)} [seeds {fmt(r.get('seed_min'), 3)}-{fmt(r.get('seed_max'), 3)}]; "
            f"B_simple {fmt(r.get('b_simple'), 3)}",
            "grows with D; ~constant in N (85M-1.2B, C4)", "zhang2024 (claim)", ("zhang2024/claim/data_not_model",))
            for r in t.to_dict("records")]


FINDING = ZhangCBS()
