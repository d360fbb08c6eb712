"""The six batch-size figures, from the tables of ``analysis.load``.

Each ``*_figure`` function takes DataFrame(s) and returns a ``matplotlib.figure.Figure``,
or raises ``analysis.plotting.NoData`` with a clear message when its data is absent.
Batch-size axes are log base 2; points are the mean over seeds with ± one std error bars.

CLI: ``python -m analysis.figures <results dir> [--out DIR] [--target-accuracy A |
--goal-error E] [--interpolation CSV] [--formats png pdf] [--where COL=VALUE ...]`` writes ``<name>.png`` and
``<name>.pdf`` for every figure whose data exists (default out: ``<results>/figures``)
and says why each other one was skipped.

Input files besides run records:

* ``profile.csv`` (anywhere under the results dir): columns ``batch_size,
  peak_memory_bytes, step_seconds, examples_per_second``, one row per measurement
  (repeats are averaged); optional ``label``/``model``/``device`` column = one line each.
* ``interpolation.csv`` (results dir, or ``--interpolation``): the DataFrame returned by
  ``bench.tools.interpolate.interpolation_curve``: ``alpha, train_loss, train_accuracy,
  test_loss, test_accuracy``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import (finished, has_metric, metric, reference_lr_per_rule, seed_stats,
                                select_runs)
from analysis.load import load_profile, load_tables
from analysis.plotting import (FORMATS, NoData, errorbar_line, log2_batch_axis, new_figure,
                               no_data, save_figures, seeds_note)
from analysis.stability import stability_columns
from analysis.steps_to_result import (Goal, fit_mccandlish, perfect_scaling_max_b, resolve_goal,
                                      steps_to_result)

SHARPNESS_KEYS = {
    "hessian_top_eigenvalue": "top Hessian eigenvalue λ_max",
    "hessian_trace": "Hessian trace",
    "sharpness_full_eps1e-03": "ε-sharpness, full space (ε = 1e-3)",
    "batch_sharpness": "batch sharpness E_B[g_Bᵀ H_B g_B / |g_B|²]",
    "preconditioned_top_eigenvalue": "Adam's preconditioned λ_max(P⁻¹H)",
}
INTERPOLATION_COLUMNS = ("alpha", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
INTERPOLATION_FILENAME = "interpolation.csv"


def _require(df: pd.DataFrame | None, columns: Sequence[str], what: str) -> pd.DataFrame:
    if df is None or df.empty:
        raise NoData(f"{what}: no rows")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NoData(f"{what}: missing columns {missing}")
    return df


def b_simple(runs: pd.DataFrame | None, history: pd.DataFrame | None = None) -> float:
    """Median ``noise_scale_simple`` over records (curvature/final), else over history rows."""
    if runs is not None and has_metric(runs, "noise_scale_simple"):
        return float(metric(runs, "noise_scale_simple").median())
    if history is not None and "noise_scale_simple" in history:
        return float(pd.to_numeric(history["noise_scale_simple"], errors="coerce").median())
    return float("nan")


# ----------------------------------------------------------------------------- 1. steps
def steps_to_result_figure(history: pd.DataFrame, runs: pd.DataFrame | None = None, *,
                           goal: Goal, tol: float = 0.2) -> Figure:
    """Steps-to-result vs B (log-log): best trial per B (Shallue), mean ± std over seeds at
    the best LR (annotated), the perfect-scaling line from the smallest B, the fitted
    ``S = S_min (1 + B_crit / B)`` with the measured B_crit, and B_simple when recorded."""
    _require(history, ["run_id", "batch_size", "step"], "steps-to-result")
    table = steps_to_result(history, goal)
    ok = table[np.isfinite(table["steps"].astype(float))]
    if ok.empty:
        raise NoData(f"steps-to-result: no trial reached the goal {goal}")
    fig, (ax,) = new_figure(width=6.0, height=4.5)
    b, s = ok["batch_size"].astype(float).to_numpy(), ok["steps"].astype(float).to_numpy()
    ax.errorbar(b, ok["mean_steps"].to_numpy(float), yerr=ok["std_steps"].fillna(0.0).to_numpy(float), fmt="o-",
                ms=4, capsize=3, color="C0", label="best LR: mean ± std over seeds")
    ax.plot(b, s, "s", mfc="none", color="C0", label="steps-to-result (best trial)")
    for bi, si, lr in zip(b, s, ok["best_lr"]):
        ax.annotate(f"lr {lr:.3g}", (bi, si), textcoords="offset points", xytext=(0, -12),
                    ha="center", fontsize=7)
    grid = np.geomspace(b.min(), b.max(), 100)
    ax.plot(grid, s[0] * b[0] / grid, "--", color="0.5", label="perfect scaling")
    fit = fit_mccandlish(table)
    if np.isfinite(fit["s_min"]) and 0 < fit["b_crit"] < np.inf:
        ax.plot(grid, fit["s_min"] * (1 + fit["b_crit"] / grid), "-", color="C1", lw=1,
                label="fit S_min(1 + B_crit/B)")
        ax.axvline(fit["b_crit"], color="C1", ls="-.", label=f"B_crit measured = {fit['b_crit']:.3g}")
    elif len(ok) >= 2:
        ax.plot([], [], " ", label="B_crit: " + ("beyond the largest B" if fit["b_crit"] == np.inf
                                                  else "below the smallest B"))
    bs = b_simple(runs, history)
    if np.isfinite(bs):
        ax.axvline(bs, color="C2", ls=":", label=f"B_simple predicted = {bs:.3g}")
    b_perf = perfect_scaling_max_b(table, tol)
    ax.plot([], [], " ", label=f"perfect scaling up to B = {b_perf:g} (tol {tol:.0%})")
    missed = table.loc[~np.isfinite(table["steps"].astype(float)), "batch_size"].tolist()
    if missed:
        ax.plot([], [], " ", label=f"goal never reached at B = {', '.join(map(str, missed))}")
    ax.set_yscale("log")
    log2_batch_axis(ax, table["batch_size"])
    ax.set_ylabel(f"steps to reach {goal}")
    ax.set_title("Steps-to-result vs batch size")
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------- 2. accuracy and gap
def _per_rule(ax, runs: pd.DataFrame, value: pd.Series, ylabel: str) -> pd.DataFrame:
    """One errorbar line per scaling rule; returns the stats used."""
    all_stats = []
    for rule, r in runs.groupby("scaling", dropna=False, sort=True):
        stats = seed_stats(r, ["batch_size"], value.loc[r.index])
        if stats.empty:
            continue
        lr = r["base_lr"].iloc[0]
        errorbar_line(ax, stats, label=f"{rule} (base lr {lr:.3g})")
        all_stats.append(stats)
    log2_batch_axis(ax, runs["batch_size"])
    ax.set_ylabel(ylabel)
    return pd.concat(all_stats) if all_stats else pd.DataFrame(columns=["n"])


def accuracy_gap_figure(runs: pd.DataFrame) -> Figure:
    """Final test accuracy, accuracy gap (train - test) and loss gap (test - train) vs B,
    one line per LR scaling rule (finished runs; per rule the base LR that is best at the
    rule's smallest B)."""
    runs = finished(_require(runs, ["batch_size", "scaling"], "accuracy/gap"))
    if not has_metric(runs, "test_accuracy"):
        raise NoData("accuracy/gap: no finished run has a final test_accuracy")
    sel = reference_lr_per_rule(runs)
    gap_acc = metric(sel, "gap_accuracy").fillna(metric(sel, "train_accuracy") - metric(sel, "test_accuracy"))
    gap_loss = metric(sel, "gap_loss").fillna(metric(sel, "test_loss") - metric(sel, "train_loss"))
    fig, axes = new_figure(ncols=3)
    stats = _per_rule(axes[0], sel, metric(sel, "test_accuracy"), "final test accuracy")
    _per_rule(axes[1], sel, gap_acc, "generalization gap: train − test accuracy")
    _per_rule(axes[2], sel, gap_loss, "generalization gap: test − train loss")
    axes[0].legend(title="LR scaling rule", fontsize=7)
    fig.suptitle(f"Test accuracy and generalization gap vs batch size ({seeds_note(stats)})")
    return fig


# ------------------------------------------------------------------------- 3. sharpness
def sharpness_figure(runs: pd.DataFrame) -> Figure:
    """Hessian top eigenvalue, Hessian trace and Keskar epsilon-sharpness vs B (whichever
    are recorded, from ``curvature`` or ``final``), one line per scaling rule."""
    runs = finished(_require(runs, ["batch_size", "scaling"], "sharpness"))
    keys = [k for k in SHARPNESS_KEYS if has_metric(runs, k)]
    if not keys:
        raise NoData(f"sharpness: no finished run records any of {list(SHARPNESS_KEYS)}")
    sel = reference_lr_per_rule(runs, "final_test_accuracy") if has_metric(runs, "test_accuracy") else runs
    fig, axes = new_figure(ncols=len(keys))
    stats = pd.DataFrame(columns=["n"])
    for ax, key in zip(axes, keys):
        vals = metric(sel, key)
        stats = _per_rule(ax, sel, vals, SHARPNESS_KEYS[key])
        if (vals.dropna() > 0).all():
            ax.set_yscale("log")
    axes[0].legend(title="LR scaling rule", fontsize=7)
    fig.suptitle(f"Sharpness at the end of training vs batch size ({seeds_note(stats)})")
    return fig


# --------------------------------------------------------------- 4. Keskar interpolation
def interpolation_figure(curve: pd.DataFrame) -> Figure:
    """Keskar et al. Figure 3: loss (left) and accuracy (right) along
    ``alpha x_LB + (1 - alpha) x_SB``; alpha = 0 is the small-batch, 1 the large-batch
    solution. Takes ``bench.tools.interpolate.interpolation_curve``'s DataFrame."""
    c = _require(curve, INTERPOLATION_COLUMNS, "interpolation").sort_values("alpha")
    fig, (ax,) = new_figure(width=6.0, height=4.2)
    acc_ax = ax.twinx()
    ax.plot(c["alpha"], c["train_loss"], "-", color="C0", label="train loss")
    ax.plot(c["alpha"], c["test_loss"], "--", color="C0", label="test loss")
    acc_ax.plot(c["alpha"], c["train_accuracy"], "-", color="C3", label="train accuracy")
    acc_ax.plot(c["alpha"], c["test_accuracy"], "--", color="C3", label="test accuracy")
    for a, name in ((0, "SB"), (1, "LB")):
        ax.axvline(a, color="0.6", lw=0.8)
        ax.annotate(name, (a, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=8)
    if (c[["train_loss", "test_loss"]] > 0).all().all():
        ax.set_yscale("log")
    ax.set_xlabel("α  (parameters α·x_LB + (1 − α)·x_SB)")
    ax.set_ylabel("cross-entropy loss", color="C0")
    acc_ax.set_ylabel("accuracy", color="C3")
    lines = ax.get_lines()[:2] + acc_ax.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center left")
    ax.set_title("Between the SB and LB solutions (Keskar et al. Fig. 3)", fontsize=10)
    return fig


# -------------------------------------------------------------- 5. edge of stability
def eos_runs(history: pd.DataFrame, max_runs: int = 5) -> list[str]:
    """Runs to show: those with >= 2 sharpness rows, the lowest seed per (batch size, LR),
    spread over those settings (at most ``max_runs``): the threshold differs per LR, so each LR
    shows its own ceiling."""
    h = history[history["eos_value"].notna()] if "eos_value" in history else \
        history[history["hessian_top_eigenvalue"].notna()]
    counts = h.groupby("run_id").size()
    h = h[h["run_id"].isin(counts[counts >= 2].index)]
    first = (h.sort_values(["batch_size", "peak_lr", "seed"], kind="stable")
             .groupby(["batch_size", "peak_lr"], sort=True).head(1)["run_id"].tolist())
    if len(first) > max_runs:
        idx = np.unique(np.linspace(0, len(first) - 1, max_runs).round().astype(int))
        first = [first[i] for i in idx]
    return first


def _eos_panel(ax, loss_ax, h: pd.DataFrame, ids: Sequence[str], title: str) -> None:
    pre = (h["eos_quantity"] == "lambda_max(P^-1 H)").any()
    for i, rid in enumerate(ids):
        r = h[(h["run_id"] == rid) & h["eos_value"].notna()].sort_values("step")
        if r.empty:
            raise NoData(f"edge of stability: run {rid} has no sharpness rows")
        label = f"B={r['batch_size'].iloc[0]:g}, lr={r['peak_lr'].iloc[0]:.3g}, seed {r['seed'].iloc[0]}"
        ax.plot(r["step"], r["eos_value"], "-", color=f"C{i}", label=label)
        ax.plot(r["step"], r["eos_threshold"], "--", color=f"C{i}", lw=1)
        full = {"current_batch_size", "num_train"} <= set(r) and bool((r["current_batch_size"] >= r["num_train"]).all())
        if "batch_sharpness" in r and r["batch_sharpness"].notna().any() and not full:
            ax.plot(r["step"], r["batch_sharpness"], ":", color=f"C{i}", lw=1)  # minibatch SGD (EoSS)
        if "train_loss" in h:
            rl = h[h["run_id"] == rid].sort_values("step")
            loss_ax.plot(rl["step"], rl["train_loss"], "-", color=f"C{i}", label=label)
    thr = "(2 + 2β1)/((1 − β1) lr)" if pre else "stability threshold (2/lr for GD)"
    ax.plot([], [], "--", color="0.4", label=thr)
    ax.set_xlabel("step")
    ax.set_ylabel("preconditioned sharpness λ_max(P⁻¹H)" if pre else "sharpness λ_max")
    if pre:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("train loss")
    if "train_loss" in h and (h["train_loss"].dropna() > 0).all():
        loss_ax.set_yscale("log")


def edge_of_stability_figure(history: pd.DataFrame, *, run_ids: Sequence[str] | None = None,
                             max_runs: int = 5) -> Figure:
    """Sharpness vs step against the optimizer's own stability threshold (dashed, same colour;
    ``analysis.stability.stability_columns``: 2/lr for GD, (2 + 2β)/lr heavy ball, Adam's
    preconditioned sharpness against (2 + 2β1)/((1 − β1) lr); 2/lr for older records), with the
    training loss below (Cohen et al. 2021, 2022). One column per preset (records' ``name``)
    when the history holds several (a finding's arms)."""
    h = _require(history, ["run_id", "step", "hessian_top_eigenvalue"], "edge of stability")
    if "two_over_lr" not in h and "lr" not in h and "stability_threshold" not in h:
        raise NoData("edge of stability: history has neither a stability threshold nor lr")
    h = h.join(stability_columns(h))
    arms = sorted(h["name"].dropna().unique()) if "name" in h and h["name"].nunique() > 1 else [None]
    panels = []
    for arm in arms:
        ha = h if arm is None else h[h["name"] == arm]
        ids = [r for r in (run_ids if run_ids is not None else eos_runs(ha, max_runs)) if r in set(ha["run_id"])]
        if ids:
            panels.append((arm, ha, ids))
    if not panels:
        raise NoData("edge of stability: no run has >= 2 history rows with sharpness and a threshold")
    fig, axes = new_figure(ncols=len(panels), nrows=2, width=6.5, height=3.2)
    for j, (arm, ha, ids) in enumerate(panels):
        pre = (ha["eos_quantity"] == "lambda_max(P^-1 H)").any()
        title = ("Preconditioned sharpness vs (2 + 2β1)/((1 − β1) lr) (adaptive edge of stability)" if pre
                 else "Sharpness during training vs the stability threshold (edge of stability)")
        _eos_panel(axes[j], axes[len(panels) + j], ha, ids, title if arm is None else f"{arm}")
    return fig


# ------------------------------------------------------------------- 6. memory and time
def profile_figure(profile: pd.DataFrame) -> Figure:
    """Peak memory, step time and throughput vs B from ``profile.csv`` rows (mean ± std over
    repeats), with least-squares lines a + b·B for memory and step time (the O(P + B·I)
    and O(B·C) models)."""
    p = _require(profile, ["batch_size", "peak_memory_bytes", "step_seconds",
                           "examples_per_second"], "profile")
    group = next((c for c in ("label", "model", "device") if c in p.columns), None)
    panels = (("peak_memory_bytes", "peak memory (MiB)", 2.0 ** -20, True),
              ("step_seconds", "time per step (ms)", 1e3, True),
              ("examples_per_second", "throughput (examples / s)", 1.0, False))
    fig, axes = new_figure(ncols=3)
    for ax, (col, ylabel, scale, fit) in zip(axes, panels):
        for i, (name, g) in enumerate(p.groupby(group, sort=True) if group else [(None, p)]):
            g = g.assign(_v=pd.to_numeric(g[col], errors="coerce") * scale)
            stats = g.groupby("batch_size")["_v"].agg(mean="mean", std="std").reset_index()
            errorbar_line(ax, stats, label=None if name is None else str(name), color=f"C{i}")
            if fit and stats["batch_size"].nunique() >= 2:
                slope, icept = np.polyfit(stats["batch_size"].astype(float), stats["mean"], 1)
                grid = np.geomspace(stats["batch_size"].min(), stats["batch_size"].max(), 50)
                ax.plot(grid, icept + slope * grid, ":", color=f"C{i}", lw=1,
                        label=f"fit a + b·B (b = {slope:.3g})")
        log2_batch_axis(ax, p["batch_size"])
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Memory and time vs batch size")
    return fig


# ----------------------------------------------------------------------------- CLI
def _goal(runs: pd.DataFrame, target_accuracy: float | None, goal_error: float | None) -> Goal:
    goal = resolve_goal(runs, target_accuracy, goal_error)
    if goal is None:
        raise NoData("steps-to-result: no goal (pass --target-accuracy or --goal-error, or record "
                     "convergence.target_test_accuracy)")
    return goal


def make_figures(results: Path | str, out: Path | str | None = None, *,
                 target_accuracy: float | None = None, goal_error: float | None = None,
                 interpolation: Path | str | None = None, formats: Sequence[str] = FORMATS,
                 conditions: dict[str, str] | None = None) -> dict[str, list[Path] | str]:
    """Write every figure whose data exists; returns {name: paths written | skip reason}.
    ``conditions`` ({column: value}) keeps only matching runs (not applied to profile.csv)."""
    results = Path(results)
    out = Path(out) if out is not None else results / "figures"
    runs, history = select_runs(*load_tables(results), conditions)
    profile = load_profile(results)
    interp_path = Path(interpolation) if interpolation else results / INTERPOLATION_FILENAME
    curve = pd.read_csv(interp_path) if interp_path.is_file() else None
    builders = {
        "steps_to_result": lambda: steps_to_result_figure(
            history, runs, goal=_goal(runs, target_accuracy, goal_error)),
        "accuracy_gap_vs_batch": lambda: accuracy_gap_figure(runs),
        "sharpness_vs_batch": lambda: sharpness_figure(runs),
        "keskar_interpolation": lambda: interpolation_figure(
            curve if curve is not None else no_data(f"interpolation: no {interp_path}")),
        "edge_of_stability": lambda: edge_of_stability_figure(history),
        "memory_time_vs_batch": lambda: profile_figure(profile),
    }
    return save_figures(builders, out, formats)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="directory holding run records (searched recursively)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default <results>/figures)")
    ap.add_argument("--target-accuracy", type=float, default=None, help="steps-to-result goal: test accuracy >= A")
    ap.add_argument("--goal-error", type=float, default=None, help="steps-to-result goal: test error <= E")
    ap.add_argument("--interpolation", type=Path, default=None,
                    help=f"CSV from bench.tools.interpolate.interpolation_curve (default <results>/{INTERPOLATION_FILENAME})")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS))
    ap.add_argument("--where", nargs="*", default=[], metavar="COL=VALUE",
                    help="keep only runs whose column equals the value (e.g. dataset=mnist1d)")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.error(f"{args.results} is not a directory")
    if any("=" not in w for w in args.where):
        ap.error("--where takes COL=VALUE")
    done = make_figures(args.results, args.out, target_accuracy=args.target_accuracy,
                        goal_error=args.goal_error, interpolation=args.interpolation,
                        formats=args.formats, conditions=dict(w.split("=", 1) for w in args.where))
    for name, result in done.items():
        print(f"{name}: {result if isinstance(result, str) else ', '.join(map(str, result))}")
    return 0 if any(not isinstance(r, str) for r in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
