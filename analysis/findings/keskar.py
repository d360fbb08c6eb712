"""Keskar et al. 2017: large batches generalize worse and reach sharper minima.

Verdicts: LB (largest B) final test accuracy below SB (smallest B), and LB sharper by every
recorded sharpness key, per batch size using the best setting by mean test accuracy (tuned per
B: this can only shrink the gap, so a gap that survives is not an artifact of a bad LB learning
rate). After training, the loss and accuracy along the line from the SB to the LB solution
(Fig. 3), with BatchNorm statistics interpolated and, as a check, recomputed per alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.aggregate import best_setting_per_batch, finished, has_metric, metric, seed_stats
from analysis.figures import (INTERPOLATION_FILENAME, accuracy_gap_figure, interpolation_figure,
                              sharpness_figure)
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders, Preset
from analysis.plotting import no_data, save_figure
from analysis.report_format import fmt, md_table, pct, plus_minus, results_of
from analysis.verdicts import Verdict, directional_verdict, sb_lb, seeds_of, side

SHARPNESS_KEYS = ("sharpness_full_eps1e-03", "hessian_top_eigenvalue", "hessian_trace",
                  "batch_sharpness", "preconditioned_top_eigenvalue")
ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(31))  # Fig. 3: alpha in [-1, 2]
BN_RECOMPUTED = "interpolation_bn_recomputed.csv"


def keskar_verdicts(runs: pd.DataFrame, *, sb: float | None = None, lb: float | None = None,
                    k: float = 1.0, min_seeds: int = 2) -> list[Verdict]:
    """Generalization gap (test accuracy SB - LB) and sharpness (LB vs SB, each recorded key)."""
    tol = (f"difference must exceed {k:g} x the larger seed std (sample std over seeds); "
           f"< {min_seeds} seeds on a side -> inconclusive")
    f = finished(runs)
    if f.empty or not has_metric(f, "test_accuracy") or f["batch_size"].nunique() < 2:
        return [Verdict("keskar", "LB test accuracy below SB", "inconclusive", tol, seeds_of(f),
                        details="needs finished runs with final test_accuracy at >= 2 batch sizes")]
    sel = best_setting_per_batch(f)
    sb, lb = sb_lb(sel, sb, lb)
    pick = sel[sel["batch_size"].isin([sb, lb])]
    acc = seed_stats(pick, ["batch_size"], metric(pick, "test_accuracy"))
    train = seed_stats(pick, ["batch_size"], metric(pick, "train_accuracy"))
    (ms, ss, ns), (ml, sl, nl) = side(acc, sb), side(acc, lb)
    noise = max(ss, sl) if ns >= 2 and nl >= 2 else math.nan
    diff = ms - ml
    setting = pick.groupby("batch_size")[["scaling", "base_lr", "peak_lr"]].first()
    table = acc.rename(columns={"mean": "test_accuracy_mean", "std": "test_accuracy_std"}).merge(
        train[["batch_size", "mean"]].rename(columns={"mean": "train_accuracy_mean"}),
        on="batch_size", how="left").merge(setting.reset_index(), on="batch_size", how="left")
    out = [Verdict(
        "keskar", f"LB (B={lb:g}) final test accuracy is lower than SB (B={sb:g})",
        directional_verdict(diff, noise, ns, nl, k=k, min_seeds=min_seeds), tol, seeds_of(pick),
        {"sb": sb, "lb": lb, "sb_test_accuracy": ms, "sb_std": ss, "sb_n": ns,
         "lb_test_accuracy": ml, "lb_std": sl, "lb_n": nl, "difference_sb_minus_lb": diff,
         "seed_noise": noise},
        "per B, the setting with the best mean test accuracy (tuned per B)", table)]
    return out + [_sharpness_verdict(pick, key, sb, lb, tol, k, min_seeds)
                  for key in SHARPNESS_KEYS if has_metric(pick, key)]


def _sharpness_verdict(pick: pd.DataFrame, key: str, sb: float, lb: float, tol: str, k: float,
                       min_seeds: int) -> Verdict:
    st = seed_stats(pick, ["batch_size"], metric(pick, key))
    (s_m, s_s, s_n), (l_m, l_s, l_n) = side(st, sb), side(st, lb)
    noise = max(s_s, l_s) if s_n >= 2 and l_n >= 2 else math.nan
    return Verdict(
        "keskar", f"LB (B={lb:g}) is sharper than SB (B={sb:g}) by {key}",
        directional_verdict(l_m - s_m, noise, s_n, l_n, k=k, min_seeds=min_seeds), tol, seeds_of(pick),
        {"metric": key, "sb_mean": s_m, "sb_std": s_s, "lb_mean": l_m, "lb_std": l_s,
         "ratio_lb_over_sb": l_m / s_m if s_m else math.nan, "seed_noise": noise})


def keskar_published(bl: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (test accuracy, SB/LB, derived drop) and Table 3 (eps = 1e-3, derived ratio)."""
    t2 = results_of(bl, "keskar2017", "Table 2")
    t2 = t2[t2["metric"] == "test_accuracy"]
    rows2 = []
    for net, g in t2.groupby("setting_network", sort=True):
        sb, lb = g[g["setting_batch"] == "SB"].iloc[0], g[g["setting_batch"] == "LB"].iloc[0]
        rows2.append({"net": net, "dataset": sb["setting_dataset"], "test SB (%)": plus_minus(sb["value"], sb["std"]),
                      "test LB (%)": plus_minus(lb["value"], lb["std"]),
                      "drop SB − LB (pp, derived)": round(sb["value"] - lb["value"], 2)})
    t3 = results_of(bl, "keskar2017", "Table 3")
    t3 = t3[t3["metric"] == "sharpness_full_eps1e-03"]
    rows3 = []
    for net, g in t3.groupby("setting_network", sort=True):
        sb, lb = g[g["setting_batch"] == "SB"].iloc[0], g[g["setting_batch"] == "LB"].iloc[0]
        rows3.append({"net": net, "SB": plus_minus(sb["value"], sb["std"]), "LB": plus_minus(lb["value"], lb["std"]),
                      "ratio LB/SB (derived)": round(lb["value"] / sb["value"], 1)})
    return pd.DataFrame(rows2), pd.DataFrame(rows3)


