"""Figures from constructed records: files written, axes labelled, log2 batch axis, lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from analysis import figures as F
from analysis.load import load_history, load_profile, load_records
from analysis.plotting import NoData
from analysis.steps_to_result import Goal
from record_factory import make_record, eval_rows, synthetic_sweep, write_records

RULES = ("linear", "none", "sqrt")
BATCHES = (16, 32, 64, 128, 256)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    synthetic_sweep(root, batch_sizes=BATCHES, seeds=(0, 1), rules=RULES, base_lrs=(0.1,), evals=20)
    b = np.array(BATCHES * 2)
    pd.DataFrame({"batch_size": b, "peak_memory_bytes": 5e7 + 2e5 * b, "step_seconds": 0.002 + 1e-5 * b,
                  "examples_per_second": b / (0.002 + 1e-5 * b)}).to_csv(root / "profile.csv", index=False)
    a = np.linspace(-1, 2, 25)
    pd.DataFrame({"alpha": a, "train_loss": 0.05 + a ** 2 * (a - 1) ** 2 + 0.1 * a,
                  "test_loss": 0.3 + a ** 2 * (a - 1) ** 2 + 0.1 * a,
                  "train_accuracy": 1 - 0.1 * a ** 2, "test_accuracy": 0.95 - 0.1 * a ** 2}
                 ).to_csv(root / "interpolation.csv", index=False)
    return root


@pytest.fixture(scope="module")
def tables(results):
    return load_records(results), load_history(results)


def _labelled(fig):
    for ax in fig.axes:
        twin = any(o is not ax and o.get_shared_x_axes().joined(o, ax) for o in fig.axes)
        assert ax.get_xlabel() or (twin and ax.get_xlabel() == "" and fig.axes[0].get_xlabel()), \
            "x axis without label"
        assert ax.get_ylabel(), "y axis without label"


def _log2(ax):
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert sorted(ax.get_xticks()) == [float(b) for b in BATCHES]


def test_cli_writes_png_and_pdf_for_every_figure(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert F.main([str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = ("steps_to_result", "accuracy_gap_vs_batch", "sharpness_vs_batch",
             "keskar_interpolation", "edge_of_stability", "memory_time_vs_batch")
    for name in names:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert name in printed
    assert "skipped" not in printed


def test_accuracy_gap_one_errorbar_line_per_scaling_rule(tables):
    fig = F.accuracy_gap_figure(tables[0])
    _labelled(fig)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        _log2(ax)
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == len(RULES)
        assert sorted(c.get_label().split()[0] for c in bars) == sorted(RULES)
        data_line = bars[0].lines[0]
        assert list(data_line.get_xdata()) == list(BATCHES)
        # two seeds per point: the std bars have length
        segs = bars[0].lines[2][0].get_segments()
        assert any(abs(s[1][1] - s[0][1]) > 0 for s in segs)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(legend) == len(RULES) and all(any(r in t for t in legend) for r in RULES)
    assert "seeds" in fig._suptitle.get_text()


def test_accuracy_values_are_seed_means(tables):
    runs = tables[0]
    fig = F.accuracy_gap_figure(runs)
    bars = {c.get_label().split()[0]: c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)}
    y = bars["linear"].lines[0].get_ydata()
    lin = runs[(runs["scaling"] == "linear")]
    expected = lin.groupby("batch_size")["final_test_accuracy"].mean().to_numpy()
    np.testing.assert_allclose(y, expected)


def test_steps_to_result_figure(tables):
    runs, history = tables
    fig = F.steps_to_result_figure(history, runs, goal=Goal.accuracy(0.9))
    _labelled(fig)
    (ax,) = fig.axes
    _log2(ax)
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "perfect scaling" in labels
    assert any(t.startswith("B_crit measured") for t in labels)
    assert any(t.startswith("B_simple predicted") for t in labels)
    perfect = next(l for l in ax.get_lines() if l.get_label() == "perfect scaling")
    x, y = perfect.get_xdata(), perfect.get_ydata()
    np.testing.assert_allclose(x * y, x[0] * y[0])  # S * B constant


def test_sharpness_figure_panels_per_key(tables):
    fig = F.sharpness_figure(tables[0])
    _labelled(fig)
    recorded = ("hessian_top_eigenvalue", "hessian_trace", "sharpness_full_eps1e-03")  # the others: no panel
    assert [ax.get_ylabel() for ax in fig.axes] == [F.SHARPNESS_KEYS[k] for k in recorded]
    for ax in fig.axes:
        _log2(ax)
        assert ax.get_yscale() == "log"
        assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == len(RULES)


def test_interpolation_figure(results):
    curve = pd.read_csv(results / "interpolation.csv")
    fig = F.interpolation_figure(curve)
    _labelled(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and "α" in ax.get_xlabel()
    xs = np.concatenate([l.get_xdata() for l in ax.get_lines() if len(l.get_xdata()) > 2])
    assert xs.min() == -1 and xs.max() == 2
    with pytest.raises(NoData, match="missing columns"):
        F.interpolation_figure(curve.drop(columns="test_accuracy"))


def test_edge_of_stability_figure(tables):
    history = tables[1]
    fig = F.edge_of_stability_figure(history, max_runs=3)
    _labelled(fig)
    ax = fig.axes[0]
    solid = [l for l in ax.get_lines() if l.get_linestyle() == "-"]
    dashed = [l for l in ax.get_lines() if l.get_linestyle() == "--" and len(l.get_xdata())]
    assert len(solid) == len(dashed) == 3
    for s, d in zip(solid, dashed):
        assert s.get_color() == d.get_color()
        lr = float(s.get_label().split("lr=")[1].split(",")[0])
        np.testing.assert_allclose(d.get_ydata(), 2 / lr, rtol=1e-2)


def _threshold_history(tables, factor=None, adam=False):
    """The fixture's history as if written with the optimizer's threshold stored."""
    h = tables[1].copy()
    lr = pd.to_numeric(h["lr"])
    if adam:
        h["preconditioned_stability_threshold"] = 38 / lr
        h["preconditioned_top_eigenvalue"] = h["hessian_top_eigenvalue"] * 19
    else:
        h["stability_threshold"] = factor / lr
    return h


def test_edge_of_stability_figure_draws_the_optimizers_own_threshold(tables):
    fig = F.edge_of_stability_figure(_threshold_history(tables, factor=3.8), max_runs=2)
    dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "--" and len(l.get_xdata())]
    solid = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "-"]
    for s, d in zip(solid, dashed):  # heavy ball: (2 + 2 beta)/lr, not 2/lr
        np.testing.assert_allclose(d.get_ydata(), 3.8 / float(s.get_label().split("lr=")[1].split(",")[0]), rtol=1e-2)
    fig = F.edge_of_stability_figure(_threshold_history(tables, adam=True), max_runs=2)
    ax = fig.axes[0]
    assert "P⁻¹H" in ax.get_ylabel() and ax.get_yscale() == "log"
    for s, d in zip([l for l in ax.get_lines() if l.get_linestyle() == "-"],
                    [l for l in ax.get_lines() if l.get_linestyle() == "--" and len(l.get_xdata())]):
        np.testing.assert_allclose(d.get_ydata(), 38 / float(s.get_label().split("lr=")[1].split(",")[0]), rtol=1e-2)


def test_edge_of_stability_figure_has_one_column_per_arm(tables):
    h = tables[1].copy()
    h["name"] = np.where(h["seed"] == h["seed"].min(), "arm_a", "arm_b")
    fig = F.edge_of_stability_figure(h, max_runs=2)
    assert len(fig.axes) == 4 and [ax.get_title() for ax in fig.axes[:2]] == ["arm_a", "arm_b"]


def test_profile_figure(results):
    prof = load_profile(results)
    fig = F.profile_figure(prof)
    _labelled(fig)
    mem, step, thr = fig.axes
    for ax in fig.axes:
        _log2(ax)
    assert "MiB" in mem.get_ylabel() and "ms" in step.get_ylabel()
    y = [c for c in mem.containers if isinstance(c, ErrorbarContainer)][0].lines[0].get_ydata()
    np.testing.assert_allclose(y, (5e7 + 2e5 * np.array(BATCHES)) / 2 ** 20)


def test_missing_data_is_skipped_with_a_clear_message(tmp_path, capsys):
    write_records(tmp_path, [make_record(batch_size=32, history=eval_rows(
        [0, 10], batch_size=32, lr=0.1, test_final=0.5, train_final=0.6, tau=5))])
    runs = load_records(tmp_path)
    with pytest.raises(NoData, match="hessian_top_eigenvalue"):
        F.sharpness_figure(runs)
    with pytest.raises(NoData, match="no trial reached the goal"):
        F.steps_to_result_figure(load_history(tmp_path), runs, goal=Goal.accuracy(0.99))
    done = F.make_figures(tmp_path, tmp_path / "out")
    assert isinstance(done["accuracy_gap_vs_batch"], list)  # the one figure with data
    for name in ("steps_to_result", "sharpness_vs_batch", "keskar_interpolation",
                 "edge_of_stability", "memory_time_vs_batch"):
        assert done[name].startswith("skipped: "), name
    (tmp_path / "empty").mkdir()
    assert F.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(": skipped: " in line for line in lines)
