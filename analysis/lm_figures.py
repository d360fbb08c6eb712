"""Figures of the language-model findings, from the tables of ``analysis.load``.

Each ``*_figure`` takes DataFrames and returns a ``matplotlib.figure.Figure`` or raises
``analysis.plotting.NoData``. ``make_lm_figures(results, out, finding, **options)`` writes the
figures of one finding (options: the arms and targets of ``analysis.lm_report``).
Losses are test losses in nats per token; points are seed means, bars one seed std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import select_runs
from analysis.figures import steps_to_result_figure
from analysis.lm_report import zhang_cells
from analysis.critical_batch import steps_per_seed
from analysis.lm_verdicts import best_per_batch, lr_table
from analysis.load import load_tables
from analysis.plotting import NoData, log2_batch_axis, new_figure, no_data, save_figures
from analysis.steps_to_result import Goal


def _short(name: str) -> str:
    return str(name).split("offline_")[-1]


def _best_curves(history: pd.DataFrame, best: pd.DataFrame, name: str, x: str = "tokens") -> dict[float, pd.Series]:
    """{B: seed-mean test loss vs ``x`` (tokens or step)} of each B's best LR in arm ``name``."""
    out = {}
    for r in best[best["name"] == name].to_dict("records"):
        h = history[(history["name"] == name) & (history["batch_size"] == r["batch_size"])
                    & np.isclose(history["base_lr"].astype(float), float(r["base_lr"]))]
        if len(h):
            out[float(r["batch_size"])] = h.groupby(x)["test_loss"].mean().sort_index()
    return out


