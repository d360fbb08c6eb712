"""Cohen et al. 2022: with Adam, the preconditioned sharpness lambda_max(P^-1 H) rises to
(2 + 2 b1)/((1 - b1) lr) = 38/lr (b1 = 0.9) and hovers there (adaptive edge of stability);
the verdict rule is ``edge_of_stability``'s, on the preconditioned pair the records carry."""

from __future__ import annotations

from analysis.findings.base import Arm
from analysis.findings.edge_of_stability import EdgeOfStability


class AdaptiveEdgeOfStability(EdgeOfStability):
    name = "adaptive_edge_of_stability"
    title = ("Cohen et al. 2022: Adam's preconditioned sharpness hovers at "
             "(2 + 2β1)/((1 − β1) lr) = 38/lr")
    sources = ("cohen2022",)
    offline = (Arm("aeos_offline"),)
    paper = (Arm("cohen_aeos"),)
    published_claim = ("median preconditioned sharpness / (38/lr)",
                       "≈ 1: λ_max(P⁻¹H) equilibrates at 38/η (β1 = 0.9)", "cohen2022 (claim)",
                       ("cohen2022/claim/adaptive_edge_of_stability",))


FINDING = AdaptiveEdgeOfStability()
