"""Small plotting helpers shared by the figures: log2 batch axes, seed error bars, saving.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI
backend), so they work headless and can be saved with ``Figure.savefig``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

FORMATS = ("png", "pdf")


class NoData(LookupError):
    """The data a figure needs is absent; the message says what is missing."""


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.8,
               height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def _int_label(x: float, _pos: int | None = None) -> str:
    return f"{x:g}" if x < 1e5 else f"2^{np.log2(x):.0f}"


def log2_batch_axis(ax: Axes, batch_sizes: Iterable[float], label: str = "batch size B") -> None:
    """Log base-2 x axis with ticks at the batch sizes used."""
    ax.set_xscale("log", base=2)
    ticks = sorted({float(b) for b in batch_sizes if np.isfinite(b) and b > 0})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(_int_label))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def errorbar_line(ax: Axes, stats: pd.DataFrame, x: str = "batch_size", label: str | None = None,
                  **kw) -> None:
    """Plot ``mean`` with ``std`` error bars (std of NaN, i.e. one seed, draws no bar)."""
    stats = stats.sort_values(x)
    ax.errorbar(stats[x].to_numpy(float), stats["mean"].to_numpy(float),
                yerr=stats["std"].astype(float).fillna(0.0).to_numpy(float), marker="o", ms=4,
                capsize=3, label=label, **kw)


def seeds_note(stats: pd.DataFrame) -> str:
    """'mean +- std over n=3 seeds' (or a range of n)."""
    ns = sorted({int(n) for n in stats["n"]}) if len(stats) else []
    n = "?" if not ns else (str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
    return f"mean ± std over n={n} seeds"


def save_figure(fig: Figure, out_dir: Path | str, name: str,
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``<out_dir>/<name>.<fmt>`` for each format; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def no_data(message: str):
    """Raise NoData where an expression is expected (a builder's missing input)."""
    raise NoData(message)


def save_figures(builders: dict[str, Callable[[], Figure]], out_dir: Path | str,
                 formats: Sequence[str] = FORMATS) -> dict[str, list[Path] | str]:
    """Build and write each figure; {name: paths written | "skipped: <why>"} (a builder that
    raises NoData is skipped, not an error)."""
    done: dict[str, list[Path] | str] = {}
    for name, build in builders.items():
        try:
            done[name] = save_figure(build(), out_dir, name, formats)
        except NoData as exc:
            done[name] = f"skipped: {exc}"
    return done


def arm_label(name: str) -> str:
    """A short legend label for an arm's preset name: 'marek_offline_beta2' -> 'beta2'."""
    return str(name).split("offline_")[-1]
