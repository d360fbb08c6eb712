"""Figures of the laws: fitted landscapes, the optima against D with the fitted laws, and the
overlays on published data (``published_data``). Built with ``matplotlib.figure.Figure``."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.laws.landscape import CellOptimum, predict
from analysis.laws.power import PowerLaw
from analysis.plotting import new_figure, no_data


def landscape_figure(table: pd.DataFrame, fits: Mapping[tuple[float, float], CellOptimum],
                     max_cells: int = 4) -> Figure:
    """Fitted loss contours in (log2 B, log2 LR) for up to ``max_cells`` cells (the extremes of N
    and D first), the runs' seed-mean losses as points, the optimum with its intervals."""
    keys = sorted(k for k, o in fits.items() if o.ok)
    if not keys:
        no_data("no cell has a convex fitted landscape")
    ns, ds = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
    corners = [(n, d) for n in (ns[0], ns[-1]) for d in (ds[0], ds[-1])]
    pick = list(dict.fromkeys(k for k in corners if k in fits and fits[k].ok))[:max_cells] or keys[:max_cells]
    fig, axes = new_figure(ncols=len(pick), width=4.0, height=3.6)
    for ax, (n, d) in zip(axes, pick):
        o = fits[(n, d)]
        cell = table[(table["num_params"] == n) & (table["tokens"] == d)]
        mean = cell.groupby(["batch_size", "lr"])["loss"].mean().reset_index()
        bx = np.linspace(np.log2(mean["batch_size"].min()) - 0.5, np.log2(mean["batch_size"].max()) + 0.5, 60)
        ly = np.linspace(np.log2(mean["lr"].min()) - 0.5, np.log2(mean["lr"].max()) + 0.5, 60)
        gx, gy = np.meshgrid(bx, ly)
        z = predict(o.coef, 2.0 ** gx.ravel(), 2.0 ** gy.ravel()).reshape(gx.shape)
        cs = ax.contour(gx, gy, z - o.loss_opt, levels=np.quantile(z - o.loss_opt, [0.05, 0.15, 0.3, 0.5, 0.75]),
                        colors="0.5", linewidths=0.7)
        ax.clabel(cs, fmt="%.3f", fontsize=6)
        sc = ax.scatter(np.log2(mean["batch_size"]), np.log2(mean["lr"]), c=mean["loss"], s=18, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="seed-mean loss")
        xb, yl = math.log2(o.b_opt), math.log2(o.lr_opt)
        ax.errorbar([xb], [yl], xerr=np.clip([[xb - math.log2(o.b_interval[0])], [math.log2(o.b_interval[1]) - xb]], 0, None),
                    yerr=np.clip([[yl - math.log2(o.lr_interval[0])], [math.log2(o.lr_interval[1]) - yl]], 0, None),
                    fmt="*", color="red", ms=10, capsize=2)
        ax.set_title(f"N={n:.3g}, D={d:.3g}", fontsize=8)
        ax.set_xlabel("log2 B")
        ax.set_ylabel("log2 LR")
    fig.suptitle("Fitted landscapes (contours: loss above the fitted optimum; star: optimum, 95% bootstrap)",
                 fontsize=8)
    return fig


def laws_figure(cells: pd.DataFrame, laws: Mapping[str, PowerLaw]) -> Figure:
    """B_opt and LR_opt against D (one line per N) with bootstrap intervals and the fitted laws."""
    c = cells[np.isfinite(cells["b_opt"])]
    if c.empty:
        no_data("no cell optimum to plot")
    fig, (ax_b, ax_lr) = new_figure(ncols=2)
    d_grid = np.geomspace(c["tokens"].min(), c["tokens"].max(), 50)
    for i, (n, g) in enumerate(c.groupby("num_params")):
        color = f"C{i}"
        for ax, col, lo, hi in ((ax_b, "b_opt", "b_lo", "b_hi"), (ax_lr, "lr_opt", "lr_lo", "lr_hi")):
            ax.errorbar(g["tokens"], g[col], yerr=np.clip([g[col] - g[lo], g[hi] - g[col]], 0, None), fmt="o", color=color,
                        capsize=2, label=f"N={n:.3g}")
        lr_law = laws.get("lr_opt(N,D)")
        if lr_law is not None and math.isfinite(lr_law.coefficient):
            ax_lr.plot(d_grid, lr_law.predict(num_params=np.full_like(d_grid, n), tokens=d_grid), "--", color=color)
    b_law = laws.get("b_opt(D)")
    if b_law is not None and math.isfinite(b_law.coefficient):
        lo, hi = b_law.intervals["tokens"]
        ax_b.plot(d_grid, b_law.predict(tokens=d_grid), "k--",
                  label=f"D^{b_law.exponents['tokens']:.3f} [{lo:.3f}, {hi:.3f}]")
    for ax, name in ((ax_b, "B_opt (per step)"), (ax_lr, "LR_opt")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("D (tokens)")
        ax.set_ylabel(name)
        ax.legend(fontsize=6)
    fig.suptitle("Optima of the fitted landscapes (95% bootstrap over seeds and grid points) and the laws",
                 fontsize=8)
    return fig
