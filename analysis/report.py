"""Markdown report: our numbers beside the published ones, with a verdict per claim.

``python -m analysis.report <results dir> --finding keskar|goyal|shallue|edge_of_stability|all
--out report.md [--where col=value ...] [--sb B --lb B] [--k 1.0] [--tolerance 0.01]
[--target-accuracy A | --goal-error E] [--tol 0.2] [--figures DIR]``

The verdict logic lives in ``analysis.verdicts`` (pure functions); this module only
selects published baselines (``analysis/baselines/published.yaml``, cited), formats numbers
and lists every run that was left out (diverged, failed, running) so nothing is hidden.
Accuracies are shown in percent (records hold fractions).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.aggregate import select_runs
from analysis.baselines import baselines_table
from analysis.lm_report import FIGURES as LM_FIGURES
from analysis.lm_report import LM_FINDINGS, SOURCES as LM_SOURCES, TITLES as LM_TITLES
from analysis.lm_report import comparison_rows, compute_lm_verdicts, published_extra
from analysis.load import load_tables
from analysis.steps_to_result import Goal
from analysis.verdicts import (Verdict, eos_verdict, goyal_verdict, keskar_verdicts,
                               shallue_verdicts)

EOS_FINDINGS = ("edge_of_stability", "edge_of_stability_cohen", "adaptive_edge_of_stability")
FINDINGS = ("keskar", "goyal", "shallue", *EOS_FINDINGS, *LM_FINDINGS)
TITLES = {**LM_TITLES,
    "keskar": "Keskar et al. 2017: large batches generalize worse and reach sharper minima",
    "goyal": "Goyal et al. 2017: the linear LR scaling rule keeps accuracy up to large batches",
    "shallue": "Shallue et al. 2019: steps-to-result regimes (with McCandlish et al. 2018)",
    "edge_of_stability": "Cohen et al. 2021: sharpness hovers at 2/lr (edge of stability)",
    "edge_of_stability_cohen": "Cohen et al. 2021 in their own setup (fc-tanh, square loss): sharpness "
                               "hovers at 2/lr",
    "adaptive_edge_of_stability": "Cohen et al. 2022: Adam's preconditioned sharpness hovers at "
                                  "(2 + 2β1)/((1 − β1) lr) = 38/lr",
}
SOURCES = {**LM_SOURCES, "keskar": ("keskar2017", "andreyev2024"), "goyal": ("goyal2017",),
           "shallue": ("shallue2019", "mccandlish2018"), "edge_of_stability": ("cohen2021",),
           "edge_of_stability_cohen": ("cohen2021",), "adaptive_edge_of_stability": ("cohen2022",)}
FIGURES = {**LM_FIGURES,
           "keskar": ("accuracy_gap_vs_batch", "sharpness_vs_batch", "keskar_interpolation"),
           "goyal": ("accuracy_gap_vs_batch",), "shallue": ("steps_to_result",),
           **{f: ("edge_of_stability",) for f in EOS_FINDINGS}}


# ------------------------------------------------------------------------ formatting
def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, (bool, str)):
        return str(x)
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    if isinstance(x, tuple):
        return ", ".join(map(str, x))
    return str(x)


def pct(x: float, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def md_table(df: pd.DataFrame, digits: int = 4, max_rows: int = 200) -> str:
    """A GitHub-markdown table of ``df`` (no index; at most ``max_rows`` rows, the rest counted)."""
    if df is None or df.empty:
        return "_(no rows)_\n"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v, digits).replace("|", "\\|") for v in row) + " |"
            for row in df.head(max_rows).itertuples(index=False)]
    more = [f"\n_({len(df) - max_rows} more rows not shown)_"] if len(df) > max_rows else []
    return "\n".join([head, sep, *body, *more]) + "\n"


# --------------------------------------------------------------------- published side
def _results(bl: pd.DataFrame, source: str, where_prefix: str = "") -> pd.DataFrame:
    r = bl[(bl["source"] == source) & (bl["kind"] == "result")]
    return r[r["where"].str.startswith(where_prefix)] if where_prefix else r


def _pm(v: float, s: float | None) -> str:
    return f"{v:g} ± {s:g}" if s is not None and not pd.isna(s) else f"{v:g}"


def keskar_published(bl: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (test accuracy, SB/LB, derived drop) and Table 3 (eps = 1e-3, derived ratio)."""
    t2 = _results(bl, "keskar2017", "Table 2")
    t2 = t2[t2["metric"] == "test_accuracy"]
    rows2 = []
    for net, g in t2.groupby("setting_network", sort=True):
        sb, lb = g[g["setting_batch"] == "SB"].iloc[0], g[g["setting_batch"] == "LB"].iloc[0]
        rows2.append({"net": net, "dataset": sb["setting_dataset"], "test SB (%)": _pm(sb["value"], sb["std"]),
                      "test LB (%)": _pm(lb["value"], lb["std"]),
                      "drop SB − LB (pp, derived)": round(sb["value"] - lb["value"], 2)})
    t3 = _results(bl, "keskar2017", "Table 3")
    t3 = t3[t3["metric"] == "sharpness_full_eps1e-03"]
    rows3 = []
    for net, g in t3.groupby("setting_network", sort=True):
        sb, lb = g[g["setting_batch"] == "SB"].iloc[0], g[g["setting_batch"] == "LB"].iloc[0]
        rows3.append({"net": net, "SB": _pm(sb["value"], sb["std"]), "LB": _pm(lb["value"], lb["std"]),
                      "ratio LB/SB (derived)": round(lb["value"] / sb["value"], 1)})
    return pd.DataFrame(rows2), pd.DataFrame(rows3)


