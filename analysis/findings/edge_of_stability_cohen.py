"""Cohen et al. 2021 in their own setup (fc-tanh, square loss, full-batch GD): the verdict,
figure and comparison of ``edge_of_stability`` on the ``eos_offline_cohen`` preset."""

from __future__ import annotations

from analysis.findings.base import Arm
from analysis.findings.edge_of_stability import EdgeOfStability


class EdgeOfStabilityCohen(EdgeOfStability):
    name = "edge_of_stability_cohen"
    title = "Cohen et al. 2021 in their own setup (fc-tanh, square loss): sharpness hovers at 2/lr"
    offline = (Arm("eos_offline_cohen"),)
    paper = (Arm("cohen_eos"),)


FINDING = EdgeOfStabilityCohen()