class Keskar(Finding):
    name = "keskar"
    title = "Keskar et al. 2017: large batches generalize worse and reach sharper minima"
    sources = ("keskar2017", "andreyev2024")
    offline = (Arm("keskar_offline"),)
    paper = tuple(Arm(p) for p in ("keskar_f1", "keskar_c1", "keskar_c2", "keskar_c3", "keskar_c4"))

    def options(self, presets: Sequence[Preset]) -> dict[str, Any]:
        """SB and LB are the ends of the (first) preset's batch-size sweep."""
        opts = super().options(presets)
        if presets and "batch_size" in presets[0].params:
            sizes = [int(b) for b in presets[0].params["batch_size"]]
            opts.update(sb=min(sizes), lb=max(sizes))
        return opts

    def verdicts(self, runs, history, *, sb=None, lb=None, k=1.0, **_):
        return keskar_verdicts(runs, sb=sb, lb=lb, k=k)

    def figures(self, runs, history, out, **_) -> FigureBuilders:
        curve = out / INTERPOLATION_FILENAME
        return {"accuracy_gap_vs_batch": lambda: accuracy_gap_figure(runs),
                "sharpness_vs_batch": lambda: sharpness_figure(runs),
                "keskar_interpolation": lambda: interpolation_figure(
                    pd.read_csv(curve) if curve.is_file() else no_data(f"interpolation: no {curve}"))}

    def published_tables(self, bl):
        t2, t3 = keskar_published(bl)
        return ["Table 2, test accuracy (SB = 256, LB = 10% of the training set, Adam, 5 runs):", "",
                md_table(t2), "Table 3, ε-sharpness in full space, ε = 1e-3:", "", md_table(t3)]

    def comparison(self, verdicts, bl):
        t2, t3 = keskar_published(bl)
        drop, ratio = t2["drop SB − LB (pp, derived)"], t3["ratio LB/SB (derived)"]
        rows = []
        v = verdicts[0].numbers
        if v:
            rows.append(Comparison(
                "test accuracy SB − LB (pp)",
                f"{pct(v['difference_sb_minus_lb'])} (seed noise {pct(v['seed_noise'])}; "
                f"B {v['sb']:g} vs {v['lb']:g}; n = {v['sb_n']}/{v['lb_n']})",
                f"{drop.min():g} … {drop.max():g} (up to 5% claimed)", "keskar2017 Table 2",
                ("keskar2017/table2/", "keskar2017/claim/test_accuracy_drop")))
        for vd in verdicts[1:]:
            n = vd.numbers
            same = n["metric"] == "sharpness_full_eps1e-03"
            rows.append(Comparison(
                f"sharpness ratio LB/SB ({n['metric']})", f"{fmt(n['ratio_lb_over_sb'], 3)}×",
                (f"{ratio.min():g}× … {ratio.max():g}× (ε-sharpness, ε=1e-3)" if same
                 else "no published value for this metric") + "; 1-2 orders of magnitude claimed",
                "keskar2017 Table 3" if same else "keskar2017 (claim)",
                ("keskar2017/table3/",) * same + ("keskar2017/claim/sharpness_orders_of_magnitude",)))
        return rows

    def after_training(self, records, out, options, *, batch_sizes=None, paper=False):
        """The SB -> LB interpolation of seed 0 (offline: also with BatchNorm statistics recomputed)."""
        sb, lb = options.get("sb"), options.get("lb")
        if sb is None or lb is None:
            return
        if paper:
            try:
                interpolation(records, *_sweep_sb_lb_dirs(records, sb, lb), out / INTERPOLATION_FILENAME)
            except (FileNotFoundError, ValueError) as err:
                print(f"keskar: no interpolation curve ({err})", flush=True)
            return
        if batch_sizes is not None and sb in batch_sizes and lb in batch_sizes:
            for csv, stats in ((INTERPOLATION_FILENAME, "interpolate"), (BN_RECOMPUTED, "recompute")):
                interpolation(records, Path(f"B{sb}"), Path(f"B{lb}"), out / csv, bn_stats=stats)

    def footer(self, out):
        return bn_recomputed_section(out / BN_RECOMPUTED, out / "figures") if (out / BN_RECOMPUTED).is_file() else ""