def published_section(finding: str, bl: pd.DataFrame) -> str:
    """Citations, published numbers and claims for a finding (all from published.yaml)."""
    lines = ["## Published", ""]
    for src in SOURCES[finding]:
        cite = bl.loc[bl["source"] == src, "citation"].iloc[0]
        lines.append(f"- [{src}] {cite}")
    lines.append("")
    if finding == "keskar":
        t2, t3 = keskar_published(bl)
        lines += ["Table 2, test accuracy (SB = 256, LB = 10% of the training set, Adam, 5 runs):", "",
                  md_table(t2), "Table 3, ε-sharpness in full space, ε = 1e-3:", "", md_table(t3)]
    elif finding == "goyal":
        r = _results(bl, "goyal2017")
        tab = pd.DataFrame({"B": r["setting_batch_size"], "scaling": r["setting_scaling"],
                            "warmup": r.get("setting_warmup"),
                            "top-1 error (%)": [_pm(v, s) for v, s in zip(r["value"], r["std"])],
                            "confidence": r["confidence"]})
        lines += ["ResNet-50 / ImageNet, 5 runs (" + r["where"].iloc[0] + "):", "", md_table(tab)]
    lines += published_extra(finding, bl)
    for kind in ("claim", "recipe", "definition", "goal"):
        sel = bl[bl["source"].isin(SOURCES[finding]) & (bl["kind"] == kind)]
        for _, e in sel.iterrows():
            text = e["text"] if kind != "goal" else f"{e['metric']} = {e['value']:g} ({e['units']})"
            note = f" [{e['note']}]" if isinstance(e.get("note"), str) else ""
            lines.append(f"- {kind} ({e['source']}, {e['where']}, confidence {e['confidence']}): {text}{note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- comparisons
def comparison(finding: str, verdicts: list[Verdict], bl: pd.DataFrame) -> pd.DataFrame:
    """Rows ``quantity, ours, published, source``: our number beside the published one."""
    rows: list[dict[str, str]] = []
    if finding == "keskar":
        t2, t3 = keskar_published(bl)
        drop = t2["drop SB − LB (pp, derived)"]
        v = verdicts[0].numbers
        if v:
            rows.append({"quantity": "test accuracy SB − LB (pp)",
                         "ours": f"{pct(v['difference_sb_minus_lb'])} (seed noise {pct(v['seed_noise'])}; "
                                 f"B {v['sb']:g} vs {v['lb']:g}; n = {v['sb_n']}/{v['lb_n']})",
                         "published": f"{drop.min():g} … {drop.max():g} (up to 5% claimed)",
                         "source": "keskar2017 Table 2"})
        ratio = t3["ratio LB/SB (derived)"]
        for vd in verdicts[1:]:
            n = vd.numbers
            same = n["metric"] == "sharpness_full_eps1e-03"
            rows.append({"quantity": f"sharpness ratio LB/SB ({n['metric']})",
                         "ours": f"{fmt(n['ratio_lb_over_sb'], 3)}×",
                         "published": (f"{ratio.min():g}× … {ratio.max():g}× (ε-sharpness, ε=1e-3)" if same
                                       else "no published value for this metric") +
                                      "; 1-2 orders of magnitude claimed",
                         "source": "keskar2017 Table 3" if same else "keskar2017 (claim)"})
    elif finding == "goyal":
        r = _results(bl, "goyal2017").set_index("id")["value"]
        base = r["goyal2017/resnet50/B256/baseline"]
        n = verdicts[0].numbers
        if n:
            rows.append({"quantity": "linear rule: largest B within tolerance (factor of B0)",
                         "ours": f"B = {n['holds_up_to_batch_size']:g} ({n['holds_up_to_factor']:g}× B0 = {n['baseline_batch_size']:g})",
                         "published": "error flat from 64 to 8k (128×), rising beyond",
                         "source": "goyal2017 (claim)"})
            rows.append({"quantity": "linear rule: accuracy drop at the largest B (pp = error increase)",
                         "ours": f"{pct(n['drop_at_largest'])} at B = {n['largest_batch_size']:g} "
                                 f"({n['largest_batch_size'] / n['baseline_batch_size']:g}× B0)",
                         "published": f"{r['goyal2017/resnet50/B8k/gradual_warmup'] - base:.2f} at 8k (32×, gradual warmup)",
                         "source": "goyal2017"})
            stats = verdicts[0].table
            for rule, key in (("none", "no_lr_scaling"), ("sqrt", "sqrt_scaling")):
                s = stats[stats["scaling"] == rule].sort_values("batch_size") if stats is not None else None
                if s is not None and len(s):
                    rows.append({"quantity": f"{rule} rule: accuracy drop at the largest B (pp)",
                                 "ours": f"{pct(s['drop_vs_baseline'].iloc[-1])} at B = {s['batch_size'].iloc[-1]:g}",
                                 "published": f"{r[f'goyal2017/resnet50/B8k/{key}'] - base:.2f} at 8k",
                                 "source": "goyal2017"})
    elif finding == "shallue":
        n = verdicts[0].numbers
        rows.append({"quantity": "perfect scaling up to B", "ours": fmt(n.get("perfect_scaling_up_to")),
                     "published": "a perfect-scaling regime exists, then diminishing returns",
                     "source": "shallue2019 (claim)"})
        rows.append({"quantity": "critical batch size: measured B_crit (fit) vs B_simple",
                     "ours": f"{fmt(n.get('b_crit_fit'))} vs {fmt(n.get('b_simple_median', math.nan))}",
                     "published": "S = S_min(1 + B_crit/B); B_simple = tr(Σ)/|G|²",
                     "source": "mccandlish2018 (definitions)"})
        if len(verdicts) > 1 and verdicts[1].numbers:
            m = verdicts[1].numbers
            rows.append({"quantity": "tuned test accuracy SB − LB (pp)",
                         "ours": f"{pct(m['difference_sb_minus_lb'])} (seed noise {pct(m['seed_noise'])})",
                         "published": "no evidence of degradation when tuned",
                         "source": "shallue2019 (claim)"})
    elif finding in EOS_FINDINGS:
        adaptive = finding == "adaptive_edge_of_stability"
        for v in verdicts:
            n = v.numbers
            if not n:
                continue
            arm = v.claim.rsplit(" (", 1)[1].rstrip(")") if v.claim.endswith(")") else ""
            rows.append({"quantity": ("median preconditioned sharpness / (38/lr)" if adaptive else
                                      "median sharpness / threshold") + " after reaching"
                                     + (f" ({arm})" if arm else ""),
                         "ours": f"{fmt(n['median_ratio_after_reach'], 3)} ({n['runs_reaching']} of "
                                 f"{n['runs']} runs reach it; {n['fraction_hovering']:.0%} of "
                                 "those hover)",
                         "published": ("≈ 1: λ_max(P⁻¹H) equilibrates at 38/η (β1 = 0.9)" if adaptive
                                       else "≈ 1: rises to about 2/η, then hovers"),
                         "source": "cohen2022 (claim)" if adaptive else "cohen2021 (claim)"})
    elif finding in LM_FINDINGS:
        rows += comparison_rows(finding, verdicts)
    return pd.DataFrame(rows, columns=["quantity", "ours", "published", "source"])


# ----------------------------------------------------------------------------- report
def verdict_block(v: Verdict) -> str:
    nums = pd.DataFrame([{"quantity": k, "value": val} for k, val in v.numbers.items()])
    parts = [f"### {v.claim}", "", f"**Verdict: {v.verdict}**", "",
             f"- tolerance: {v.tolerance or '—'}", f"- seeds: {fmt(v.seeds) if v.seeds else 'none'}"]
    if v.details:
        parts.append(f"- notes: {v.details}")
    parts += ["", md_table(nums) if len(nums) else ""]
    if v.table is not None and len(v.table):
        table = v.table.drop(columns=[c for c in ("run_id",) if c in v.table], errors="ignore")
        parts += ["Per batch size / run:", "", md_table(table)]
    return "\n".join(parts) + "\n"


def excluded_runs(runs: pd.DataFrame) -> str:
    """Every run that is not 'finished' (never hidden from the report)."""
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    lines = ["## Runs", "", "status counts: " + (", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no runs"), ""]
    other = runs[runs["status"] != "finished"] if len(runs) else runs
    if len(other):
        cols = [c for c in ("run_id", "status", "batch_size", "scaling", "peak_lr", "seed",
                            "diverged_at_step", "error") if c in other]
        lines += ["Not finished (left out of the accuracy/sharpness verdicts; still counted as trials "
                  "for steps-to-result):", "", md_table(other[cols])]
    return "\n".join(lines) + "\n"


def figure_links(finding: str, figures_dir: Path | None, out: Path | None) -> str:
    if figures_dir is None:
        return ""
    found = [figures_dir / f"{n}.png" for n in FIGURES[finding] if (figures_dir / f"{n}.png").is_file()]
    base = out.parent if out is not None else Path.cwd()
    return "".join(f"![{p.stem}]({os.path.relpath(p, base)})\n" for p in found)


def compute_verdicts(finding: str, runs: pd.DataFrame, history: pd.DataFrame, *,
                     sb: float | None = None, lb: float | None = None, k: float = 1.0,
                     tolerance: float = 0.01, goal: Goal | None = None,
                     tol: float = 0.2, **lm_opts: Any) -> list[Verdict]:
    if finding in LM_FINDINGS:  # arms and targets come from the presets (lm_opts)
        return compute_lm_verdicts(finding, runs, history, k=k, tol=tol, **lm_opts)
    if finding == "keskar":
        return keskar_verdicts(runs, sb=sb, lb=lb, k=k)
    if finding == "goyal":
        return [goyal_verdict(runs, tolerance=tolerance)]
    if finding == "shallue":
        if goal is None:
            return [Verdict("shallue", "steps-to-result regimes", "inconclusive", "", (),
                            details="no goal: pass --target-accuracy/--goal-error or record "
                                    "convergence.target_test_accuracy")]
        return shallue_verdicts(history, runs, goal=goal, tol=tol, k=k)
    if finding in EOS_FINDINGS:  # one verdict per arm (records' name) when there are several
        names = sorted(history["name"].dropna().unique()) if "name" in history else []
        if len(names) < 2:
            return [eos_verdict(history, tol=tol)]
        return [eos_verdict(history, tol=tol, arm=name) for name in names]
    raise ValueError(f"unknown finding {finding!r}; choose from {FINDINGS}")


def render(finding: str, verdicts: list[Verdict], runs: pd.DataFrame, bl: pd.DataFrame, *,
           results: str = "", figures: str = "") -> str:
    summary = pd.DataFrame([{"claim": v.claim, "verdict": f"**{v.verdict}**", "seeds": fmt(v.seeds) or "none"}
                            for v in verdicts])
    return "\n".join([
        f"# {TITLES[finding]}", "",
        f"Results: `{results}` ({len(runs)} run records). Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `analysis.report`.", "",
        md_table(summary), published_section(finding, bl),
        "## Ours beside published", "", md_table(comparison(finding, verdicts, bl)),
        "## Verdicts", "", *[verdict_block(v) for v in verdicts], figures, excluded_runs(runs)])


def build_report(results: Path | str, findings: Sequence[str], *, conditions: dict[str, str] | None = None,
                 out: Path | None = None, figures_dir: Path | None = None,
                 target_accuracy: float | None = None, goal_error: float | None = None,
                 **opts: Any) -> str:
    """The markdown report for ``findings`` over the records under ``results``."""
    runs, history = select_runs(*load_tables(results), conditions)
    if goal_error is not None:
        goal = Goal.error(goal_error)
    elif target_accuracy is not None:
        goal = Goal.accuracy(target_accuracy)
    elif "target_test_accuracy" in runs and runs["target_test_accuracy"].notna().any():
        goal = Goal.accuracy(float(runs["target_test_accuracy"].median()))
    else:
        goal = None
    bl = baselines_table()
    if figures_dir is None and (Path(results) / "figures").is_dir():
        figures_dir = Path(results) / "figures"
    parts = []
    for finding in findings:
        verdicts = compute_verdicts(finding, runs, history, goal=goal, **opts)
        parts.append(render(finding, verdicts, runs, bl, results=str(results),
                            figures=figure_links(finding, figures_dir, out)))
    return "\n\n".join(parts)


def _options(pairs: Sequence[str], ap: argparse.ArgumentParser) -> dict[str, Any]:
    import yaml

    if any("=" not in p for p in pairs):
        ap.error("--option takes KEY=VALUE")
    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--finding", required=True, action="append", choices=[*FINDINGS, "all"])
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: stdout)")
    ap.add_argument("--where", nargs="*", default=[], metavar="COL=VALUE",
                    help="keep only runs whose column equals the value (e.g. dataset=mnist1d)")
    ap.add_argument("--sb", type=float, default=None, help="Keskar small batch (default: smallest B)")
    ap.add_argument("--lb", type=float, default=None, help="Keskar large batch (default: largest B)")
    ap.add_argument("--k", type=float, default=1.0, help="seed-noise multiple a difference must exceed")
    ap.add_argument("--tolerance", type=float, default=0.01,
                    help="Goyal: allowed accuracy drop vs the smallest B (fraction; 0.01 = 1 pp)")
    ap.add_argument("--tol", type=float, default=0.2,
                    help="Shallue perfect-scaling / edge-of-stability relative tolerance")
    ap.add_argument("--target-accuracy", type=float, default=None)
    ap.add_argument("--goal-error", type=float, default=None)
    ap.add_argument("--figures", type=Path, default=None, help="figures dir to link (default <results>/figures)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="language-model findings: arms and targets (YAML values), e.g. halflife=<preset "
                         "name>, data_sizes=[16384,65536], target_loss=2.5, ramps=[a,b]")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.error(f"{args.results} is not a directory")
    try:
        conditions = dict(w.split("=", 1) for w in args.where)
    except ValueError:
        ap.error("--where takes COL=VALUE")
    findings = FINDINGS if "all" in args.finding else tuple(dict.fromkeys(args.finding))
    text = build_report(args.results, findings, conditions=conditions, out=args.out,
                        figures_dir=args.figures, target_accuracy=args.target_accuracy,
                        goal_error=args.goal_error, sb=args.sb, lb=args.lb, k=args.k,
                        tolerance=args.tolerance, tol=args.tol, **_options(args.option, ap))
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
