"""Scaling laws of the hyperparameters: B_opt grows with data size D, hardly with model size N."""

from __future__ import annotations

from analysis.findings.base import Arm, Finding
from analysis.verdicts import Verdict


class ScalingLaws(Finding):
    name = "scaling_laws"
    title = "Zhang 2024, Bergsma 2025, StepFun 2025: B_opt grows with data size, hardly with model size"
    sources = ("zhang2024",)
    offline = (Arm("scaling_laws_n1"), Arm("scaling_laws_n2"), Arm("scaling_laws_n3"))
    paper = offline
    one_paper_report = True

    def verdicts(self, runs, history, **_):
        return [Verdict("scaling_laws", "B_opt grows with D", "inconclusive", "", (), details="stub")]

    def figures(self, runs, history, out, **_):
        return {}


FINDING = ScalingLaws()
