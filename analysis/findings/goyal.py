"""Goyal et al. 2017: the linear LR scaling rule keeps accuracy up to large batches.

Verdict: with the linear rule, the largest B up to which the mean final test accuracy stays
within ``tolerance`` (absolute, accuracy as a fraction) of the smallest-B baseline; the other
rules swept (none, sqrt) are listed beside, each at the base LR best at its smallest B.
"""

from __future__ import annotations

import pandas as pd

from analysis.aggregate import finished, has_metric, metric, reference_lr_per_rule, seed_stats
from analysis.figures import accuracy_gap_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.report_format import md_table, pct, plus_minus, results_of
from analysis.verdicts import Verdict, seeds_of


def goyal_verdict(runs: pd.DataFrame, *, tolerance: float = 0.01, rule: str = "linear",
                  required_factor: float = 32.0, min_seeds: int = 2) -> Verdict:
    """Largest B up to which (every B' <= B) the ``rule`` keeps the mean final test accuracy
    no more than ``tolerance`` below the smallest-B baseline. Reproduced when that B reaches
    ``min(required_factor * B0, largest B tested)`` (Goyal: 256 -> 8k is 32x)."""
    tol = (f"within {tolerance * 100:g} percentage points (absolute) of the B0 baseline mean "
           f"final test accuracy; must hold up to min({required_factor:g} x B0, largest B)")
    f = finished(runs)
    lin = f[f["scaling"] == rule] if "scaling" in f else f.iloc[0:0]
    if lin.empty or not has_metric(lin, "test_accuracy"):
        return Verdict("goyal", f"{rule} LR scaling keeps test accuracy flat", "inconclusive", tol,
                       seeds_of(lin), details=f"no finished runs with scaling={rule!r} and test accuracy")
    every = reference_lr_per_rule(f)
    stats = seed_stats(every, ["scaling", "batch_size"], metric(every, "test_accuracy"))
    ours = stats[stats["scaling"] == rule].sort_values("batch_size")
    b0 = float(ours["batch_size"].iloc[0])
    base_mean, base_n = float(ours["mean"].iloc[0]), int(ours["n"].iloc[0])
    stats["drop_vs_baseline"] = base_mean - stats["mean"]
    ours = stats[stats["scaling"] == rule].sort_values("batch_size")
    within = ours["drop_vs_baseline"] <= tolerance + 1e-12
    holds = b0
    for b, ok in zip(ours["batch_size"], within):
        if not ok:
            break
        holds = float(b)
    largest = float(ours["batch_size"].iloc[-1])
    required = min(required_factor * b0, largest)
    if base_n < min_seeds or len(ours) < 2:
        verdict = "inconclusive"
    else:
        verdict = "reproduced" if holds >= required else "not reproduced"
    return Verdict(
        "goyal", f"{rule} LR scaling keeps final test accuracy within tolerance of B0={b0:g}",
        verdict, tol, seeds_of(every[every["scaling"] == rule]),
        {"baseline_batch_size": b0, "baseline_test_accuracy": base_mean,
         "baseline_std": float(ours["std"].iloc[0]), "holds_up_to_batch_size": holds,
         "holds_up_to_factor": holds / b0, "required_batch_size": required,
         "largest_batch_size": largest,
         "drop_at_largest": float(ours["drop_vs_baseline"].iloc[-1])},
        "batch sizes within tolerance: "
        + ", ".join(f"{b:g}" for b in ours.loc[within.to_numpy(), "batch_size"])
        + "; other rules are listed for comparison (per rule, the base LR best at its smallest B)",
        stats.sort_values(["scaling", "batch_size"], ignore_index=True))


class Goyal(Finding):
    name = "goyal"
    title = "Goyal et al. 2017: the linear LR scaling rule keeps accuracy up to large batches"
    sources = ("goyal2017",)
    offline = (Arm("goyal_offline"),)
    paper = (Arm("goyal_linear"),)
    defaults = {"tolerance": 0.01}

    def verdicts(self, runs, history, *, tolerance=0.01, **_):
        return [goyal_verdict(runs, tolerance=tolerance)]

    def figures(self, runs, history, out, **_) -> FigureBuilders:
        return {"accuracy_gap_vs_batch": lambda: accuracy_gap_figure(runs)}

    def published_tables(self, bl):
        r = results_of(bl, "goyal2017")
        tab = pd.DataFrame({"B": r["setting_batch_size"], "scaling": r["setting_scaling"],
                            "warmup": r.get("setting_warmup"),
                            "top-1 error (%)": [plus_minus(v, s) for v, s in zip(r["value"], r["std"])],
                            "confidence": r["confidence"]})
        return ["ResNet-50 / ImageNet, 5 runs (" + r["where"].iloc[0] + "):", "", md_table(tab)]

    def comparison(self, verdicts, bl):
        r = results_of(bl, "goyal2017").set_index("id")["value"]
        base = r["goyal2017/resnet50/B256/baseline"]
        n = verdicts[0].numbers
        if not n:
            return []
        rows = [Comparison(
            "linear rule: largest B within tolerance (factor of B0)",
            f"B = {n['holds_up_to_batch_size']:g} ({n['holds_up_to_factor']:g}× B0 = {n['baseline_batch_size']:g})",
            "error flat from 64 to 8k (128×), rising beyond", "goyal2017 (claim)", ("goyal2017/claim/error_flat_to_8k",)),
            Comparison(
            "linear rule: accuracy drop at the largest B (pp = error increase)",
            f"{pct(n['drop_at_largest'])} at B = {n['largest_batch_size']:g} "
            f"({n['largest_batch_size'] / n['baseline_batch_size']:g}× B0)",
            f"{r['goyal2017/resnet50/B8k/gradual_warmup'] - base:.2f} at 8k (32×, gradual warmup)", "goyal2017",
            ("goyal2017/resnet50/B256/baseline", "goyal2017/resnet50/B8k/gradual_warmup"))]
        stats = verdicts[0].table
        for rule, key in (("none", "no_lr_scaling"), ("sqrt", "sqrt_scaling")):
            s = stats[stats["scaling"] == rule].sort_values("batch_size") if stats is not None else None
            if s is not None and len(s):
                rows.append(Comparison(
                    f"{rule} rule: accuracy drop at the largest B (pp)",
                    f"{pct(s['drop_vs_baseline'].iloc[-1])} at B = {s['batch_size'].iloc[-1]:g}",
                    f"{r[f'goyal2017/resnet50/B8k/{key}'] - base:.2f} at 8k", "goyal2017",
                    ("goyal2017/resnet50/B256/baseline", f"goyal2017/resnet50/B8k/{key}")))
        return rows


FINDING = Goyal()
