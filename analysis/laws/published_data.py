"""Published data as baselines: Zhang et al. 2024's steps to target per batch size and Porian et
al. 2024's compute-optimal points, read from the CSVs the one-time converters wrote
(``scripts/convert_zhang.py``, ``scripts/convert_porian.py``) under ``shared/published_data/``.
Every CSV is checked against the SHA-256 in the committed ``analysis/data/<name>/SOURCE.yaml``
before use, so a figure never shows data other than what the provenance names. Nothing is
unpickled here.

Figures: ``steps_overlay_figure`` (steps to target normalized by the steps at the smallest B,
against B: perfect linear scaling is a line of slope -1) and ``b_opt_overlay_figure`` (our B_opt
against D beside each published B law with its constant refitted to our cells).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from analysis.laws.audit import law_constant, law_shape
from analysis.plotting import new_figure, no_data

ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = ROOT / "shared" / "published_data"
SOURCE_ROOT = ROOT / "analysis" / "data"
CONVERTERS = {"zhang2024": "scripts/convert_zhang.py <clone of github.com/hlzhang109/critical-batch-size>",
              "porian2024": "scripts/convert_porian.py <clone of github.com/formll/resolving-scaling-law-discrepancies>"}


class PublishedDataError(LookupError):
    """A converted CSV is missing or does not match its committed SHA-256."""


def provenance(name: str, source_root: Path | None = None) -> dict:
    return yaml.safe_load(((source_root or SOURCE_ROOT) / name / "SOURCE.yaml").read_text())


def load_csv(name: str, file: str, *, data_root: Path | None = None, source_root: Path | None = None) -> pd.DataFrame:
    """A converted CSV, after checking its SHA-256 against the committed provenance."""
    path = (data_root or DATA_ROOT) / name / file
    if not path.is_file():
        raise PublishedDataError(f"{path} is missing: run python {CONVERTERS.get(name, 'the converter')}")
    expected = provenance(name, source_root)["files"][file]["sha256"]
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != expected:
        raise PublishedDataError(f"{path} has SHA-256 {got}, the provenance says {expected}: reconvert it")
    return pd.read_csv(path)


def normalized_steps(table: pd.DataFrame, group: str = "model") -> pd.DataFrame:
    """``batch_size, steps_to_target`` per ``group`` -> adds ``relative_steps`` = steps / steps at
    the group's smallest B and ``perfect`` = B0 / B (ideal linear scaling from that B)."""
    out = []
    for _, g in table.sort_values("batch_size").groupby(group, sort=False):
        b0, s0 = float(g["batch_size"].iloc[0]), float(g["steps_to_target"].iloc[0])
        out.append(g.assign(relative_steps=g["steps_to_target"] / s0, perfect=b0 / g["batch_size"]))
    return pd.concat(out, ignore_index=True) if out else table.assign(relative_steps=[], perfect=[])


def steps_overlay_figure(ours: pd.DataFrame, theirs: pd.DataFrame) -> Figure:
    """Relative steps to target against B relative to the smallest B, ours (one line per
    ``model`` label) beside Zhang et al.'s (one per model size), and perfect linear scaling."""
    if ours.empty and theirs.empty:
        no_data("neither our steps to target nor Zhang et al.'s")
    fig, (ax,) = new_figure(width=5.4, height=4.0)
    for label, table, style in (("ours", ours, "-o"), ("Zhang et al. 2024", theirs, ":s")):
        if table.empty:
            continue
        for i, (m, g) in enumerate(normalized_steps(table).groupby("model", sort=False)):
            b0 = float(g["batch_size"].min())
            ax.plot(g["batch_size"] / b0, g["relative_steps"], style, ms=3, label=f"{label}: {m}",
                    color=f"C{i}" if label == "ours" else f"{0.2 + 0.12 * i:.2f}")
    k = np.geomspace(1, 256, 20)
    ax.plot(k, 1 / k, "k--", lw=0.8, label="perfect linear scaling")
    ax.plot(k, 1.2 / k, "k:", lw=0.8, label="+20% (Zhang et al.'s CBS threshold)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("B / smallest B")
    ax.set_ylabel("steps to target / steps at the smallest B")
    ax.legend(fontsize=5)
    ax.set_title("Steps to target vs B (relative), ours beside Zhang et al.", fontsize=8)
    return fig


def b_opt_overlay_figure(cells: pd.DataFrame, laws: Iterable[Mapping]) -> Figure:
    """Our B_opt (with intervals) against D beside each published B_opt law, constants refitted."""
    c = cells[np.isfinite(cells["b_opt"])].sort_values("tokens")
    if c.empty:
        no_data("no cell optimum to compare with the published laws")
    fig, (ax,) = new_figure(width=5.4, height=4.0)
    ax.errorbar(c["tokens"], c["b_opt"], yerr=np.clip([c["b_opt"] - c["b_lo"], c["b_hi"] - c["b_opt"]], 0, None), fmt="o",
                color="C0", capsize=2, label="ours (per N, D cell)")
    mean_n = float(np.exp(np.log(c["num_params"]).mean()))
    grid = pd.DataFrame({"tokens": np.geomspace(c["tokens"].min(), c["tokens"].max(), 40)}).assign(num_params=mean_n)
    for i, law in enumerate(x for x in laws if x["target"] == "b_opt"):
        exps = ", ".join(f"{v}^{e:g}" for v, e in law["exponents"].items())
        ax.plot(grid["tokens"], law_constant(c, law) * law_shape(grid, law), "--", color=f"C{i + 1}",
                label=f"{law['source']} ({exps}; constant refitted; {law['confidence']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (tokens)")
    ax.set_ylabel("B_opt")
    ax.legend(fontsize=5)
    ax.set_title(f"B_opt vs D: ours beside the published laws (N at its geometric mean {mean_n:.3g} for C laws)",
                 fontsize=7)
    return fig
