"""dataset=markov: the analytic entropy rate and loss floor match hand values and long samples;
generation is deterministic per seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.data.markov import MarkovChain, load_markov


def h(*p: float) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def conditional_entropy_from_counts(z: np.ndarray, order: int, a: int) -> float:
    """Plug-in H(next | previous k) from (k+1)-gram counts inside each row (nats)."""
    n = z.shape[1]
    idx = sum(z[:, i:n - order + i] * a ** (order - i) for i in range(order + 1))
    joint = np.bincount(idx.ravel(), minlength=a ** (order + 1)).reshape(a ** order, a)
    p = joint / joint.sum()
    ctx = p.sum(axis=1)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum() + (ctx[ctx > 0] * np.log(ctx[ctx > 0])).sum())


def test_entropy_rate_of_a_hand_computed_chain():
    # order 1 over {a, b}: P(.|a) = (0.9, 0.1), P(.|b) = (0.5, 0.5); stationary (5/6, 1/6)
    chain = MarkovChain(1, np.array([[0.9, 0.1], [0.5, 0.5]]))
    np.testing.assert_allclose(chain.stationary(), [5 / 6, 1 / 6], atol=1e-12)
    assert chain.entropy_rate() == pytest.approx(5 / 6 * h(0.9, 0.1) + 1 / 6 * math.log(2), abs=1e-12)
    assert chain.loss_floor(32) == pytest.approx(chain.entropy_rate(), abs=1e-12)   # order 1: no warm-up


def test_stationary_distribution_is_a_fixed_point_of_the_dense_transition_matrix():
    chain = MarkovChain.random(3, alphabet_size=4, order=2)
    a, c = 4, 16
    dense = np.zeros((c, c))                      # context (z1, z2) -> (z2, x)
    for z1 in range(a):
        for z2 in range(a):
            for x in range(a):
                dense[z1 * a + z2, z2 * a + x] = chain.transition[z1 * a + z2, x]
    pi = chain.stationary()
    np.testing.assert_allclose(pi @ dense, pi, atol=1e-13)
    assert pi.sum() == pytest.approx(1.0, abs=1e-13)


def test_loss_floor_formula():
    chain = MarkovChain.random(0, alphabet_size=8, order=3)
    rate, t = chain.entropy_rate(), 64
    expected = (chain.block_entropy(3) - chain.block_entropy(1) + (t - 2) * rate) / t
    assert chain.loss_floor(t) == pytest.approx(expected, abs=1e-12)
    assert rate < chain.loss_floor(t) < chain.block_entropy(1)
    assert chain.loss_floor(10_000) == pytest.approx(rate, abs=1e-3)


def test_long_sample_entropy_matches_the_analytic_rate():
    # ~1M tokens of an order-2 chain over 16 symbols. Tolerance 0.01 nats: the plug-in
    # estimator's bias is ~ (A^k) / (2 n) = 0.002 nats, its standard error ~0.002.
    chain = MarkovChain.random(1, alphabet_size=16, order=2, concentration=0.5)
    z = chain.sample(4000, 257, np.random.default_rng(11)).astype(np.int64) - ord("a")
    assert z.min() >= 0 and z.max() < 16
    assert conditional_entropy_from_counts(z, 2, 16) == pytest.approx(chain.entropy_rate(), abs=0.01)
    counts = np.bincount(z.ravel(), minlength=16) / z.size           # stationary unigrams
    assert h(*counts) == pytest.approx(chain.block_entropy(1), abs=0.01)
    # the true model's average loss on the sample is the floor (std error ~0.003 here)
    x, y = z[:, :-1] + ord("a"), z[:, 1:] + ord("a")
    assert chain.optimal_loss(x, y) == pytest.approx(chain.loss_floor(256), abs=0.01)


def test_load_markov_layout_provenance_and_determinism():
    data, prov = load_markov(context=32, num_train=256, num_test=64, seed=4)
    again, prov_again = load_markov(context=32, num_train=256, num_test=64, seed=4)
    other, prov_other = load_markov(context=32, num_train=256, num_test=64, seed=5)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    assert prov["sha256"] == prov_again["sha256"] != prov_other["sha256"]
    assert not np.array_equal(data.x_train, other.x_train)
    assert data.x_train.shape == data.y_train.shape == (256, 32) and data.x_test.shape == (64, 32)
    assert data.x_train.dtype == np.int32 and data.num_classes == 256
    np.testing.assert_array_equal(data.y_train[:, :-1], data.x_train[:, 1:])
    assert set(np.unique(data.x_train)) <= set(range(ord("a"), ord("a") + 16))
    chain = MarkovChain.random(4)
    assert prov["entropy_rate_nats"] == pytest.approx(chain.entropy_rate())
    assert prov["entropy_rate_bits"] == pytest.approx(prov["entropy_rate_nats"] / math.log(2))
    assert prov["loss_floor_nats"] == pytest.approx(chain.loss_floor(32))
    # a target loss is reachable: the floor is well below the unigram entropy
    assert prov["loss_floor_nats"] < prov["stationary_unigram_entropy_nats"] - 0.3


def test_invalid_chains_are_rejected():
    with pytest.raises(ValueError, match="order must be >= 1, got 0"):
        MarkovChain.random(0, order=0)
    with pytest.raises(ValueError, match="concentration must be > 0, got 0"):
        MarkovChain.random(0, concentration=0)
    with pytest.raises(ValueError, match="alphabet of 200 symbols from byte 97 must fit in the 256 byte values"):
        MarkovChain.random(0, alphabet_size=200)
