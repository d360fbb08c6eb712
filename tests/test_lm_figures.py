"""Figures of the language-model findings from constructed records (their modules in analysis.findings)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.findings import get
from analysis.findings.batch_warmup import warmup_figure
from analysis.findings.marek import marek_loss_vs_batch_figure
from analysis.findings.zhang_cbs import zhang_figure
from analysis.load import load_tables
from analysis.plotting import NoData, save_figures
from lm_record_factory import lm_record, lm_rows, write_lm


def make_lm_figures(results, out, finding, **options):
    """The finding's figures from the records under ``results``, written to ``out`` as PNG."""
    runs, history = load_tables(results)
    return save_figures(get(finding).figures(runs, history, out, **options), out, ("png",))


def _curve(final: float, scale: float):
    return lambda tokens, step: final + 3.0 * math.exp(-tokens / scale)


@pytest.fixture(scope="module")
def marek_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("marek")
    recs = []
    for name, sizes in (("hl", (1, 4, 16)), ("fx", (1, 4)), ("sg", (1,))):
        for b in sizes:
            for i, lr in enumerate((1e-3, 3e-3)):
                for seed in (0, 1):
                    steps = range(0, 4097 // b, max(256 // b, 1))
                    recs.append(lm_record(name=name, batch_size=b, base_lr=lr, seed=seed, index=2 * i + seed,
                                          rows=lm_rows(steps, batch_size=b, loss=_curve(1.7 + 0.02 * b + 0.1 * i, 800))))
    write_lm(root, recs)
    return root


def test_marek_figures_are_written(marek_dir, tmp_path):
    done = make_lm_figures(marek_dir, tmp_path, "marek", halflife="hl", beta2="fx", sgd="sg")
    assert sorted(done) == ["marek_loss_vs_batch", "marek_loss_vs_tokens"]
    for paths in done.values():
        assert [p.name for p in paths] == [f"{p.stem}.png" for p in paths] and all(p.stat().st_size > 1000 for p in paths)


def test_marek_figure_names_the_missing_arms():
    with pytest.raises(NoData, match="no runs of"):
        marek_loss_vs_batch_figure(pd.DataFrame(columns=["name", "status"]), ["hl"])


@pytest.fixture(scope="module")
def zhang_dir(tmp_path_factory):
    """Two models, B = 1 .. 8; the loss is a function of tokens / (1 + B / 16)."""
    root = tmp_path_factory.mktemp("zhang")
    recs = []
    for name, params in (("n1", 3e4), ("n2", 1e5)):
        for b in (1, 2, 4, 8):
            for seed in (0, 1):
                rows = lm_rows(range(0, 8193 // b + 1, max(16 // b, 1)), batch_size=b,
                               loss=lambda t, s, b=b: 1.5 + 3.0 * math.exp(-t / (1 + b / 16) / 2000))
                for r in rows:
                    r["noise_scale_simple_ema"] = 4.0
                recs.append(lm_record(name=name, batch_size=b, base_lr=1e-3, seed=seed, index=seed, rows=rows,
                                      num_params=int(params)))
    write_lm(root, recs)
    return root


def test_zhang_cells_from_records_have_the_constructed_cbs(zhang_dir):
    """Tokens to any loss grow as (1 + B / 16): the excess over linear scaling from B = 1 is
    (1 + B/16) / (1 + 1/16), 1.176 at B = 4 and 1.412 at 8, for every target (no growth with D);
    interpolated in log B the CBS is 4 x 2^((1.2 - 1.176) / (1.412 - 1.176)) = 4.29."""
    from analysis.findings.zhang_cbs import zhang_cells

    runs, hist = load_tables(zhang_dir)
    cells = zhang_cells(runs, hist, data_sizes=[2048, 8192])
    e4, e8 = 1.25 / 1.0625, 1.5 / 1.0625
    expected = 4 * 2 ** ((1.2 - e4) / (e8 - e4))
    assert len(cells) == 4 and cells["cbs"].to_numpy() == pytest.approx([expected] * 4, rel=0.03)
    assert (cells["bracket_low"] == 4).all() and (cells["bracket_high"] == 8).all()
    assert (cells["b_simple"] == 4.0).all() and (cells["reference_batch"] == 1).all()
    data, model = get("zhang_cbs").verdicts(runs, hist, data_sizes=[2048, 8192])
    assert data.verdict == "not reproduced" and model.verdict == "reproduced"   # flat in D and in N


def test_zhang_figure_and_cells(zhang_dir, tmp_path):
    done = make_lm_figures(zhang_dir, tmp_path, "zhang_cbs", data_sizes=[2048, 8192])
    assert [p.name for p in done["zhang_steps_to_target"]] == ["zhang_steps_to_target.png"]
    with pytest.raises(NoData, match="no cells"):
        zhang_figure(pd.DataFrame(), pd.DataFrame(), data_sizes=[2048])


def test_shallue_lm_and_warmup_figures(zhang_dir, tmp_path):
    done = make_lm_figures(zhang_dir, tmp_path, "shallue_lm", target_loss=2.0)
    assert not isinstance(done["steps_to_result"], str) and not isinstance(done["lm_loss_vs_tokens"], str)
    assert make_lm_figures(zhang_dir, tmp_path, "shallue_lm")["steps_to_result"].startswith("skipped")
    recs = []
    for name, b, n in (("small", 4, 512), ("large", 16, 128), ("ramp", lambda s: 4 if s < 128 else 16, 224)):
        for seed in (0, 1):
            recs.append(lm_record(name=name, batch_size=16 if callable(b) else b, base_lr=3e-3, seed=seed,
                                  index=seed, rows=lm_rows(range(0, n + 1, 16), batch_size=b, loss=_curve(1.8, 3000))))
    root = tmp_path / "warm"
    write_lm(root, recs)
    done = make_lm_figures(root, tmp_path / "f", "batch_warmup", small="small", large="large", ramps=["ramp"])
    assert [p.name for p in done["warmup_loss_vs_steps"]] == ["warmup_loss_vs_steps.png"]
    with pytest.raises(NoData):
        warmup_figure(pd.DataFrame(columns=["name", "status", "base_lr", "batch_size"]), pd.DataFrame(), ["x"])
