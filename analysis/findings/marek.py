"""Marek et al. 2025: small batches (down to B = 1) train as well per token as large ones when
Adam's beta2 is set from a half-life fixed in tokens.

Arms (presets; records carry their ``name``): ``halflife`` (Adam, b2 from the half-life),
``beta2`` (Adam, b2 fixed at its large-batch value), ``sgd`` (plain SGD), ``accum`` (the
half-life rule at a B made of accumulated micro-batches). Per arm and batch size the best base
LR by mean final test loss (``analysis.aggregate.lr_table``); the claims: small batches with the
half-life match or beat larger ones at equal tokens; fixed beta2 hurts the smallest batch and
moves its best LR down; small batches are less sensitive to the LR; plain SGD is competitive at
the smallest batch and its gap to Adam grows with B; accumulation on one device is wasteful.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import arm_row, best_lr_curves, best_per_batch, finished, lr_table
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.plotting import NoData, arm_label, log2_batch_axis, new_figure
from analysis.report_format import fmt
from analysis.verdicts import Verdict, directional_verdict, match_tolerance, noise, seeds_of


def marek_verdicts(runs: pd.DataFrame, *, halflife: str, beta2: str | None = None,
                   sgd: str | None = None, accum: str | None = None, k: float = 1.0, min_tol: float = 0.01,
                   sgd_rel_tol: float = 0.03, min_seeds: int = 2) -> list[Verdict]:
    """The claims on the arms ``halflife``, ``beta2``, ``sgd`` and ``accum``, each a ``name`` in
    ``runs`` (see the module docstring).

    Tolerances: "match" = within ``max(k x seed noise, min_tol)`` nats; SGD is "competitive"
    when within ``max(k x seed noise, sgd_rel_tol x the Adam loss)``."""
    f = runs[runs["name"].isin([a for a in (halflife, beta2, sgd, accum) if a])] if "name" in runs else runs.iloc[0:0]
    best = best_per_batch(lr_table(f))
    seeds = seeds_of(finished(f))
    match_tol = f"within max({k:g} x the larger seed std, {min_tol:g}) nats/token"
    hl = best[best["name"] == halflife].sort_values("batch_size")
    if len(hl) < 2 or not np.isfinite(hl["mean"].astype(float)).any():
        return [Verdict("marek", "small batches match or beat large ones (beta2 half-life fixed)",
                        "inconclusive", match_tol, seeds, details=f"needs arm {halflife!r} at >= 2 batch sizes")]
    b_min = float(hl["batch_size"].iloc[0])
    out = [_small_batch_verdict(best, halflife, beta2, b_min, seeds, match_tol, k=k, min_tol=min_tol,
                                min_seeds=min_seeds)]
    if beta2:
        out += _beta2_verdicts(best, halflife, beta2, b_min, seeds, k=k, min_seeds=min_seeds)
    out += _band_verdict(best, halflife, b_min, float(hl["batch_size"].iloc[-1]), seeds)
    if sgd:
        out += _sgd_verdicts(best, halflife, sgd, seeds, k=k, rel_tol=sgd_rel_tol, min_seeds=min_seeds)
    if accum:
        out.append(_accumulation_verdict(f, best, halflife, accum, seeds, k=k, min_seeds=min_seeds))
    return out


def _small_batch_verdict(best: pd.DataFrame, halflife: str, beta2: str | None, b_min: float,
                         seeds: tuple[int, ...], match_tol: str, *, k: float, min_tol: float,
                         min_seeds: int) -> Verdict:
    small = arm_row(best, halflife, b_min)
    larger = best[(best["batch_size"] > b_min) & best["name"].isin([halflife, beta2])]  # accum: below
    larger = larger[np.isfinite(larger["mean"].astype(float))]
    if larger.empty:
        return Verdict("marek", "small batches match or beat large ones", "inconclusive", match_tol,
                       seeds, details="no finished larger batch size")
    rival = larger.sort_values("mean", kind="stable").iloc[0].to_dict()
    noise_ = noise(small, rival)
    tol = match_tolerance(noise_, k, min_tol)
    diff = float(rival["mean"]) - float(small["mean"])      # > 0: the small batch is better
    if min(int(small["n"]), int(rival["n"])) < min_seeds:
        verdict = "inconclusive"
    else:
        verdict = "reproduced" if diff >= -tol else "not reproduced"
    return Verdict(
        "marek", f"at equal tokens, B = {b_min:g} with the beta2 half-life held fixed matches or "
                 "beats every larger batch size (each tuned over the LR grid and either beta2 rule)",
        verdict, match_tol, seeds,
        {"small_batch": b_min, "small_loss": small["mean"], "small_std": small["std"],
         "small_best_lr": small["peak_lr"], "best_larger_batch": rival["batch_size"],
         "best_larger_arm": rival["name"], "best_larger_loss": rival["mean"],
         "best_larger_std": rival["std"], "larger_minus_small": diff, "tolerance": tol},
        "per arm and B the base LR with the lowest mean final test loss", best)


def _beta2_verdicts(best: pd.DataFrame, halflife: str, beta2: str, b_min: float, seeds: tuple[int, ...],
                    *, k: float, min_seeds: int) -> list[Verdict]:
    small, fx = arm_row(best, halflife, b_min), arm_row(best, beta2, b_min)
    if fx is None or not math.isfinite(float(fx["mean"])):
        return [Verdict("marek", f"beta2 fixed hurts B = {b_min:g}", "inconclusive", "", seeds,
                        details=f"no finished {beta2!r} runs at B = {b_min:g}")]
    noise_ = noise(small, fx)
    diff = float(fx["mean"]) - float(small["mean"])      # > 0: the fixed beta2 is worse
    lr_h, lr_f = float(small["peak_lr"]), float(fx["peak_lr"])
    return [Verdict(
        "marek", f"with beta2 fixed at its large-batch value, B = {b_min:g} reaches a worse "
                 "loss than with the half-life rule",
        directional_verdict(diff, noise_, int(small["n"]), int(fx["n"]), k=k, min_seeds=min_seeds),
        f"difference must exceed {k:g} x the larger seed std", seeds,
        {"batch_size": b_min, "halflife_loss": small["mean"], "beta2_fixed_loss": fx["mean"],
         "beta2_fixed_minus_halflife": diff, "seed_noise": noise_,
         "halflife_best_lr": small["peak_lr"], "beta2_fixed_best_lr": fx["peak_lr"],
         "lr_ratio_halflife_over_fixed": float(small["peak_lr"]) / float(fx["peak_lr"])}),
        Verdict(
        "marek", f"with beta2 fixed, the best LR at B = {b_min:g} is smaller than with the half-life rule",
        "reproduced" if lr_f < lr_h else ("reversed" if lr_f > lr_h else "not reproduced"),
        "compared on the LR grid (a grid step is the resolution)", seeds,
        {"halflife_best_lr": lr_h, "beta2_fixed_best_lr": lr_f,
         "beta2_fixed_best_lr_at_grid_edge": fx["lr_at_grid_edge"]})]


def _band_verdict(best: pd.DataFrame, halflife: str, b_min: float, b_max: float,
                  seeds: tuple[int, ...]) -> list[Verdict]:
    lo, hi = arm_row(best, halflife, b_min), arm_row(best, halflife, b_max)
    if not (lo["n_lrs_finite"] >= 2 and hi["n_lrs_finite"] >= 2):
        return []
    w_lo, w_hi = float(lo["band_width"]), float(hi["band_width"])
    return [Verdict(
        "marek", f"B = {b_min:g} is less sensitive to the LR than B = {b_max:g} (half-life rule)",
        "reproduced" if w_lo < w_hi else "not reproduced",
        "band = highest minus lowest mean final loss over the LR grid (diverged LRs left out); "
        "the same relative grid at every B (LR scaled by the preset's rule)", seeds,
        {"band_small": w_lo, "band_large": w_hi, "finite_lrs_small": lo["n_lrs_finite"],
         "finite_lrs_large": hi["n_lrs_finite"]})]


def _accumulation_verdict(runs: pd.DataFrame, best: pd.DataFrame, direct: str, accum: str,
                          seeds: tuple[int, ...], *, k: float, min_seeds: int) -> Verdict:
    """On one device, A micro-batches of b accumulated into B = A b cost the tokens and the
    gradient computations of training at b, but take B's steps: wasteful when that ends worse
    than training at b directly (both tuned over the LR grid). The accumulated run should also
    land at B's own loss (accumulation is the large-batch update: tests/test_accumulation.py)."""
    claim = "gradient accumulation on one device is wasteful: B = A x b by accumulation ends worse than b directly"
    a = best[(best["name"] == accum) & np.isfinite(best["mean"].astype(float))]
    mine = runs[runs["name"] == accum]
    if a.empty or "accumulate" not in mine or mine["accumulate"].isna().all():
        return Verdict("marek", claim, "inconclusive", "", seeds, details=f"no finished {accum!r} runs")
    acc = a.iloc[0].to_dict()
    steps = int(mine["accumulate"].dropna().iloc[0])
    b_big, b_micro = float(acc["batch_size"]), float(acc["batch_size"]) / steps
    micro, big = arm_row(best, direct, b_micro), arm_row(best, direct, b_big)
    if micro is None or not math.isfinite(float(micro["mean"])):
        return Verdict("marek", claim, "inconclusive", "", seeds,
                       details=f"no finished {direct!r} runs at the micro-batch size {b_micro:g}")
    noise_ = noise(acc, micro)
    diff = float(acc["mean"]) - float(micro["mean"])      # > 0: accumulating is worse
    return Verdict(
        "marek", f"gradient accumulation on one device is wasteful: B = {b_big:g} as {steps} x {b_micro:g} "
                 f"accumulated ends worse than B = {b_micro:g} directly (equal tokens and gradient computations)",
        directional_verdict(diff, noise_, int(acc["n"]), int(micro["n"]), k=k, min_seeds=min_seeds),
        f"difference must exceed {k:g} x the larger seed std", seeds,
        {"batch_size": b_big, "micro_batch_size": b_micro, "accumulate": steps,
         "accumulated_loss": acc["mean"], "micro_batch_loss": micro["mean"],
         "accumulated_minus_micro": diff, "seed_noise": noise_,
         "direct_large_batch_loss": big["mean"] if big else math.nan,
         "accumulated_minus_direct_large": float(acc["mean"]) - float(big["mean"]) if big else math.nan},
        "each side at its best LR; the accumulated run should match B's direct run up to float "
        "round-off (summation order) amplified by training")


