"""McCandlish et al. (2018) two-batch noise-scale estimators on linear regression.

Model: x ~ N(0, I_d), y = w* . x + sigma eps, loss 0.5 (x . w - y)^2, evaluated at
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

from bench.metrics import noise_scale as ns

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
    # Exact population quantities of this finite data set, from per-example gradients.
    g = np.asarray((x @ params["w"] - data["y"])[:, None] * x, np.float64)
    grad = g.mean(axis=0)
    trace = float(np.mean(np.sum((g - grad) ** 2, axis=1)))  # 1/N-normalised tr(Sigma)
    keys = jax.random.split(jax.random.PRNGKey(1), DRAWS)
    draws = jax.vmap(
        lambda k: ns.gradient_noise_scale(loss_fn, params, data, k, small_batch=SMALL, num_small=NUM_SMALL)
    )(keys)
    draws = jax.tree.map(lambda a: np.asarray(a, np.float64), draws)
    return dict(data=data, params=params, grad_norm_sq=float(grad @ grad), trace=trace, draws=draws)


def test_two_batch_estimators_are_unbiased_for_the_data_set(setup):
    # Disjoint microbatches are draws WITHOUT replacement from N examples, for which
    # E|G_B|^2 = |G|^2 + T (N - B) / (B (N - 1)) with T the 1/N-normalised trace.
    # Plugging that into the two-batch formulas gives exactly
    #   E[tr est] = T N / (N - 1),   E[|G|^2 est] = |G|^2 - T / (N - 1).
    # Averages of 1000 i.i.d. draws are normal to a good approximation (CLT), so a
    # 4-standard-error band fails by chance with probability ~6e-5 (keys are fixed).
    t, g2, d = setup["trace"], setup["grad_norm_sq"], setup["draws"]
    for est, expected in ((d.trace_sigma, t * N / (N - 1)), (d.grad_norm_sq, g2 - t / (N - 1))):
        stderr = est.std(ddof=1) / np.sqrt(DRAWS)
        assert abs(est.mean() - expected) <= 4 * stderr
        assert stderr < 0.02 * abs(expected)  # the band is informative
    # Each draw satisfies the estimator identities exactly.
    b_big = SMALL * NUM_SMALL
    np.testing.assert_allclose(
        d.grad_norm_sq, (b_big * d.g_big_sq - SMALL * d.g_small_sq) / (b_big - SMALL), rtol=1e-5
    )
    np.testing.assert_allclose(d.b_simple, d.trace_sigma / d.grad_norm_sq, rtol=1e-6)


def test_smoothed_noise_scale_matches_analytic_b_simple(setup):
    # EMA-style estimate: average numerator and denominator over draws, then divide.
    # Its deviation from the analytic 17 comes from (a) the finite data set, whose own
    # |G|^2 and tr(Sigma) deviate from E|G|^2 = 1 and 17 by relative sd ~
    # 2 sqrt(delta' Sigma delta / N) = 2 sqrt(3 / 8192) ~ 3.8% and ~2% (B_simple: ~4.3%),
    # and (b) Monte-Carlo error over 1000 draws (~1%). 15% is ~3.5 sd of the total.
    d = setup["draws"]
    ema = None
    for g2, tr in zip(d.grad_norm_sq, d.trace_sigma):
        ema = ns.update(ema, g2, tr, decay=0.995)
    ratio_of_means = d.trace_sigma.mean() / d.grad_norm_sq.mean()
    np.testing.assert_allclose(ratio_of_means, B_SIMPLE_ANALYTIC, rtol=0.15)
    np.testing.assert_allclose(ema.b_simple, B_SIMPLE_ANALYTIC, rtol=0.15)
    # And tightly against the data set's own B_simple (its exact T and |G|^2).
    exact = setup["trace"] / setup["grad_norm_sq"]
    np.testing.assert_allclose(ratio_of_means, exact, rtol=0.03)


def test_ema_smooths_numerator_and_denominator_separately():
    decay = 0.8
    g2 = np.array([2.0, -0.5, 1.0, 3.0])
    tr = np.array([10.0, 30.0, 20.0, 5.0])
    state = None
    for t in range(len(g2)):
        state = ns.update(state, g2[t], tr[t], decay=decay)
        w = (1 - decay) * decay ** np.arange(t, -1, -1)  # weights of draws 0..t
        np.testing.assert_allclose(state.smoothed_grad_norm_sq, w @ g2[: t + 1] / w.sum(), rtol=1e-12)
        np.testing.assert_allclose(state.smoothed_trace_sigma, w @ tr[: t + 1] / w.sum(), rtol=1e-12)
        np.testing.assert_allclose(state.b_simple, (w @ tr[: t + 1]) / (w @ g2[: t + 1]), rtol=1e-12)
        if t == 0:
            assert state.b_simple == tr[0] / g2[0]  # bias correction: first update = first draw
    # It is not the average of per-draw ratios (which a negative |G|^2 draw would wreck).
    assert not np.isclose(state.b_simple, np.mean(tr / g2))
    # A pytree (checkpointable), and pure: updating does not mutate the old state.
    leaves, treedef = jax.tree.flatten(state)
    assert jax.tree.unflatten(treedef, leaves) == state and len(leaves) == 3
    assert dataclasses.replace(state) == state
    with pytest.raises(ValueError):
        ns.update(state, 1.0, 1.0, decay=1.0)


def test_rejects_draws_that_do_not_fit_the_data(setup):
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError):
        ns.gradient_noise_scale(loss_fn, setup["params"], setup["data"], key, small_batch=SMALL, num_small=1)
    with pytest.raises(ValueError):
        ns.gradient_noise_scale(loss_fn, setup["params"], setup["data"], key, small_batch=N, num_small=2)