# ------------------------------------------------------------------------------ Marek
def marek_loss_vs_batch_figure(runs: pd.DataFrame, arms: Sequence[str]) -> Figure:
    """Final test loss vs B per arm at each B's best LR (seed std bars), with the LR
    sensitivity band (lowest to highest mean over the LR grid, diverged LRs left out)."""
    best = best_per_batch(lr_table(runs[runs["name"].isin(arms)]))
    if best.empty:
        raise NoData(f"marek: no runs of {list(arms)}")
    fig, (ax,) = new_figure(width=6.4, height=4.4)
    for i, arm in enumerate(arms):
        b = best[(best["name"] == arm) & np.isfinite(best["mean"].astype(float))].sort_values("batch_size")
        if b.empty:
            continue
        x = b["batch_size"].to_numpy(float)
        ax.fill_between(x, b["band_low"].to_numpy(float), b["band_high"].to_numpy(float), color=f"C{i}",
                        alpha=0.12, lw=0)
        ax.errorbar(x, b["mean"].to_numpy(float), yerr=b["std"].fillna(0).to_numpy(float), fmt="o-",
                    color=f"C{i}", capsize=3, ms=4, label=f"{_short(arm)} (best LR per B)")
        for xi, yi, lr in zip(x, b["mean"], b["peak_lr"]):
            ax.annotate(f"{lr:.2g}", (xi, yi), textcoords="offset points", xytext=(0, 6 + 8 * i), ha="center",
                        fontsize=6, color=f"C{i}")
    ax.plot([], [], " ", label="shaded: LR sensitivity band; labels: best peak LR")
    log2_batch_axis(ax, best["batch_size"])
    ax.set_ylabel("final test loss (nats / token)")
    ax.set_title("Equal tokens: final loss vs batch size per rule", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def marek_loss_vs_tokens_figure(runs: pd.DataFrame, history: pd.DataFrame, arms: Sequence[str]) -> Figure:
    """Test loss vs tokens of each B's best LR, one panel per arm (seed means)."""
    best = best_per_batch(lr_table(runs[runs["name"].isin(arms)]))
    present = [a for a in arms if (best["name"] == a).any()]
    if not present or history.empty:
        raise NoData("marek: no history")
    fig, axes = new_figure(ncols=len(present), width=4.2, height=3.6)
    sizes = sorted(best["batch_size"].unique())
    colors = {b: f"C{i}" for i, b in enumerate(sizes)}
    for ax, arm in zip(axes, present):
        for b, curve in sorted(_best_curves(history, best, arm).items()):
            ax.plot(curve.index, curve.to_numpy(float), "-", color=colors[b], label=f"B = {b:g}")
        ax.set_xscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(_short(arm), fontsize=9)
        ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
    axes[0].set_ylabel("test loss (nats / token)")
    axes[0].legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------ Zhang
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
                ax.plot([], [], " ", label=f"{_short(m)}: target not reached at B = {', '.join(missed)}")
            if ok.empty:
                continue
            b, s = ok.index.to_numpy(float), ok.to_numpy(float)
            lo = ps.groupby("batch_size")["steps"].min().reindex(ok.index).to_numpy(float)
            hi = ps.groupby("batch_size")["steps"].max().reindex(ok.index).to_numpy(float)
            ax.errorbar(b, s, yerr=[s - lo, hi - s], fmt="o-", color=f"C{i}", ms=4, capsize=3,
                        label=f"{_short(m)} (target {c['target_loss']:.3f})")
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


# ------------------------------------------------------------------ LM loss vs tokens
def lm_loss_vs_tokens_figure(runs: pd.DataFrame, history: pd.DataFrame, *, target: float | None = None) -> Figure:
    """Test loss vs tokens (left) and vs steps (right) of each B's best LR (seed means)."""
    r = runs.assign(name=runs["name"].fillna("all")) if "name" in runs else runs.assign(name="all")
    h = history.assign(name=history["name"].fillna("all")) if "name" in history else history.assign(name="all")
    best = best_per_batch(lr_table(r))
    if best.empty or h.empty:
        raise NoData("loss vs tokens: no runs")
    fig, (ax, ax2) = new_figure(ncols=2, width=4.6, height=3.8)
    for name in best["name"].unique():
        by_step = _best_curves(h, best, name, "step")
        for j, (b, curve) in enumerate(sorted(_best_curves(h, best, name).items())):
            ax.plot(curve.index, curve.to_numpy(float), "-", color=f"C{j}", label=f"B = {b:g}")
            ax2.plot(by_step[b].index, by_step[b].to_numpy(float), "-", color=f"C{j}")
    for a, xl in ((ax, "tokens"), (ax2, "steps")):
        a.set_xscale("log")
        a.set_xlabel(xl)
        if target is not None:
            a.axhline(target, color="0.4", ls="--", lw=0.8)
    ax.set_ylabel("test loss (nats / token)")
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------- warmup
def warmup_figure(runs: pd.DataFrame, history: pd.DataFrame, arms: Sequence[str]) -> Figure:
    """Per arm (best LR): test loss vs steps, vs tokens, and the batch size vs tokens."""
    r = runs[runs["name"].isin(arms)]
    table = lr_table(r)
    if table.empty:
        raise NoData("warmup: no runs")
    fig, axes = new_figure(ncols=3, width=4.2, height=3.6)
    for i, arm in enumerate(arms):
        t = table[table["name"] == arm].sort_values("mean", kind="stable")
        if t.empty:
            continue
        lr = float(t["base_lr"].iloc[0])
        h = history[(history["name"] == arm) & np.isclose(history["base_lr"].astype(float), lr)]
        g = h.groupby("step").agg(loss=("test_loss", "mean"), tokens=("tokens", "first"),
                                  b=("current_batch_size", "first")).reset_index()
        label = f"{_short(arm)} (lr {lr:.2g}, {int(g['step'].max())} steps)"
        axes[0].plot(g["step"], g["loss"], "-", color=f"C{i}", label=label)
        axes[1].plot(g["tokens"], g["loss"], "-", color=f"C{i}")
        axes[2].step(g["tokens"], g["b"], where="pre", color=f"C{i}")
    axes[0].set_xlabel("steps")
    axes[1].set_xlabel("tokens")
    axes[2].set_xlabel("tokens")
    for a in axes[:2]:
        a.set_ylabel("test loss (nats / token)")
        a.set_ylim(top=min(a.get_ylim()[1], 3.5))
    axes[2].set_ylabel("batch size (sequences)")
    axes[2].set_yscale("log", base=2)
    axes[0].legend(fontsize=7)
    fig.suptitle("Batch-size warmup vs constant small / large batches (equal tokens, best LR per arm)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------- all
def make_lm_figures(results: Path | str, out: Path | str, finding: str, *, formats: Sequence[str] = ("png",),
                    conditions: dict[str, str] | None = None, **opts: Any) -> dict[str, list[Path] | str]:
    runs, history = select_runs(*load_tables(results), conditions)
    if "name" in runs:
        runs = runs.assign(name=runs["name"].astype(str))
        history = history.assign(name=history["name"].astype(str))
    builders: dict[str, Any] = {}
    if finding == "marek":
        arms = [a for a in (opts.get("halflife"), opts.get("beta2"), opts.get("sgd")) if a]
        with_accum = arms + ([opts["accum"]] if opts.get("accum") else [])   # one point: B by accumulation
        builders = {"marek_loss_vs_batch": lambda: marek_loss_vs_batch_figure(runs, with_accum),
                    "marek_loss_vs_tokens": lambda: marek_loss_vs_tokens_figure(runs, history, arms)}
    elif finding == "zhang_cbs":
        builders = {"zhang_steps_to_target": lambda: zhang_figure(
            runs, history, data_sizes=opts.get("data_sizes") or (), overhead=opts.get("overhead", 0.2))}
    elif finding == "shallue_lm":
        target = opts.get("target_loss")
        goal = Goal(float(target), "test_loss", higher_is_better=False) if target is not None else None
        builders = {"steps_to_result": lambda: steps_to_result_figure(history, runs, goal=goal)
                    if goal else no_data("no target loss"),
                    "lm_loss_vs_tokens": lambda: lm_loss_vs_tokens_figure(runs, history, target=target)}
    elif finding == "batch_warmup":
        arms = [opts.get("small"), opts.get("large"), *(opts.get("ramps") or ())]
        builders = {"warmup_loss_vs_steps": lambda: warmup_figure(runs, history, [a for a in arms if a])}
    return save_figures(builders, out, formats)