def _sgd_verdicts(best: pd.DataFrame, adam: str, sgd: str, seeds: tuple[int, ...], *, k: float,
                  rel_tol: float, min_seeds: int) -> list[Verdict]:
    s = best[(best["name"] == sgd) & np.isfinite(best["mean"].astype(float))].sort_values("batch_size")
    if s.empty:
        return [Verdict("marek", "plain SGD is competitive at small B", "inconclusive", "", seeds,
                        details=f"no finished {sgd!r} runs")]
    gaps = []
    for b in s["batch_size"]:
        a, g = arm_row(best, adam, b), arm_row(best, sgd, b)
        if a is not None and math.isfinite(float(a["mean"])):
            gaps.append({"batch_size": b, "adam_loss": a["mean"], "sgd_loss": g["mean"],
                         "gap": float(g["mean"]) - float(a["mean"]), "noise": noise(a, g),
                         "sgd_best_lr": g["peak_lr"], "n": min(int(a["n"]), int(g["n"]))})
    if not gaps:
        return [Verdict("marek", "plain SGD is competitive at small B", "inconclusive", "", seeds,
                        details="no batch size with both SGD and Adam runs")]
    gt = pd.DataFrame(gaps)
    first = gt.iloc[0]
    tol = max(k * first["noise"] if math.isfinite(first["noise"]) else 0.0, rel_tol * first["adam_loss"])
    out = [Verdict(
        "marek", f"plain SGD (no momentum) at B = {first['batch_size']:g} is competitive with Adam",
        "inconclusive" if first["n"] < min_seeds else ("reproduced" if first["gap"] <= tol else "not reproduced"),
        f"SGD loss within max({k:g} x seed std, {rel_tol:.0%} of the Adam loss) of Adam (half-life rule) "
        "at the same B", seeds,
        {"batch_size": first["batch_size"], "sgd_minus_adam": first["gap"], "tolerance": tol,
         "sgd_loss": first["sgd_loss"], "adam_loss": first["adam_loss"], "sgd_best_lr": first["sgd_best_lr"]},
        "", gt)]
    if len(gt) >= 2:
        last = gt.iloc[-1]
        noise_ = max(float(first["noise"]), float(last["noise"]))
        out.append(Verdict(
            "marek", f"the SGD - Adam gap grows from B = {first['batch_size']:g} to B = {last['batch_size']:g}",
            directional_verdict(float(last["gap"]) - float(first["gap"]), noise_, int(first["n"]), int(last["n"]),
                                k=k, min_seeds=min_seeds),
            f"difference of the gaps must exceed {k:g} x the larger seed std", seeds,
            {"gap_small": first["gap"], "gap_large": last["gap"], "seed_noise": noise_}))
    return out


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
                    color=f"C{i}", capsize=3, ms=4, label=f"{arm_label(arm)} (best LR per B)")
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
        for b, curve in sorted(best_lr_curves(history, best, arm).items()):
            ax.plot(curve.index, curve.to_numpy(float), "-", color=colors[b], label=f"B = {b:g}")
        ax.set_xscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(arm_label(arm), fontsize=9)
        ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
    axes[0].set_ylabel("test loss (nats / token)")
    axes[0].legend(fontsize=7)
    return fig


