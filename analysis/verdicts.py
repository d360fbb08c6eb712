"""Verdicts and the rules every finding's verdicts share (pure functions).

Every verdict is one of ``VERDICTS`` and states its tolerance and the seeds it used.
Seed statistics are mean and sample std (ddof=1). A difference "exceeds the seed noise"
when it is larger than ``k`` times the larger of the two seed stds (k = 1 by default);
fewer than ``min_seeds`` seeds on either side makes the verdict "inconclusive" (no std).
The claims themselves are judged in their finding's module (``analysis.findings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

VERDICTS = ("reproduced", "not reproduced", "reversed", "inconclusive")


@dataclass(eq=False)
class Verdict:
    finding: str
    claim: str
    verdict: str
    tolerance: str
    seeds: tuple[int, ...]
    numbers: dict[str, Any] = field(default_factory=dict)
    details: str = ""
    table: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} not in {VERDICTS}")


def directional_verdict(diff: float, noise: float, n_a: int, n_b: int, *, k: float = 1.0,
                        min_seeds: int = 2) -> str:
    """``diff`` is oriented so that > 0 is the claimed direction. Reproduced if it exceeds
    ``k * noise``, reversed if it is below ``-k * noise``, else not reproduced; inconclusive
    with fewer than ``min_seeds`` seeds on a side or a NaN."""
    if min(n_a, n_b) < min_seeds or not (math.isfinite(diff) and math.isfinite(noise)):
        return "inconclusive"
    if diff > k * noise:
        return "reproduced"
    if diff < -k * noise:
        return "reversed"
    return "not reproduced"


# A claim that something is *absent* (no degradation) holds when its presence is not shown.
ABSENCE = {"reproduced": "not reproduced", "not reproduced": "reproduced", "reversed": "reproduced",
           "inconclusive": "inconclusive"}


def seeds_of(*frames: pd.DataFrame) -> tuple[int, ...]:
    """The sorted seeds present in the ``seed`` column of the frames."""
    cols = [f["seed"] for f in frames if "seed" in f]
    vals = pd.concat(cols) if cols else pd.Series([], dtype=float)
    return tuple(sorted(int(s) for s in vals.dropna().unique()))


def side(stats: pd.DataFrame, b: float) -> tuple[float, float, int]:
    """(mean, std, n) of ``seed_stats`` at batch size ``b`` (NaN, NaN, 0 when absent)."""
    row = stats[stats["batch_size"] == b]
    if row.empty:
        return math.nan, math.nan, 0
    return float(row["mean"].iloc[0]), float(row["std"].iloc[0]), int(row["n"].iloc[0])


def sb_lb(runs: pd.DataFrame, sb: float | None, lb: float | None) -> tuple[float, float]:
    """The small and large batch sizes compared: as given, else the smallest and largest B."""
    bs = sorted(float(b) for b in runs["batch_size"].dropna().unique())
    return float(bs[0] if sb is None else sb), float(bs[-1] if lb is None else lb)


def noise(*rows: dict[str, Any] | None) -> float:
    """The larger seed std of the rows (NaN if one is missing or has no std)."""
    stds = [float(r["std"]) for r in rows if r is not None]
    return max(stds) if stds and all(math.isfinite(s) for s in stds) else math.nan


def match_tolerance(noise_: float, k: float, min_tol: float) -> float:
    """How close two losses must be to "match": k x the seed noise, at least ``min_tol``."""
    return max(k * noise_, min_tol) if math.isfinite(noise_) else min_tol
