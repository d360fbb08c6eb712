"""The loss landscape of one (N, D) cell: a quadratic in (log B, log LR) and its optimum.

A cell is every run at one model size N and data size D: rows ``batch_size, lr, seed, loss``.
The fit is ordinary least squares (``scipy.linalg.lstsq``; the model is linear in its
coefficients, so no iterative optimizer is needed) of

    loss ~ c0 + c1 x + c2 y + c3 x^2 + c4 x y + c5 y^2,   x = ln B, y = ln LR,

over every run (each seed a separate observation). The optimum is the stationary point when the
quadratic is convex (its Hessian positive definite), else none. Intervals come from a two-level
bootstrap: draw the seeds with replacement, then the grid points (B, LR) with replacement, refit,
take the optimum; percentiles of the draws (draws whose fit is not convex are counted, not used).
The optimum of the smooth fit, not the grid's best point: a grid of factors of 2 cannot place an
optimum between its points, the fit can (and says when the optimum lies outside the grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.linalg import lstsq

CELL_COLUMNS = ("batch_size", "lr", "seed", "loss")
N_COEF = 6


def design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The quadratic's design matrix in (x, y) = (ln B, ln LR)."""
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


def fit_quadratic(x: np.ndarray, y: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Least-squares coefficients (c0..c5) of the quadratic; needs >= 6 distinct points."""
    a = design(np.asarray(x, float), np.asarray(y, float))
    loss = np.asarray(loss, float)
    if np.linalg.matrix_rank(a) < N_COEF:
        raise ValueError("the grid points do not determine a quadratic (need 3+ values of B and of LR)")
    return lstsq(a, loss)[0]


def stationary_point(coef: np.ndarray) -> tuple[float, float, float] | None:
    """(x*, y*, loss*) of a convex quadratic, None when the Hessian is not positive definite."""
    c0, c1, c2, c3, c4, c5 = coef
    hess = np.array([[2 * c3, c4], [c4, 2 * c5]])
    if np.linalg.eigvalsh(hess).min() <= 0:
        return None
    x, y = np.linalg.solve(hess, -np.array([c1, c2]))
    return float(x), float(y), float((design(np.array([x]), np.array([y])) @ coef)[0])


def predict(coef: np.ndarray, batch_size: np.ndarray | float, lr: np.ndarray | float) -> np.ndarray:
    """The fitted loss at (B, LR)."""
    x, y = np.log(np.atleast_1d(np.asarray(batch_size, float))), np.log(np.atleast_1d(np.asarray(lr, float)))
    return design(x, y) @ coef


@dataclass
class CellOptimum:
    """The optimum of one cell: point estimates with [lo, hi] percentile intervals (``level``)."""

    b_opt: float
    lr_opt: float
    loss_opt: float
    b_interval: tuple[float, float]
    lr_interval: tuple[float, float]
    coef: np.ndarray
    inside_grid: bool
    draws: np.ndarray = field(repr=False)  # (n_draws, 2): ln B*, ln LR* per draw (NaN: not convex)
    failed_draws: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.b_opt)


class _Cell:
    """A cell as arrays: one observation per (seed, grid point); repeated runs of one
    (seed, B, LR) are averaged first, so a bootstrap draw picks whole seeds and whole points."""

    def __init__(self, cell: pd.DataFrame):
        g = cell.groupby(["seed", "batch_size", "lr"], sort=True)["loss"].mean().reset_index()
        self.seeds = np.sort(g["seed"].unique())
        pts = g[["batch_size", "lr"]].drop_duplicates().sort_values(["batch_size", "lr"]).to_numpy(float)
        self.points = pts
        s_idx = np.searchsorted(self.seeds, g["seed"].to_numpy())
        p_key = {(b, lr): i for i, (b, lr) in enumerate(map(tuple, pts))}
        p_idx = np.array([p_key[(b, lr)] for b, lr in g[["batch_size", "lr"]].to_numpy(float)])
        self.loss = np.full((len(self.seeds), len(pts)), np.nan)
        self.loss[s_idx, p_idx] = g["loss"].to_numpy(float)

    def fit(self, seeds: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float] | None]:
        loss = self.loss[np.ix_(seeds, points)]
        xy = np.log(self.points[points])
        x, y = np.tile(xy[:, 0], len(seeds)), np.tile(xy[:, 1], len(seeds))
        keep = np.isfinite(loss.ravel())
        coef = fit_quadratic(x[keep], y[keep], loss.ravel()[keep])
        return coef, stationary_point(coef)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float] | None]:
        """One two-level bootstrap resample: seeds with replacement, then grid points."""
        seeds = rng.integers(0, len(self.seeds), size=len(self.seeds))
        points = rng.integers(0, len(self.points), size=len(self.points))
        return self.fit(seeds, points)


def cell_optimum(cell: pd.DataFrame, *, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0) -> CellOptimum:
    """The optimum (B*, LR*) of one cell's fitted landscape with bootstrap intervals."""
    cell = cell.dropna(subset=list(CELL_COLUMNS))
    cell = cell[np.isfinite(cell["loss"].to_numpy(float))]
    nan2 = (math.nan, math.nan)
    data = _Cell(cell) if len(cell) else None
    try:
        if data is None:
            raise ValueError("no finite losses in the cell")
        coef, opt = data.fit(np.arange(len(data.seeds)), np.arange(len(data.points)))
    except ValueError as exc:
        return CellOptimum(math.nan, math.nan, math.nan, nan2, nan2, np.full(N_COEF, np.nan), False,
                           np.empty((0, 2)), 0, str(exc))
    if opt is None:
        return CellOptimum(math.nan, math.nan, math.nan, nan2, nan2, coef, False, np.empty((0, 2)), 0,
                           "the fitted landscape is not convex (no interior optimum)")
    rng = np.random.default_rng(seed)
    draws = np.full((n_boot, 2), np.nan)
    for i in range(n_boot):
        try:
            _, o = data.draw(rng)
        except ValueError:
            o = None
        if o is not None:
            draws[i] = o[:2]
    ok = np.isfinite(draws[:, 0])
    tail = 100 * (1 - level) / 2
    lo, hi = (np.percentile(draws[ok], [tail, 100 - tail], axis=0) if ok.any()
              else np.full((2, 2), np.nan))
    x, y, loss = opt
    b, lr = cell["batch_size"].to_numpy(float), cell["lr"].to_numpy(float)
    inside = bool(b.min() <= math.exp(x) <= b.max() and lr.min() <= math.exp(y) <= lr.max())
    return CellOptimum(math.exp(x), math.exp(y), loss, (math.exp(lo[0]), math.exp(hi[0])),
                       (math.exp(lo[1]), math.exp(hi[1])), coef, inside, draws, int((~ok).sum()),
                       "" if inside else "optimum outside the grid (extrapolated)")


def cell_optima(table: pd.DataFrame, *, n_boot: int = 200, level: float = 0.95,
                seed: int = 0) -> tuple[pd.DataFrame, dict[tuple[float, float], CellOptimum]]:
    """Per (num_params, tokens) cell of ``table`` (columns ``num_params, tokens`` + CELL_COLUMNS):
    one row with the optimum and its intervals, and the full results keyed by (N, D)."""
    rows, full = [], {}
    for i, ((n, d), cell) in enumerate(table.groupby(["num_params", "tokens"], sort=True)):
        o = cell_optimum(cell, n_boot=n_boot, level=level, seed=seed + i)
        full[(float(n), float(d))] = o
        rows.append({"num_params": float(n), "tokens": float(d), "b_opt": o.b_opt, "b_lo": o.b_interval[0],
                     "b_hi": o.b_interval[1], "lr_opt": o.lr_opt, "lr_lo": o.lr_interval[0],
                     "lr_hi": o.lr_interval[1], "loss_opt": o.loss_opt, "inside_grid": o.inside_grid,
                     "failed_draws": o.failed_draws, "runs": len(cell), "seeds": cell["seed"].nunique(),
                     "reason": o.reason})
    return pd.DataFrame(rows), full
