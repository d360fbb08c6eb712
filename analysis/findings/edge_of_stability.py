"""Cohen et al. 2021: sharpness rises to 2/lr and hovers there (edge of stability), here with
ReLU and cross-entropy (the harness's MLP on MNIST-1D).

Verdict (``analysis.stability.eos_verdict``): among the runs (full-batch ones if any) whose
sharpness reaches (1 - tol) x its optimizer's stability threshold, at least half then hover
within 1 +- tol of it until the train loss has fallen by 10x; one verdict per arm when the
records hold several (a finding's presets).
"""

from __future__ import annotations

from analysis.figures import edge_of_stability_figure
from analysis.findings.base import Arm, Comparison, Finding, FigureBuilders
from analysis.report_format import fmt
from analysis.stability import eos_verdict


class EdgeOfStability(Finding):
    name = "edge_of_stability"
    title = "Cohen et al. 2021: sharpness hovers at 2/lr (edge of stability)"
    sources = ("cohen2021",)
    offline = (Arm("eos_offline"),)
    paper = (Arm("cohen_eos"),)
    defaults = {"tol": 0.2}
    # the published side of the comparison: (what hovers, where the paper says it hovers, entries)
    published_claim = ("median sharpness / threshold", "≈ 1: rises to about 2/η, then hovers",
                       "cohen2021 (claim)", ("cohen2021/claim/edge_of_stability",))

    def verdicts(self, runs, history, *, tol=0.2, **_):
        label = EdgeOfStability.name  # the variants' verdicts carry the rule's name
        names = sorted(history["name"].dropna().unique()) if "name" in history else []
        if len(names) < 2:
            return [eos_verdict(history, finding=label, tol=tol)]
        return [eos_verdict(history, finding=label, tol=tol, arm=name) for name in names]

    def figures(self, runs, history, out, **_) -> FigureBuilders:
        return {"edge_of_stability": lambda: edge_of_stability_figure(history)}

    def comparison(self, verdicts, bl):
        quantity, published, source, entries = self.published_claim
        rows = []
        for v in verdicts:
            n = v.numbers
            if not n:
                continue
            arm = v.claim.rsplit(" (", 1)[1].rstrip(")") if v.claim.endswith(")") else ""
            rows.append(Comparison(
                quantity + " after reaching" + (f" ({arm})" if arm else ""),
                f"{fmt(n['median_ratio_after_reach'], 3)} ({n['runs_reaching']} of {n['runs']} runs reach it; "
                f"{n['fraction_hovering']:.0%} of those hover)", published, source, entries))
        return rows


FINDING = EdgeOfStability()
