"""Adam batch-size rules: the beta half-life in tokens (Marek et al. 2025) and the square-root
SDE rule (Malladi et al. 2022), on hand-computed values."""

from __future__ import annotations

import math

import pytest

from bench.rules.adam import (AdamHyperparams, beta_from_half_life, half_life_from_beta,
                                sde_scaling)

T = 1024


def test_marek_example_beta2_095_at_b512_is_a_7_1m_token_half_life():
    half_life = half_life_from_beta(0.95, tokens_per_step=512 * T)
    assert half_life == pytest.approx(512 * T * math.log(0.5) / math.log(0.95), rel=1e-12)
    assert half_life == pytest.approx(7.085e6, rel=1e-4)          # "about 7.1M tokens"
    beta2_b1 = beta_from_half_life(half_life, tokens_per_step=1 * T)
    assert beta2_b1 == pytest.approx(0.9999, abs=2e-6)            # their B = 1 setting
    assert beta2_b1 == pytest.approx(0.95 ** (1 / 512), rel=1e-12)


def test_half_life_definition_and_round_trip():
    assert beta_from_half_life(1000, 1000) == 0.5                 # one step = one half-life
    assert beta_from_half_life(2000, 1000) == pytest.approx(math.sqrt(0.5))
    beta = beta_from_half_life(3e6, 4096)
    assert beta ** (3e6 / 4096) == pytest.approx(0.5, rel=1e-9)  # weight halves after 3e6 tokens
    assert half_life_from_beta(beta, 4096) == pytest.approx(3e6, rel=1e-9)
    # examples, not tokens, for non-LM data: the same function with tokens_per_step = B
    assert beta_from_half_life(1280, 128) == pytest.approx(0.5 ** 0.1)


def test_half_life_errors():
    with pytest.raises(ValueError, match="half-life must be > 0 tokens, got 0"):
        beta_from_half_life(0, 1024)
    with pytest.raises(ValueError, match="tokens per step must be > 0, got -1"):
        beta_from_half_life(1e6, -1)
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\), got 1.0"):
        half_life_from_beta(1.0, 1024)


BASE = AdamHyperparams(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)


def test_sde_rule_scaling_up_by_4():
    s = sde_scaling(1024, 256, BASE)
    assert s.lr == pytest.approx(2e-3)            # sqrt(4) lr
    assert s.b1 == pytest.approx(0.6)             # 1 - 4 (1 - 0.9)
    assert s.b2 == pytest.approx(0.996)           # 1 - 4 (1 - 0.999)
    assert s.eps == pytest.approx(5e-9)           # eps / sqrt(4)


def test_sde_rule_scaling_down_by_4_and_identity():
    s = sde_scaling(64, 256, BASE)
    assert (s.lr, s.b1, s.b2, s.eps) == pytest.approx((5e-4, 0.975, 0.99975, 2e-8))
    assert sde_scaling(256, 256, BASE) == BASE


def test_sde_rule_composes():
    direct = sde_scaling(512, 32, AdamHyperparams(1e-3, 0.99, 0.9999, 1e-8))
    via = sde_scaling(512, 128, sde_scaling(128, 32, AdamHyperparams(1e-3, 0.99, 0.9999, 1e-8)))
    for a, b in zip((via.lr, via.b1, via.b2, via.eps), (direct.lr, direct.b1, direct.b2, direct.eps)):
        assert a == pytest.approx(b, rel=1e-12)


def test_sde_rule_keeps_rmsprop_without_first_moment():
    s = sde_scaling(1024, 256, AdamHyperparams(1e-3, 0.0, 0.99, 1e-8))
    assert s.b1 == 0.0 and s.b2 == pytest.approx(0.96)


def test_sde_rule_impossible_combinations():
    with pytest.raises(ValueError, match=r"^sde scaling: b1 = 0.9 at batch 32 gives b1 = -0.6 at batch 512 "
                                         r"\(kappa = 16\); the rule needs batch < 320$"):
        sde_scaling(512, 32, BASE)
    with pytest.raises(ValueError, match=r"sde scaling: b2 = 0.9 at batch 1 gives b2 = -1 at batch 20 "
                                         r"\(kappa = 20\); the rule needs batch < 10"):
        sde_scaling(20, 1, AdamHyperparams(1e-3, 0.99, 0.9, 1e-8))
    with pytest.raises(ValueError, match=r"sde scaling needs eps > 0 \(it scales eps by 1/sqrt\(kappa\)\), got 0"):
        sde_scaling(64, 32, AdamHyperparams(1e-3, 0.9, 0.999, 0.0))
    with pytest.raises(ValueError, match=r"b2 must be in \(0, 1\), got 1.0"):
        sde_scaling(64, 32, AdamHyperparams(1e-3, 0.9, 1.0, 1e-8))
    with pytest.raises(ValueError, match="batch sizes must be >= 1, got 0 and base 32"):
        sde_scaling(0, 32, BASE)
    with pytest.raises(ValueError, match="learning rate must be > 0, got -0.1"):
        sde_scaling(64, 32, AdamHyperparams(-0.1, 0.9, 0.999, 1e-8))


def test_timescale_definition_round_trip_and_errors():
    from bench.rules.adam import timescale, weight_decay_for_timescale
    # Wang & Aitchison's example scale: B = 128 of N = 50000, lr 1e-3, wd 0.1 -> tau_iter 1e4 steps
    tau = timescale(128, 1e-3, 0.1, 50000)
    assert tau == pytest.approx(1e4 * 128 / 50000)               # tau_iter / (iterations per epoch)
    assert weight_decay_for_timescale(tau, 128, 1e-3, 50000) == pytest.approx(0.1)
    assert weight_decay_for_timescale(tau, 256, 1e-3, 50000) == pytest.approx(0.2)   # wd follows B
    with pytest.raises(ValueError, match="timescale needs positive"):
        timescale(128, 1e-3, 0.0, 50000)
