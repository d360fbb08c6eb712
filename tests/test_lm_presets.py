"""The language-model finding presets (conf/experiment/): headers state source, launch, data,
runtime and expected result; the paper presets encode the published settings."""

from __future__ import annotations

import math

import pytest

from bench.job_plan import job_plan
from analysis.findings import get
from analysis.reproduce.plan import preset_meta, read_preset
from conftest import REPO

EXPERIMENTS = REPO / "conf" / "experiment"
LM_FINDINGS = ("marek", "zhang_cbs", "shallue_lm", "batch_warmup")
LM_PRESETS = sorted({p for f in LM_FINDINGS for p in (*get(f).offline_presets, *get(f).paper_presets)})
PAPER = sorted({p for f in LM_FINDINGS for p in get(f).paper_presets})


def header(name: str) -> str:
    return "\n".join(line for line in (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()
                     if line.startswith("#"))


@pytest.mark.parametrize("name", LM_PRESETS)
def test_header_states_source_launch_data_runtime_expected(name):
    text = header(name)
    for field in ("Source:", "Launch:", "Data:", "Runtime:", "Expected:"):
        assert f"# {field}" in text, f"{name}: no {field}"
    assert "arXiv:" in text or "JMLR" in text
    assert "python -m analysis.reproduce" in text
    cfg, _ = read_preset(name)
    assert cfg.name == name and cfg.model.name == "transformer" and cfg.target.test_accuracy is None


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_read_real_data_and_say_runtime_is_not_measured(name):
    cfg, params = read_preset(name)
    assert cfg.dataset.name in ("tokens", "arrayrecord")
    assert "not measured" in header(name)
    assert "batch_size" in params or "optimizer.lr" in params


def test_marek_gpt2_settings_of_the_authors_scripts():
    hl, params = read_preset("marek_gpt2_halflife")
    assert hl.model.architecture()["d_model"] == 768 and hl.model.architecture()["num_layers"] == 12
    assert hl.dataset.context == 1024
    # beta2 = 0.95 at B = 512 x 1024 tokens and 0.9999 at B = 1 (the authors' two settings)
    assert 0.5 ** (512 * 1024 / hl.optimizer.beta2_half_life) == pytest.approx(0.95, abs=1e-5)
    assert 0.5 ** (1024 / hl.optimizer.beta2_half_life) == pytest.approx(0.9999, abs=1e-5)
    grid = [float(x) for x in params["optimizer.lr"]]
    assert {2.4e-3, 1.5e-4, 4.8e-3} <= set(grid)
    assert [int(b) for b in params["batch_size"]] == [1, 4, 16, 64, 256, 512]
    assert int(hl.budget.removesuffix("tokens")) == pytest.approx(20 * 124e6, rel=0.01)   # 20 per parameter
    fx, _ = read_preset("marek_gpt2_beta2")
    assert fx.optimizer.b2 == 0.95 and fx.optimizer.beta2_half_life is None
    sgd, params = read_preset("marek_gpt2_sgd")
    assert sgd.optimizer.name == "sgd" and 0.2 in [float(x) for x in params["optimizer.lr"]]


def test_zhang_paper_models_and_recipe():
    small, params = read_preset("zhang_cbs_151m")
    big, _ = read_preset("zhang_cbs_604m")
    a, b = small.model.architecture(), big.model.architecture()
    assert (a["d_model"], a["num_layers"], a["num_heads"]) == (1024, 12, 16)
    assert (b["d_model"], b["num_layers"]) == (2048, 12) and not a["tied_embeddings"]
    o = small.optimizer
    assert (o.b1, o.b2, o.lr) == (0.95, 0.99, 0.00316) and small.schedule.name == "constant"
    assert small.eval.ewa_decay == 0.99 and small.dataset.context == 512
    sizes = preset_meta("zhang_cbs_151m")["data_sizes"]
    assert sizes == [d * 6_000_000 * 512 for d in (0.5, 1, 2)] and preset_meta("zhang_cbs_604m")["data_sizes"] == sizes
    assert int(small.budget.removesuffix("tokens")) >= max(sizes)


def test_merrill_warmup_doubles_b_and_steps_the_lr_at_the_papers_fractions():
    warm, _ = read_preset("merrill_warmup")
    tokens = int(warm.budget.removesuffix("tokens"))
    sequences = 10e9 / warm.dataset.context            # the header's 10B-token file
    fractions = [e * sequences * warm.dataset.context / tokens for e in warm.schedule.decay_epochs]
    assert fractions == pytest.approx([168 / 608, 503 / 608], abs=0.002)
    assert warm.batch_schedule.factor == 2 and warm.schedule.decay_factor * 2 == pytest.approx(math.sqrt(2))
    large, _ = read_preset("merrill_large")
    assert large.batch_size == 4 * warm.batch_size
    assert large.scaling.peak_lr(large.optimizer.lr, large.batch_size) == pytest.approx(2 * warm.optimizer.lr)


def test_offline_warmup_arms_see_equal_tokens_and_save_the_stated_steps():
    plans = {}
    for name in get("batch_warmup").offline_presets:
        cfg, _ = read_preset(name)
        plans[name] = job_plan(cfg, 14279, tokens_per_example=32)   # pydoc, context 32 (Python 3.11)
    steps = {n: p.total_steps for n, p in plans.items()}
    assert steps["warmup_offline_small"] == 2048 and steps["warmup_offline_large"] == 512
    assert 1 - steps["warmup_offline_merrill"] / 2048 == pytest.approx(0.41, abs=0.01)
    stages = plans["warmup_offline_merrill"].stages
    assert [b for _, b in stages] == [4, 8, 16]
    assert [float(e) / 0.57371 for e, _ in stages[1:]] == pytest.approx([0.276, 0.827], abs=0.002)


def test_shallue_lm1b_streams_and_tunes_the_lr():
    cfg, params = read_preset("shallue_lm1b")
    assert cfg.dataset.loader == "stream" and cfg.optimizer.nesterov and cfg.target.test_loss
    assert len(cfg.replicas.lr) >= 6 and max(cfg.replicas.lr) / min(cfg.replicas.lr) >= 100
    sizes = [int(b) for b in params["batch_size"]]
    assert sizes[-1] / sizes[0] >= 256
