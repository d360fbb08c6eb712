"""The shared-work default suite: the density's SLQ Lanczos runs also give the top eigenvalues.

Checked against the dense Hessian of the tiny float64 MLP (tests/tiny_mlp.py), against a separate
Lanczos run and a converged power iteration, and the suite's HVP count against the HVPs it ran.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bench.metrics import hessian as hs
from bench.metrics.curvature import measure
from bench.metrics.operator import HessianOperator
from bench.metrics.suite import MetricsConfig
from tiny_mlp import loss_fn, make_problem

# The suite with everything but the Hessian-spectrum metrics off (their HVPs are counted below).
SPECTRUM = MetricsConfig(
    hessian=True, subset_size=0, chunk_size=40, top_k=2, lanczos_iters=30, hutchinson_probes=4,
    density=True, slq_probes=3, density_grid=32, sharpness=False, noise_scale=False,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def problem():
    params, data = make_problem()
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), data))(flat))
    return params, data, np.linalg.eigvalsh(dense)[::-1]  # descending


@pytest.mark.parametrize("rolled", [False, True])
def test_slq_runs_give_the_dense_top_eigenvalues_and_the_same_density(problem, rolled):
    params, data, exact = problem
    key = jax.random.PRNGKey(5)
    kw = {"num_probes": 3, "num_iters": 30, "chunk_size": 40, "rolled": rolled}
    res = hs.slq_lanczos(loss_fn, params, data, key, k=2, **kw)
    np.testing.assert_allclose(res.eigenvalues, exact[:2], rtol=1e-6)
    # Each residual bounds the distance to the nearest eigenvalue (here: the dense one it matches).
    assert np.all(np.abs(np.asarray(res.eigenvalues) - exact[:2]) <= np.asarray(res.residuals) + 1e-12)
    # Interlacing: the chosen run's top Ritz value is the largest of all runs, and below lambda_max.
    assert float(res.eigenvalues[0]) == pytest.approx(float(np.max(res.nodes)), rel=0, abs=0)
    assert float(np.max(res.nodes)) <= exact[0] * (1 + 1e-12)
    nodes, weights = hs.slq_ritz(loss_fn, params, data, key, **kw)  # the density alone
    np.testing.assert_allclose(res.nodes, nodes, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.weights, weights, rtol=1e-12, atol=1e-12)


def test_shared_suite_matches_separate_lanczos_power_iteration_and_counts_its_hvps(problem, monkeypatch):
    params, data, exact = problem
    key = jax.random.PRNGKey(11)
    ran = {"hvps": 0}
    matvec = HessianOperator.matvec

    def counted(self, v):  # every HVP of the subset goes through matvec
        ran["hvps"] += 1
        return matvec(self, v)

    monkeypatch.setattr(HessianOperator, "matvec", counted)
    shared, _ = measure(SPECTRUM, loss_fn, params, data, key, rolled=False)
    m, k = SPECTRUM.lanczos_iters, SPECTRUM.top_k
    assert ran["hvps"] == SPECTRUM.slq_probes * m + k + SPECTRUM.hutchinson_probes
    assert shared["curvature_hvps"] == ran["hvps"]  # the stated count is the work done
    monkeypatch.setattr(HessianOperator, "matvec", matvec)

    separate, _ = measure(dataclasses.replace(SPECTRUM, top_from_slq=False, power_iters=1000), loss_fn, params,
                          data, key, rolled=False)
    assert separate["curvature_hvps"] == (SPECTRUM.slq_probes + 1) * m + k + SPECTRUM.hutchinson_probes + 1002
    assert separate["hessian_density"] == shared["hessian_density"]  # sharing leaves the density as it was
    np.testing.assert_allclose(shared["hessian_eigenvalues"], exact[:2], rtol=1e-6)
    np.testing.assert_allclose(shared["hessian_eigenvalues"], separate["hessian_eigenvalues"], rtol=1e-6)
    # Power iteration (the optional cross-check, largest magnitude: here the top eigenvalue, as
    # exact[0] > |exact[-1]|) agrees within the two residual bounds.
    assert exact[0] > abs(exact[-1])
    tol = shared["hessian_lanczos_residual"] + separate["power_residual"]
    assert abs(shared["hessian_top_eigenvalue"] - separate["power_top_eigenvalue"]) <= max(tol, 1e-8 * exact[0])
    assert "power_top_eigenvalue" not in shared  # off by default


def test_default_suite_shares_and_power_iteration_is_off():
    cfg = MetricsConfig()
    assert cfg.top_from_slq and cfg.density and cfg.power_iters == 0
