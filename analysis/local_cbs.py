"""The local critical batch size of Merrill et al. 2025 (arXiv 2505.23971, Section 3.1), as pure
functions of branch losses.

From a checkpoint trained at batch size B, branches at k x B (LR f(k) x eta) train for Delta
tokens each and end at loss L_k. k* is the largest k such that for every k' < k*,
L_{k*} <= L_{k'} + eps; B* = k* B. The losses are smoothed first by an exponential moving
average with alpha = 0.5 (published.yaml ``merrill2025/recipe/branching``).

k* = 1 always qualifies (nothing is below it), so B* >= B: the reference batch size is the
smallest CBS the grid can show (a lower bound, not a measurement of "near zero"); a k* at the
grid's largest k is a lower bound too (``censored``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def ema(values: Sequence[float], alpha: float = 0.5) -> float:
    """The last value of s_t = alpha x_t + (1 - alpha) s_{t-1}, s_0 = x_0 (NaN if empty)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1]")
    s = math.nan
    for x in values:
        s = float(x) if math.isnan(s) else alpha * float(x) + (1 - alpha) * s
    return s


def local_k_star(losses: Mapping[float, float], eps: float = 0.01) -> float:
    """The largest k whose loss is within ``eps`` of (or below) every smaller k's loss.

    ``losses``: {k: smoothed loss at the end of branch k}; non-finite losses (a diverged branch)
    never qualify and do not constrain larger k (a diverged small branch is no competitor).
    NaN when no k has a finite loss."""
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0")
    ks = sorted(k for k, v in losses.items() if math.isfinite(v))
    best = math.nan
    for i, k in enumerate(ks):
        if all(losses[k] <= losses[j] + eps for j in ks[:i]):
            best = float(k)
    return best


def local_cbs(losses: Mapping[float, float], base_batch: float, eps: float = 0.01) -> dict[str, float | bool]:
    """{"k_star", "cbs" (= k* x base_batch), "censored" (k* is the grid's largest k)}."""
    k = local_k_star(losses, eps)
    finite = [kk for kk, v in losses.items() if math.isfinite(v)]
    return {"k_star": k, "cbs": k * base_batch,
            "censored": bool(finite) and math.isfinite(k) and k == max(finite)}


def rise_and_plateau(tokens: Sequence[float], cbs_per_seed: Sequence[Sequence[float]], *,
                     rise: float = 1.0, plateau: float = 1.0) -> dict[str, float | bool | str]:
    """The claim's shape on a CBS trajectory: rises from the first checkpoint, then plateaus.

    ``cbs_per_seed[i][s]``: seed s's local CBS at checkpoint ``tokens[i]``. On the seed-median
    log2 CBS m_i (checkpoints sorted by tokens, the middle one i = n // 2):

    * rises: m_mid - m_first >= ``rise`` doublings, and every seed's CBS at the middle
      checkpoint is at least every seed's at the first (the seed ranges are ordered);
    * plateaus: m_last - m_mid <= ``plateau`` doublings and below the early rise (the growth
      slows). One doubling is one step of the B0 x 2^k grid: a smaller tolerance would read a
      single grid step of noise as growth.
    """
    order = np.argsort(np.asarray(tokens, float))
    logs = [np.log2(np.asarray(cbs_per_seed[i], float)) for i in order]
    if len(logs) < 3 or any(len(x) == 0 or not np.isfinite(x).all() for x in logs):
        return {"rises": False, "plateaus": False, "reason": "needs >= 3 checkpoints with a finite CBS per seed"}
    med = [float(np.median(x)) for x in logs]
    mid = len(med) // 2
    early, late = med[mid] - med[0], med[-1] - med[mid]
    ordered = bool(logs[mid].min() >= logs[0].max())
    return {"rise_early_doublings": early, "rise_late_doublings": late, "seed_ranges_ordered": ordered,
            "rises": bool(early >= rise and ordered), "plateaus": bool(late <= plateau and late < early),
            "reason": ""}
