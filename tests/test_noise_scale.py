"""McCandlish et al. (2018) two-batch noise-scale estimators on linear regression.

Checked against the exact values of the finite data set (every per-example gradient, by hand in
numpy and by ``exact_noise_scale``). Model: x ~ N(0, I_d), y = w* . x + sigma eps, loss 0.5 (x . w - y)^2, evaluated at
w = w* + delta. Per-example gradient g = (x . delta - sigma eps) x, so

    G = E g = delta,   tr(Sigma) = E|g|^2 - |G|^2 = (d + 1) |delta|^2 + sigma^2 d,

(E[(x.delta)^2 |x|^2] = (d + 2)|delta|^2 for Gaussian x), hence
B_simple = d + 1 + sigma^2 d / |delta|^2 = 17 for d = 8, |delta| = sigma = 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.config import ConfigError, from_dict
from bench.metrics import noise_scale as ns
from bench.metrics import noise_tracking as ns_track
from bench.metrics.curvature import measure
from bench.metrics.suite import MetricsConfig

D, N, SIGMA = 8, 8192, 1.0
SMALL, NUM_SMALL, DRAWS = 8, 16, 1000
B_SIMPLE_ANALYTIC = D + 1 + SIGMA**2 * D  # |delta| = 1


def loss_fn(params, batch):
    return 0.5 * jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)


@pytest.fixture(scope="module")
def setup():
    kx, ke, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    w_star = jax.random.normal(kw, (D,))
    x = jax.random.normal(kx, (N, D))
    data = {"x": x, "y": x @ w_star + SIGMA * jax.random.normal(ke, (N,))}
    params = {"w": w_star + jnp.ones(D) / np.sqrt(D)}
    # Exact quantities of this finite data set, from per-example gradients in numpy (by hand:
    # the gradient of 0.5 (x . w - y)^2 is (x . w - y) x).
    g = np.asarray((x @ params["w"] - data["y"])[:, None] * x, np.float64)
    grad = g.mean(axis=0)
    trace = float(np.sum((g - grad) ** 2) / (N - 1))  # (N - 1)-normalised tr(Sigma)
    keys = jax.random.split(jax.random.PRNGKey(1), DRAWS)
    draws = jax.vmap(
        lambda k: ns.gradient_noise_scale(loss_fn, params, data, k, small_batch=SMALL, num_small=NUM_SMALL)
    )(keys)
    draws = jax.tree.map(lambda a: np.asarray(a, np.float64), draws)
    return dict(data=data, params=params, grad_norm_sq=float(grad @ grad), trace=trace, draws=draws)


def test_exact_noise_scale_matches_numpy_per_example_gradients(setup):
    for chunk in (None, 1000):  # the chunking does not change it (N = 8192: a leftover chunk)
        exact = ns.exact_noise_scale(loss_fn, setup["params"], setup["data"], chunk_size=chunk)
        np.testing.assert_allclose(float(exact.grad_norm_sq), setup["grad_norm_sq"], rtol=1e-5)
        np.testing.assert_allclose(float(exact.trace_sigma), setup["trace"], rtol=1e-5)
        np.testing.assert_allclose(float(exact.b_simple), setup["trace"] / setup["grad_norm_sq"], rtol=1e-5)


def test_two_batch_estimators_are_unbiased_for_the_data_set(setup):
    # Disjoint microbatches are draws WITHOUT replacement from N examples, for which
    # E|G_B|^2 = |G|^2 + tr(Sigma) (1/B - 1/N) with Sigma (N - 1)-normalised: with the finite-N
    # term both estimators are unbiased for the exact values of the data set.
    # Averages of 1000 i.i.d. draws are normal to a good approximation (CLT), so a
    # 4-standard-error band fails by chance with probability ~6e-5 (keys are fixed).
    t, g2, d = setup["trace"], setup["grad_norm_sq"], setup["draws"]
    for est, expected in ((d.trace_sigma, t), (d.grad_norm_sq, g2)):
        stderr = est.std(ddof=1) / np.sqrt(DRAWS)
        assert abs(est.mean() - expected) <= 4 * stderr
        assert stderr < 0.02 * abs(expected)  # the band is informative
    # Each draw satisfies the estimator identities exactly.
    b_big = SMALL * NUM_SMALL
    np.testing.assert_allclose(d.trace_sigma, (d.g_small_sq - d.g_big_sq) / (1 / SMALL - 1 / b_big), rtol=1e-5)
    np.testing.assert_allclose(d.grad_norm_sq, d.g_big_sq - d.trace_sigma * (1 / b_big - 1 / N), rtol=1e-5)
    np.testing.assert_allclose(d.b_simple, d.trace_sigma / d.grad_norm_sq, rtol=1e-6)


def test_summary_over_draws_gives_the_ratio_of_means_and_a_covering_interval(setup):
    d = setup["draws"]
    s = ns.summarize(d.grad_norm_sq, d.trace_sigma)
    assert s.b_simple == pytest.approx(d.trace_sigma.mean() / d.grad_norm_sq.mean(), rel=1e-12)
    assert s.grad_norm_sq_var == pytest.approx(d.grad_norm_sq.var(ddof=1) / DRAWS, rel=1e-9)
    lo, hi = s.interval()
    exact = setup["trace"] / setup["grad_norm_sq"]
    assert lo < exact < hi and hi - lo < 0.1 * exact  # covers the exact value, and is informative
    # The analytic B_simple of the population (17) within the finite data set's own spread:
    # relative sd ~4.3% (2 sqrt(delta' Sigma delta / N)), plus Monte-Carlo error ~1%.
    np.testing.assert_allclose(s.b_simple, B_SIMPLE_ANALYTIC, rtol=0.15)
    one = ns.summarize(d.grad_norm_sq[:1], d.trace_sigma[:1])
    assert np.isnan(one.b_simple_stderr) and all(np.isnan(one.interval()))  # one draw: no interval


def test_smoothing_weighs_measurements_by_their_age_in_steps():
    g2 = np.array([2.0, -0.5, 1.0, 3.0])
    tr = np.array([10.0, 30.0, 20.0, 5.0])
    var = np.array([0.1, 0.2, 0.3, 0.4])
    steps = np.array([0.0, 100.0, 300.0, 310.0])
    half_life = 100.0
    state = None
    for t in range(len(g2)):
        decay = 0.0 if state is None else 0.5 ** ((steps[t] - state.position) / half_life)
        state = ns_track.update(state, g2[t], tr[t], decay=decay, variances=(var[t], var[t], 0.0),
                                position=steps[t])
        w = 0.5 ** ((steps[t] - steps[: t + 1]) / half_life)  # weight of each past measurement
        np.testing.assert_allclose(state.smoothed_grad_norm_sq, w @ g2[: t + 1] / w.sum(), rtol=1e-12)
        np.testing.assert_allclose(state.b_simple, (w @ tr[: t + 1]) / (w @ g2[: t + 1]), rtol=1e-12)
        np.testing.assert_allclose(state.effective_measurements, w.sum() ** 2 / (w**2).sum(), rtol=1e-12)
        np.testing.assert_allclose(state.lag, steps[t] - w @ steps[: t + 1] / w.sum(), rtol=1e-12)
        np.testing.assert_allclose(state.var_grad_norm_sq / state.weight**2,
                                   (w**2) @ var[: t + 1] / w.sum() ** 2, rtol=1e-12)
    # Per measurement (the noise_ema mode): the bias-corrected EMA, first value = first draw.
    first = ns_track.update(None, g2[0], tr[0], decay=0.8)
    assert first.b_simple == tr[0] / g2[0]
    leaves, treedef = jax.tree.flatten(state)  # a pytree (checkpointable)
    assert jax.tree.unflatten(treedef, leaves) == state
    assert dataclasses.replace(state) == state
    with pytest.raises(ValueError):
        ns_track.update(state, 1.0, 1.0, decay=1.5)


def test_each_measurement_draws_fresh_examples_and_its_interval_covers_the_exact_value():
    from tiny_mlp import loss_fn as mlp_loss, make_problem

    with jax.enable_x64(True):
        params, data = make_problem(n=96)
        _fresh_draws_and_coverage(mlp_loss, params, data)


def _fresh_draws_and_coverage(mlp_loss, params, data):
    cfg = MetricsConfig(hessian=False, density=False, sharpness=False, noise_small_batch=4,
                        noise_num_small=4, noise_draws=300, noise_exact=True, subset_size=0)
    key = jax.random.PRNGKey(3)
    a, _ = measure(cfg, mlp_loss, params, data, key, step=10)
    b, _ = measure(cfg, mlp_loss, params, data, key, step=20)
    again, _ = measure(cfg, mlp_loss, params, data, key, step=10)
    assert a["grad_norm_sq"] != b["grad_norm_sq"] and again["grad_norm_sq"] == a["grad_norm_sq"]
    for out in (a, b):
        assert out["noise_scale_draws"] == 300
        for key_, exact in (("grad_norm_sq", "grad_norm_sq_exact"), ("trace_sigma", "trace_sigma_exact")):
            assert abs(out[key_] - out[exact]) <= 4 * out[f"{key_}_stderr"], key_
        lo, hi = out["noise_scale_simple_interval"]
        assert lo < out["noise_scale_simple_exact"] < hi


def test_half_life_and_per_measurement_smoothing_are_one_choice():
    with pytest.raises(ConfigError, match=r"^metrics.noise_ema \(per measurement\) and metrics.noise_half_life"):
        from_dict({"metrics": {"noise_half_life": 500, "noise_ema": 0.5}})
    assert from_dict({"metrics": {"noise_half_life": 500}}).metrics.noise_half_life == 500


def test_rejects_draws_that_do_not_fit_the_data(setup):
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError):
        ns.gradient_noise_scale(loss_fn, setup["params"], setup["data"], key, small_batch=SMALL, num_small=1)
    with pytest.raises(ValueError):
        ns.gradient_noise_scale(loss_fn, setup["params"], setup["data"], key, small_batch=N, num_small=2)
