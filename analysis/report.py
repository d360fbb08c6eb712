"""Markdown report: our numbers beside the published ones, with a verdict per claim.

``python -m analysis.report <results dir> --finding <name>|all --out report.md [--where col=value ...]
[--sb B --lb B] [--k 1.0] [--tolerance 0.01] [--target-accuracy A | --goal-error E] [--tol 0.2]
[--option KEY=VALUE ...] [--figures DIR]`` (the findings: ``analysis.findings.names()``).

The report's layout is the same for every finding; what it says comes from the finding's module
(``analysis.findings``: title, sources, verdicts, comparison rows, published tables, figures).
This module selects published baselines (``analysis/baselines/published.yaml``, cited), formats
numbers and lists every run that was left out (diverged, failed, running) so nothing is hidden.
Accuracies are shown in percent (records hold fractions).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.aggregate import select_runs
from analysis.baselines import CONFIDENCES, baselines_table
from analysis.findings import Finding, get, names
from analysis.load import load_tables
from analysis.report_format import fmt, md_table
from analysis.verdicts import Verdict

COMPARISON_COLUMNS = ("quantity", "ours", "published", "source")
CONFIDENCE_RANK = {c: i for i, c in enumerate(CONFIDENCES)}  # published.yaml's, most to least sure
PROVISIONAL_NOTE = ("A row marked **provisional** compares with a published number that is not confirmed "
                    "in the paper or the authors' code (published.yaml confidence below high): it is not "
                    "a settled comparison.")


def published_section(finding: Finding, bl: pd.DataFrame) -> str:
    """Citations, published numbers and claims for a finding (all from published.yaml)."""
    lines = ["## Published", ""]
    for src in finding.sources:
        cite = bl.loc[bl["source"] == src, "citation"].iloc[0]
        lines.append(f"- [{src}] {cite}")
    lines.append("")
    lines += finding.published_tables(bl)
    for kind in ("claim", "recipe", "definition", "goal"):
        sel = bl[bl["source"].isin(finding.sources) & (bl["kind"] == kind)]
        for _, e in sel.iterrows():
            text = e["text"] if kind != "goal" else f"{e['metric']} = {e['value']:g} ({e['units']})"
            note = f" [{e['note']}]" if isinstance(e.get("note"), str) else ""
            lines.append(f"- {kind} ({e['source']}, {e['where']}, confidence {e['confidence']}): {text}{note}")
    return "\n".join(lines) + "\n"


def comparison(finding: Finding, verdicts: list[Verdict], bl: pd.DataFrame) -> pd.DataFrame:
    """Rows ``quantity, ours, published, source``: our number beside the published one."""
    rows = [{c: getattr(row, c) for c in COMPARISON_COLUMNS} for row in finding.comparison(verdicts, bl)]
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def published_confidence(entries: Sequence[str], bl: pd.DataFrame) -> str:
    """The confidence of the published side of a comparison row: the least confident of its
    published.yaml entries (ids, or prefixes ending in ``/``). Anything but ``high`` (or no
    entry found) is marked provisional: the comparison is not settled."""
    ids = bl["id"].astype(str)
    hit = pd.Series(False, index=bl.index)
    for e in entries:
        hit |= ids.str.startswith(e) if e.endswith("/") else ids == e
    levels = sorted(bl.loc[hit, "confidence"], key=lambda c: CONFIDENCE_RANK.get(c, len(CONFIDENCE_RANK)))
    if not levels:
        return "**provisional** (no published.yaml entry)"
    return "high" if levels[-1] == "high" else f"**provisional** ({levels[-1]})"


def comparison_table(finding: Finding, verdicts: list[Verdict], bl: pd.DataFrame) -> pd.DataFrame:
    """The comparison rows as shown: each with the confidence of its published number."""
    rows = finding.comparison(verdicts, bl)
    table = comparison(finding, verdicts, bl)
    return table.assign(confidence=[published_confidence(r.entries, bl) for r in rows])


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


def figure_links(figure_names: Sequence[str], figures_dir: Path | None, out: Path | None) -> str:
    """Image links to the PNGs of ``figure_names`` written under ``figures_dir``."""
    if figures_dir is None:
        return ""
    found = [figures_dir / f"{n}.png" for n in figure_names if (figures_dir / f"{n}.png").is_file()]
    base = out.parent if out is not None else Path.cwd()
    return "".join(f"![{p.stem}]({os.path.relpath(p, base)})\n" for p in found)


def render(finding: Finding, verdicts: list[Verdict], runs: pd.DataFrame, bl: pd.DataFrame, *,
           results: str = "", figures: str = "") -> str:
    summary = pd.DataFrame([{"claim": v.claim, "verdict": f"**{v.verdict}**", "seeds": fmt(v.seeds) or "none"}
                            for v in verdicts])
    return "\n".join([
        f"# {finding.title}", "",
        f"Results: `{results}` ({len(runs)} run records). Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `analysis.report`.", "",
        md_table(summary), published_section(finding, bl),
        "## Ours beside published", "", PROVISIONAL_NOTE, "", md_table(comparison_table(finding, verdicts, bl)),
        "## Verdicts", "", *[verdict_block(v) for v in verdicts], figures, excluded_runs(runs)])


def build_report(results: Path | str, findings: Sequence[str], *, conditions: dict[str, str] | None = None,
                 out: Path | None = None, figures_dir: Path | None = None, **opts: Any) -> str:
    """The markdown report for ``findings`` over the records under ``results``; ``opts`` go to
    each finding's verdicts and figures (each takes the options it declares)."""
    runs, history = select_runs(*load_tables(results), conditions)
    bl = baselines_table()
    if figures_dir is None and (Path(results) / "figures").is_dir():
        figures_dir = Path(results) / "figures"
    parts = []
    for name in findings:
        finding = get(name)
        verdicts = finding.verdicts(runs, history, **opts)
        shown = finding.figures(runs, history, Path(results), **opts)
        parts.append(render(finding, verdicts, runs, bl, results=str(results),
                            figures=figure_links(list(shown), figures_dir, out)))
    return "\n\n".join(parts)


