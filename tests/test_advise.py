"""bench.tools.advise: the batch-size / LR decision on constructed profiles and noise scales."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.tools import advise
from bench.tools.advise import lr_factor, recommend

SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _profile(c=1e-3, d=1e-5, a=1e6, b=1e4):
    """step = c + d B (throughput B / (c + d B) saturates at 9c/d = 900 for 90%); memory a + b B."""
    return [{"batch_size": s, "peak_memory_bytes": a + b * s, "step_seconds": c + d * s,
             "examples_per_second": s / (c + d * s)} for s in SIZES]


def test_memory_bound():
    # budget 3.6e6 bytes: B=256 needs 3.56e6, 512 needs 6.12e6; noise scale 3000, saturation 1024
    rec = recommend(_profile(), 3000, 3.6e6, base_lr=0.1, base_batch_size=128)
    assert rec.limits == {"memory": 256, "noise_scale": 3000, "throughput": 1024}
    assert (rec.batch_size, rec.binding) == (256, "memory")
    assert rec.lr == pytest.approx(0.2) and rec.warmup_epochs == 5    # linear below B_noise, Goyal warmup
    assert "memory budget" in rec.explanation


def test_noise_scale_bound():
    rec = recommend(_profile(), 100.0, None, base_lr=0.1, base_batch_size=128)
    assert rec.limits["memory"] is None
    assert (rec.batch_size, rec.binding) == (64, "noise_scale")      # largest profiled B <= 100
    # base 128 lies above B_noise: its LR sits on the square-root branch, 64 on the linear one
    assert rec.lr == pytest.approx(0.1 * 64 / (100 * math.sqrt(128 / 100)))
    assert rec.warmup_epochs == 0                                     # scaled down: no warmup
    assert rec.predicted["steps_over_min"] == pytest.approx(1 + 100 / 64)
    assert rec.predicted["examples_over_min"] == pytest.approx(1 + 64 / 100)
    assert "noise scale" in rec.explanation


def test_throughput_saturation_bound():
    rec = recommend(_profile(), 50_000.0, 1e9, base_lr=0.1, base_batch_size=128)
    assert (rec.batch_size, rec.binding) == (1024, "throughput")     # first B with >= 90% of the max
    assert rec.lr == pytest.approx(0.8)
    # a stricter saturation fraction moves the limit up
    assert recommend(_profile(), 50_000.0, 1e9, base_lr=0.1, base_batch_size=128,
                     saturation=0.95).batch_size == 2048
    # a faster per-example cost relative to the overhead (c/d larger) saturates later
    assert recommend(_profile(c=8e-3), 50_000.0, None, base_lr=0.1, base_batch_size=128).batch_size == 4096


def test_limit_below_every_profiled_size_and_nothing_fits():
    rec = recommend(_profile(), 20.0, None, base_lr=0.1, base_batch_size=128)
    assert (rec.batch_size, rec.binding) == (32, "noise_scale")
    assert "smallest profiled" in rec.explanation
    with pytest.raises(ValueError, match="no profiled batch size fits"):
        recommend(_profile(), 100.0, 5e5, base_lr=0.1, base_batch_size=128)


def test_unknown_noise_scale_uses_memory_and_throughput_with_linear_rule():
    rec = recommend(pd.DataFrame(_profile()), None, 6.2e6, base_lr=0.1, base_batch_size=128)
    assert rec.limits["noise_scale"] is None
    assert (rec.batch_size, rec.binding) == (512, "memory")
    assert rec.lr_factor == pytest.approx(4.0) and rec.predicted["steps_over_min"] is None


def test_lr_rules():
    # linear-sqrt: linear up to B_noise, square root beyond; continuous at B_noise
    assert lr_factor(512, 128, 1000) == pytest.approx(4.0)
    assert lr_factor(4000, 1000, 1000) == pytest.approx(2.0)
    assert lr_factor(400, 64, 100) == pytest.approx(100 * 2 / 64)
    below, above = lr_factor(1000 - 1e-6, 100, 1000), lr_factor(1000 + 1e-6, 100, 1000)
    assert below == pytest.approx(above)
    assert lr_factor(400, 100, None, "sqrt") == pytest.approx(2.0)
    assert lr_factor(400, 100, None) == pytest.approx(4.0)              # no noise scale: linear
    # McCandlish: eps(B) = eps_max / (1 + B_noise / B): ~linear for B << B_noise, saturates above
    assert lr_factor(20, 10, 1e6, "mccandlish") == pytest.approx(2.0, rel=1e-4)
    assert lr_factor(1e6, 1e5, 10, "mccandlish") == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError):
        lr_factor(10, 10, None, "mccandlish")
    rec = recommend(_profile(), 100.0, None, base_lr=0.1, base_batch_size=32, rule="sqrt")
    assert rec.lr == pytest.approx(0.1 * math.sqrt(2))


def test_time_optimal_batch_size_minimizes_the_model_time():
    rec = recommend(_profile(), 400.0, None, base_lr=0.1, base_batch_size=128)
    b_star = rec.predicted["time_optimal_batch_size"]
    assert b_star == pytest.approx(math.sqrt(400 * 1e-3 / 1e-5))       # sqrt(B_noise c / d) = 200
    t = lambda b: (1 + 400 / b) * (1e-3 + 1e-5 * b)
    assert t(b_star) < min(t(b_star * 0.8), t(b_star * 1.25))


def test_cli_with_given_profile_and_record(tmp_path, capsys):
    prof_dir = tmp_path / "prof"
    prof_dir.mkdir()
    pd.DataFrame(_profile()).to_csv(prof_dir / "profile.csv", index=False)
    record = {"history": [{"step": 0, "noise_scale_simple_ema": 50.0},
                          {"step": 10, "noise_scale_simple_ema": 180.0, "noise_ema_measurements": 1.8,
                           "noise_ema_lag": 4.5, "noise_scale_simple_ema_interval": [150.0, 210.0]},
                          {"step": 20}]}
    (tmp_path / "record_r0.json").write_text(json.dumps(record))
    out = tmp_path / "advice"
    rc = advise.main(["optimizer.lr=0.1", "scaling.base_batch_size=128", "--profile", str(prof_dir),
                      "--record", str(tmp_path / "record_r0.json"), "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "advice.json").read_text())
    assert result["noise_scale"]["b_simple"] == 180.0
    assert result["recommendation"]["batch_size"] == 128 and result["recommendation"]["binding"] == "noise_scale"
    assert result["recommendation"]["lr"] == pytest.approx(0.1)
    assert (out / "advice.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "Use batch size 128" in printed and "batch_size=128 optimizer.lr=0.1" in printed
    # the interval it used, and what it averages over
    assert ("B_simple = 180, interval [150, 210] (95%, smoothed over 1.8 effective measurements "
            "(mean age 4.5), from the record's draws at step 10)") in printed


def test_measured_noise_scale_is_the_ratio_of_averaged_estimates():
    from conftest import small_config

    cfg = small_config(batch_size=64)
    noise = advise.measure_noise_scale(cfg, train_steps=5, draws=3, small_batch=16, num_small=8)
    assert noise["trace_sigma"] > 0 and noise["grad_norm_sq"] > 0
    assert noise["b_simple"] == pytest.approx(noise["trace_sigma"] / noise["grad_norm_sq"])
    assert len(noise["per_draw_b_simple"]) == 3 and np.all(np.isfinite(noise["per_draw_b_simple"]))
    assert 1 < noise["b_simple"] < 10 * 512
    lo, hi = noise["b_simple_interval"]
    assert lo < noise["b_simple"] < hi and "3 independent two-batch draws" in noise["interval"]