# ------------------------------------------------------------------ Fig. 3 interpolation
def _seed0_record(job_dir: Path) -> Path:
    """The record of the first LR and seed 0 of a job (replicas are LR-major x seeds)."""
    from bench.record import find_records, read_record

    best = None
    for path in find_records(job_dir):
        r = read_record(path)["replica"]
        key = (r.get("index", 0) if r.get("seed") == 0 else math.inf)
        if best is None or key < best[0]:
            best = (key, path)
    if best is None:
        raise FileNotFoundError(f"no records in {job_dir}")
    return best[1]


def interpolation(records: Path, sb_dir: Path, lb_dir: Path, out_csv: Path,
                  bn_stats: str = "interpolate") -> Path:
    """``bench.tools.interpolate.interpolation_curve`` at ``ALPHAS`` between the SB and LB solutions."""
    from bench.tools.interpolate import interpolation_curve

    df = interpolation_curve(_seed0_record(records / sb_dir), _seed0_record(records / lb_dir), ALPHAS,
                             bn_stats=bn_stats)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return out_csv


def _sweep_sb_lb_dirs(sweep: Path, sb: int, lb: int) -> tuple[Path, Path]:
    """The Hydra job dirs (relative to ``sweep``) holding the SB and LB records."""
    from bench.record import find_records, read_record

    found: dict[int, Path] = {}
    for path in find_records(sweep):
        b = read_record(path)["experiment"].get("batch_size")
        if b in (sb, lb) and b not in found:
            found[b] = path.parent.relative_to(sweep)
    if sb not in found or lb not in found:
        raise FileNotFoundError(f"records for B={sb} and B={lb} not both under {sweep}")
    return found[sb], found[lb]


def bn_recomputed_section(csv: Path, figures_dir: Path) -> str:
    """Fig. 3 again with BatchNorm statistics recomputed at every alpha (a check on the
    interpolated-statistics curve: negative interpolated variances are clipped at 0 there)."""
    df = pd.read_csv(csv)
    fig = interpolation_figure(df)
    fig.axes[0].set_title("SB -> LB with BatchNorm statistics recomputed per α", fontsize=10)
    save_figure(fig, figures_dir, "keskar_interpolation_bn_recomputed", ("png",))
    at = df.set_index("alpha")
    rows = ["| α | train loss | test loss | train acc. | test acc. |", "|---|---|---|---|---|"]
    for a in (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0):
        if a in at.index:
            r = at.loc[a]
            rows.append(f"| {a:g} | {r['train_loss']:.4g} | {r['test_loss']:.4g} | "
                        f"{r['train_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    return "\n".join([
        "## Interpolation with BatchNorm statistics recomputed", "",
        "`interpolation.csv` (figure `keskar_interpolation` above) interpolates the BatchNorm running "
        "statistics with the parameters; outside [0, 1] interpolated variances can turn negative and "
        "are clipped at 0, which by itself inflates the loss there. `interpolation_bn_recomputed.csv` "
        "recomputes the statistics of every α on the training data instead (bench.tools.interpolate, "
        "bn_stats='recompute'; same SB and LB runs, seed 0):", "",
        *rows, "", "![keskar_interpolation_bn_recomputed](figures/keskar_interpolation_bn_recomputed.png)", ""])


FINDING = Keskar()