def accepted_options(finding: Finding) -> set[str]:
    """The keyword options a finding's verdicts and figures declare."""
    keys = set()
    for method in (finding.verdicts, finding.figures):
        keys |= {p.name for p in inspect.signature(method).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return keys


def _options(pairs: Sequence[str], ap: argparse.ArgumentParser) -> dict[str, Any]:
    import yaml

    if any("=" not in p for p in pairs):
        ap.error("--option takes KEY=VALUE")
    return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--finding", required=True, action="append", choices=[*names(), "all"])
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: stdout)")
    ap.add_argument("--where", nargs="*", default=[], metavar="COL=VALUE",
                    help="keep only runs whose column equals the value (e.g. dataset=mnist1d)")
    ap.add_argument("--sb", type=float, default=None, help="small batch compared (default: smallest B)")
    ap.add_argument("--lb", type=float, default=None, help="large batch compared (default: largest B)")
    ap.add_argument("--k", type=float, default=None, help="seed-noise multiple a difference must exceed (1)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="allowed accuracy drop vs the smallest B (fraction; 0.01 = 1 pp)")
    ap.add_argument("--tol", type=float, default=None,
                    help="perfect-scaling / edge-of-stability relative tolerance (0.2)")
    ap.add_argument("--target-accuracy", type=float, default=None)
    ap.add_argument("--goal-error", type=float, default=None)
    ap.add_argument("--figures", type=Path, default=None, help="figures dir to link (default <results>/figures)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a finding's option (YAML value), e.g. halflife=<preset name>, "
                         "data_sizes=[16384,65536], target_loss=2.5, ramps=[a,b]")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.error(f"{args.results} is not a directory")
    try:
        conditions = dict(w.split("=", 1) for w in args.where)
    except ValueError:
        ap.error("--where takes COL=VALUE")
    findings = names() if "all" in args.finding else tuple(dict.fromkeys(args.finding))
    given = {k: getattr(args, k) for k in ("sb", "lb", "k", "tolerance", "tol", "target_accuracy", "goal_error")
             if getattr(args, k) is not None}
    opts = {**given, **_options(args.option, ap)}
    known = set().union(*(accepted_options(get(f)) for f in findings))
    unknown = sorted(set(opts) - known)
    if unknown:  # an option no selected finding reads would be silently ignored
        ap.error(f"{', '.join(unknown)}: not an option of {', '.join(findings)} (they take {', '.join(sorted(known))})")
    text = build_report(args.results, findings, conditions=conditions, out=args.out,
                        figures_dir=args.figures, **opts)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
