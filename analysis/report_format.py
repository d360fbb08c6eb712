"""Formatting for the markdown reports: numbers, percentages, tables, published results.

Shared by the report renderer (``analysis.report``) and the findings' comparison rows.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def fmt(x: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant digits; ``—`` for none / NaN, ``∞`` for infinities."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, (bool, str)):
        return str(x)
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    if isinstance(x, tuple):
        return ", ".join(map(str, x))
    return str(x)


def pct(x: float, digits: int = 2) -> str:
    """A fraction in percent (points): 0.0123 -> '1.23'."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def md_table(df: pd.DataFrame, digits: int = 4, max_rows: int = 200) -> str:
    """A GitHub-markdown table of ``df`` (no index; at most ``max_rows`` rows, the rest counted)."""
    if df is None or df.empty:
        return "_(no rows)_\n"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v, digits).replace("|", "\\|") for v in row) + " |"
            for row in df.head(max_rows).itertuples(index=False)]
    more = [f"\n_({len(df) - max_rows} more rows not shown)_"] if len(df) > max_rows else []
    return "\n".join([head, sep, *body, *more]) + "\n"


def results_of(bl: pd.DataFrame, source: str, where_prefix: str = "") -> pd.DataFrame:
    """The ``result`` entries of ``source`` in the baselines table (those whose ``where``
    starts with ``where_prefix``)."""
    r = bl[(bl["source"] == source) & (bl["kind"] == "result")]
    return r[r["where"].str.startswith(where_prefix)] if where_prefix else r


def plus_minus(v: float, s: float | None) -> str:
    """'v ± s' (just 'v' without a std)."""
    return f"{v:g} ± {s:g}" if s is not None and not pd.isna(s) else f"{v:g}"