class Marek(Finding):
    name = "marek"
    title = "Marek et al. 2025: small batches (down to 1) with Adam's beta2 half-life fixed in tokens"
    sources = ("marek2025",)
    offline = (Arm("marek_offline_halflife", "halflife"), Arm("marek_offline_beta2", "beta2"),
               Arm("marek_offline_sgd", "sgd"), Arm("marek_offline_accum", "accum"))
    paper = (Arm("marek_gpt2_halflife", "halflife"), Arm("marek_gpt2_beta2", "beta2"),
             Arm("marek_gpt2_sgd", "sgd"))
    one_paper_report = True

    def verdicts(self, runs, history, *, halflife="", beta2=None, sgd=None, accum=None, k=1.0, **_):
        return marek_verdicts(runs, halflife=halflife, beta2=beta2, sgd=sgd, accum=accum, k=k)

    def figures(self, runs, history, out, *, halflife=None, beta2=None, sgd=None, accum=None, **_) -> FigureBuilders:
        arms = [a for a in (halflife, beta2, sgd) if a]
        with_accum = arms + ([accum] if accum else [])   # one point: B by accumulation
        return {"marek_loss_vs_batch": lambda: marek_loss_vs_batch_figure(runs, with_accum),
                "marek_loss_vs_tokens": lambda: marek_loss_vs_tokens_figure(runs, history, arms)}

    def comparison(self, verdicts, bl):
        by_claim = {v.claim: v.numbers for v in verdicts}

        def first(prefix: str) -> dict:
            return next((n for c, n in by_claim.items() if c.startswith(prefix) or prefix in c), {})

        rows = []
        if n := first("at equal tokens"):
            rows.append(Comparison(
                "smallest B vs best larger B, final test loss (nats/token)",
                f"B={fmt(n['small_batch'])}: {fmt(n['small_loss'])} vs B={fmt(n['best_larger_batch'])}: "
                f"{fmt(n['best_larger_loss'])} ({n['best_larger_arm']})",
                "B = 1 equal or better per FLOP (GPT-2 124M .. 1.3B)", "marek2025 (claim)",
                ("marek2025/claim/small_batches",)))
        if n := first("with beta2 fixed at"):
            rows += [Comparison("B = smallest: beta2 fixed 0.95 minus half-life rule (nats/token)",
                                fmt(n["beta2_fixed_minus_halflife"]), "worse with beta2 fixed (GPT-2 B = 1)",
                                "marek2025 (claim)", ("marek2025/claim/small_batches",)),
                     Comparison("best LR at the smallest B: half-life rule / beta2 fixed",
                                f"{fmt(n['halflife_best_lr'])} / {fmt(n['beta2_fixed_best_lr'])}",
                                "2.4e-3 / 1.5e-4 (GPT-2 B = 1: 16x smaller with beta2 fixed)",
                                "marek2025 (authors' run scripts)", ("marek2025/recipe/gpt2",))]
        if n := first("plain SGD"):
            rows.append(Comparison("SGD minus Adam at the smallest B (nats/token)", fmt(n["sgd_minus_adam"]),
                                   "SGD almost as fast as AdamW at small B; the gap shrinks with B",
                                   "marek2025 (claim)", ("marek2025/claim/sgd",)))
        return rows


FINDING = Marek()
