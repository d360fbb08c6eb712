"""Power laws of the cell optima: y = k * prod_i x_i^e_i, fitted in log space.

``fit_power_law`` is least squares of ln y on ln x_i (``scipy.linalg.lstsq``). ``power_law``
adds percentile intervals from a bootstrap: replicate r refits the law on the r-th bootstrap draw
of every cell's optimum (``landscape.CellOptimum.draws``: seeds and grid points resampled inside
each cell), so the interval states the sampling error of the optima it is fitted to; for a
quantity without per-cell draws (the critical batch size) the cells themselves are resampled.
What a law averages over: the cells (N, D) given, each weighted equally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.linalg import lstsq

DRAW_COLUMN = {"b_opt": 0, "lr_opt": 1}


@dataclass
class PowerLaw:
    """A fitted law: ``coefficient`` k and ``exponents`` {variable: e} with [lo, hi] intervals."""

    target: str
    variables: tuple[str, ...]
    coefficient: float
    exponents: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_cells: int
    r2: float
    level: float = 0.95
    boot_exponents: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    reason: str = ""

    def predict(self, **x: float | np.ndarray) -> np.ndarray:
        out = np.full(np.shape(np.asarray(x[self.variables[0]], float)), self.coefficient, float)
        for v in self.variables:
            out = out * np.asarray(x[v], float) ** self.exponents[v]
        return out

    def formula(self) -> str:
        terms = " ".join(f"{v}^{self.exponents[v]:+.3f}" for v in self.variables)
        return f"{self.target} = {self.coefficient:.3g} {terms}"


def fit_power_law(y: np.ndarray, xs: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float], float]:
    """(k, {variable: exponent}, R^2 in log space) of ln y = ln k + sum_i e_i ln x_i."""
    ly = np.log(np.asarray(y, float))
    names = list(xs)
    a = np.column_stack([np.ones_like(ly)] + [np.log(np.asarray(xs[v], float)) for v in names])
    if np.linalg.matrix_rank(a) < a.shape[1]:
        raise ValueError(f"the cells do not vary enough to fit exponents for {names}")
    sol, *_ = lstsq(a, ly)
    resid = ly - a @ sol
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1 - float((resid ** 2).sum()) / ss if ss > 0 else math.nan
    return float(math.exp(sol[0])), {v: float(e) for v, e in zip(names, sol[1:])}, r2


def _usable(cells: pd.DataFrame, target: str, variables: Sequence[str]) -> pd.DataFrame:
    ok = cells[list(variables) + [target]].apply(lambda c: np.isfinite(c.to_numpy(float)) & (c.to_numpy(float) > 0))
    return cells[ok.all(axis=1)]


def power_law(cells: pd.DataFrame, target: str, variables: Sequence[str], *,
              draws: Mapping[tuple[float, float], np.ndarray] | None = None, n_boot: int = 200,
              level: float = 0.95, seed: int = 0) -> PowerLaw:
    """Fit ``target`` (a column of ``cells``: ``b_opt``, ``lr_opt``, ``cbs``) as a power law in
    ``variables`` (columns, e.g. ``("tokens",)`` or ``("num_params", "tokens")``), with bootstrap
    intervals (per-cell ``draws`` keyed by (num_params, tokens) when given, else cells resampled)."""
    variables = tuple(variables)
    nan_int = {v: (math.nan, math.nan) for v in variables}
    c = _usable(cells, target, variables)
    if len(c) < 2:
        return PowerLaw(target, variables, math.nan, {v: math.nan for v in variables}, nan_int, len(c), math.nan,
                        level, reason=f"fewer than 2 cells with a finite positive {target}")
    try:
        k, exps, r2 = fit_power_law(c[target], {v: c[v] for v in variables})
    except ValueError as exc:
        return PowerLaw(target, variables, math.nan, {v: math.nan for v in variables}, nan_int, len(c), math.nan,
                        level, reason=str(exc))
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, len(variables)), np.nan)
    col = DRAW_COLUMN.get(target)
    for r in range(n_boot):
        if draws is not None and col is not None:
            y = np.array([math.exp(draws[(float(n), float(d))][r % len(draws[(float(n), float(d))]), col])
                          if len(draws[(float(n), float(d))]) else math.nan
                          for n, d in zip(c["num_params"], c["tokens"])])
            sample = c.assign(**{target: y})
        else:
            sample = c.iloc[rng.integers(0, len(c), size=len(c))]
        sample = _usable(sample, target, variables)
        try:
            _, e, _ = fit_power_law(sample[target], {v: sample[v] for v in variables})
        except (ValueError, OverflowError):  # a degenerate draw (e.g. all cells at one N) is skipped
            continue
        boot[r] = [e[v] for v in variables]
    ok = np.isfinite(boot).all(axis=1)
    tail = 100 * (1 - level) / 2
    intervals = ({v: tuple(float(q) for q in np.percentile(boot[ok, i], [tail, 100 - tail]))
                  for i, v in enumerate(variables)} if ok.sum() >= 10 else nan_int)
    return PowerLaw(target, variables, k, exps, intervals, len(c), r2, level, boot[ok],
                    "" if ok.sum() >= 10 else "too few usable bootstrap draws for an interval")


def fit_laws(cells: pd.DataFrame, draws: Mapping[tuple[float, float], np.ndarray] | None = None, *,
             n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict[str, PowerLaw]:
    """The laws the issue asks for: B_opt(D), B_opt(N, D) (is the N exponent near 0?),
    LR_opt(N, D), and B_crit(D) when ``cells`` has a ``cbs`` column."""
    specs = {"b_opt(D)": ("b_opt", ("tokens",)), "b_opt(N,D)": ("b_opt", ("num_params", "tokens")),
             "lr_opt(N,D)": ("lr_opt", ("num_params", "tokens"))}
    if "cbs" in cells:
        specs["b_crit(D)"] = ("cbs", ("tokens",))
    return {name: power_law(cells, t, v, draws=draws, n_boot=n_boot, level=level, seed=seed)
            for name, (t, v) in specs.items()}
