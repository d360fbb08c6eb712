"""Hessian probes against a dense Hessian of a tiny MLP (bench.metrics.hessian, curvature).

Float64 throughout (scoped with ``jax.enable_x64`` for this module only): the
assertions compare iterative estimates with ``eigvalsh`` of the dense Hessian at
1e-4 relative and chunk/device invariance at ~1e-10, so float32 round-off in the
dense reference and the HVPs (~1e-6 of ||H||) must not blur what is tested.

Both loop styles are tested (bench.metrics.operator): ``rolled=True`` (one jitted program with
``lax`` loops, the accelerator path and the implementation before host-driven loops) and
``rolled=False`` (host-driven, the CPU default); they must agree to round-off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from bench.core.compile_log import logged_compiles
from bench.metrics import hessian as hs
from bench.metrics import operator
from bench.metrics.curvature import measure
from bench.metrics.suite import MetricsConfig
from bench.metrics.operator import HessianOperator
from bench.metrics.sharpness import loss_and_grad_at
from tiny_mlp import loss_fn, make_problem

REPO = Path(__file__).resolve().parents[1]

# The problem as source too, so the device-count subprocess builds the very same one.
PROBLEM_SRC = (Path(__file__).parent / "tiny_mlp.py").read_text()


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# In-process tests share loss_fn, shapes, chunk_size=40 (which does not divide N=96) and
# the static sizes that measure() uses, so each jitted program compiles once.
@pytest.fixture(scope="module")
def problem():
    params, data = make_problem()
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda f: loss_fn(unravel(f), data))(flat)
    eigs = np.linalg.eigvalsh(np.asarray(dense))  # ascending
    return SimpleNamespace(params=params, data=data, flat=flat, unravel=unravel, dense=np.asarray(dense), eigs=eigs)


@pytest.mark.parametrize("rolled", [True, False])
@pytest.mark.parametrize("chunk_size", [96, 32, 40, 7, 1000])
def test_hvp_equals_dense_hessian_times_v_for_any_chunk_size(problem, chunk_size, rolled):
    v = jax.random.normal(jax.random.PRNGKey(7), problem.flat.shape, jnp.float64)
    hv = hs.hvp(loss_fn, problem.params, problem.data, problem.unravel(v), chunk_size=chunk_size, rolled=rolled)
    np.testing.assert_allclose(ravel_pytree(hv)[0], problem.dense @ np.asarray(v), rtol=0, atol=1e-12)
    op = HessianOperator.of(loss_fn, problem.params, problem.data, chunk_size, rolled)
    matvec = jax.jit(lambda o, v: o.matvec(v)) if rolled else (lambda o, v: o.matvec(v))
    np.testing.assert_allclose(matvec(op, v), problem.dense @ np.asarray(v), rtol=0, atol=1e-12)


def test_lanczos_top_k_matches_dense_eigvalsh(problem):
    res = hs.lanczos_top_eigenvalues(
        loss_fn, problem.params, problem.data, jax.random.PRNGKey(3), k=3, num_iters=30, chunk_size=40
    )
    exact = problem.eigs[::-1][:3]
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-4)
    # Reported residuals equal ||H u - theta u|| computed with the dense Hessian, and are small.
    u = np.asarray(res.eigenvectors)
    explicit = np.linalg.norm(u @ problem.dense - np.asarray(res.eigenvalues)[:, None] * u, axis=1)
    np.testing.assert_allclose(res.residuals, explicit, rtol=1e-3, atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-10)
    assert np.all(np.asarray(res.residuals) < 1e-4 * exact[0])


def test_lanczos_residual_bounds_eigenvalue_error_when_not_converged(problem):
    # For symmetric H and unit u: min_i |lambda_i - theta| <= ||H u - theta u||.
    res = hs.lanczos_top_eigenvalues(
        loss_fn, problem.params, problem.data, jax.random.PRNGKey(3), k=2, num_iters=4, chunk_size=32
    )
    u = np.asarray(res.eigenvectors)
    for theta, r, ui in zip(np.asarray(res.eigenvalues), np.asarray(res.residuals), u):
        np.testing.assert_allclose(r, np.linalg.norm(problem.dense @ ui - theta * ui), rtol=1e-6)
        assert np.min(np.abs(problem.eigs - theta)) <= r * (1 + 1e-9)
    assert res.residuals[0] > 1e-6  # 4 steps do not converge here, so the bound is not vacuous


def test_power_iteration_matches_largest_magnitude_eigenvalue(problem):
    eig, resid = hs.power_iteration_top_eigenvalue(
        loss_fn, problem.params, problem.data, jax.random.PRNGKey(4), num_iters=1000, tol=1e-12, chunk_size=40
    )
    dominant = problem.eigs[np.argmax(np.abs(problem.eigs))]
    np.testing.assert_allclose(eig, dominant, rtol=1e-4)
    assert resid < 1e-2 * abs(dominant)


def test_hutchinson_trace_within_three_standard_errors(problem):
    mean, stderr = hs.hutchinson_trace(
        loss_fn, problem.params, problem.data, jax.random.PRNGKey(5), num_probes=200, chunk_size=40
    )
    exact = np.trace(problem.dense)
    assert 0 < stderr < 0.2 * abs(exact)  # the probes carry information
    assert abs(mean - exact) <= 3 * stderr


def test_slq_density_integrates_to_one_and_covers_spectrum(problem):
    d = hs.spectral_density(
        loss_fn, problem.params, problem.data, jax.random.PRNGKey(6), num_probes=2, num_iters=30, grid_size=256,
        chunk_size=40,
    )  # fmt: skip
    grid, density = np.asarray(d["grid"]), np.asarray(d["density"])
    assert grid.shape == density.shape == (256,)
    assert np.all(density >= 0)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-4)
    assert grid[0] <= problem.eigs[0] and grid[-1] >= problem.eigs[-1]
    # The quadrature weights of each probe sum to 1, and the density's mean is tr(H)/P.
    np.testing.assert_allclose(np.sum(d["weights"], axis=1), 1.0, atol=1e-4)
    mean_eig = np.trapezoid(grid * density, grid)
    assert abs(mean_eig - np.mean(problem.eigs)) < 0.25 * np.std(problem.eigs)


def test_lanczos_and_slq_survive_an_exhausted_krylov_space():
    # H = diag(h) with 3 distinct eigenvalues: every Krylov space is exhausted after 3 of
    # the 30 steps (the breakdown that corrupts matfree 0.6's tridiag_sym).
    mult = {1.0: 20, 2.0: 20, 5.0: 10}
    h = jnp.asarray(np.repeat(list(mult), list(mult.values())), jnp.float64)
    params, data = jnp.zeros(50, jnp.float64), {"x": jnp.zeros((4, 1)), "y": jnp.zeros((4,), jnp.int32)}

    def quad(p, batch):
        return 0.5 * jnp.sum(h * p**2)

    res = hs.lanczos_top_eigenvalues(quad, params, data, jax.random.PRNGKey(0), k=3, num_iters=30)
    np.testing.assert_allclose(res.eigenvalues, 5.0, rtol=1e-12)  # 5 has multiplicity 10
    assert np.all(np.asarray(res.residuals) < 1e-12)
    nodes, weights = (np.asarray(a) for a in hs.slq_ritz(quad, params, data, jax.random.PRNGKey(1), num_probes=2))
    assert np.all((nodes > 1 - 1e-12) & (nodes < 5 + 1e-12))  # Ritz values of an orthonormal projection
    # For a Rademacher probe v, the quadrature weight of lambda is |P_lambda v|^2/|v|^2 = multiplicity/50.
    for lam, count in mult.items():
        np.testing.assert_allclose(np.where(np.isclose(nodes, lam), weights, 0).sum(axis=1), count / 50, atol=1e-12)


@pytest.mark.parametrize("rolled", [True, False])
def test_closed_over_arrays_are_traced_so_new_closures_reuse_the_compiled_program(problem, rolled):
    # The loop builds a fresh closure over this step's BatchNorm statistics at every
    # measurement; a fresh closure over new arrays must give new, correct results
    # (no stale baked-in constants) without compiling again. Same for a Partial.
    def make_loss(scale):
        return lambda params, batch: scale * loss_fn(params, batch)

    def scaled_loss(scale, params, batch):
        return scale * loss_fn(params, batch)

    v = jax.random.normal(jax.random.PRNGKey(7), problem.flat.shape, jnp.float64)
    program = hs.hvp.jitted if rolled else operator._add_chunk  # the one program an HVP runs
    for make in (make_loss, lambda s: Partial(scaled_loss, s)):
        before = program._cache_size()
        for s in (1.0, 2.5):
            hv = hs.hvp(make(jnp.float64(s)), problem.params, problem.data, problem.unravel(v), chunk_size=40,
                        rolled=rolled)
            np.testing.assert_allclose(ravel_pytree(hv)[0], s * problem.dense @ np.asarray(v), rtol=0, atol=1e-12)
        assert program._cache_size() == before + 1


def test_hoisted_hvp_equals_dense_hessian_and_respects_the_memory_budget(problem):
    # Hoisting (host-driven): the primal pass of each chunk once, the tangent pass per HVP.
    v = jax.random.normal(jax.random.PRNGKey(8), problem.flat.shape, jnp.float64)
    op = HessianOperator.of(loss_fn, problem.params, problem.data, 40, rolled=False)
    hoisted = op.hoisted()
    assert hoisted.linear is not None and hoisted.linear.nbytes > 0
    assert len(hoisted.linear.main) == 2 and hoisted.linear.tail is not None  # 96 = 2 x 40 + 16
    np.testing.assert_allclose(hoisted.matvec(v), problem.dense @ np.asarray(v), rtol=0, atol=1e-12)
    assert op.hoisted(max_bytes=hoisted.linear.nbytes - 1).linear is None  # over budget: not hoisted
    assert op.hoisted(max_bytes=hoisted.linear.nbytes).linear is not None
    assert HessianOperator.of(loss_fn, problem.params, problem.data, 40, rolled=True).hoisted().linear is None


SUITE = MetricsConfig(
    hessian=True, every=10, subset_size=0, chunk_size=40, top_k=3, lanczos_iters=30, power_iters=1000,
    hutchinson_probes=200, density=True, slq_probes=2, density_grid=64, sharpness=True,
    sharpness_eps=(1e-3, 5e-4), sharpness_subspace_dim=10, sharpness_iters=10, noise_scale=True,
    noise_small_batch=8, noise_num_small=4, noise_ema=0.9,
)  # fmt: skip


# A light measure() configuration for the loop-style tests (every estimator, few iterations).
SMALL = dataclasses.replace(SUITE, top_k=2, lanczos_iters=10, power_iters=10, hutchinson_probes=4,
                            density_grid=16, sharpness_eps=(1e-3,), sharpness_subspace_dim=4, sharpness_iters=2)


def _flat_values(out: dict) -> np.ndarray:
    """Every number of a measure() record (density dict included), in key order."""
    keys = sorted(k for k in out if k != "curvature_seconds")
    return np.concatenate([np.ravel(np.asarray(jax.tree.leaves(out[k]), np.float64)) for k in keys])


def test_host_driven_loops_agree_with_rolled_lax_loops(problem):
    # The host-driven loops (CPU default) reorganise only where loops run; every estimator
    # must give the rolled implementation's numbers to round-off (chunk 40 leaves a tail of 16):
    # all of measure()'s values, power iteration stopping early, the sharpness objective.
    args = (loss_fn, problem.params, problem.data)
    key, results = jax.random.PRNGKey(3), {}
    for rolled in (True, False):
        kw = {"chunk_size": 40, "rolled": rolled}
        power_tol = hs.power_iteration_top_eigenvalue(*args, key, num_iters=1000, tol=1e-8, **kw)  # stops early
        sharp = loss_and_grad_at(*args, random_subspace_like(problem.flat.size), jnp.arange(4.0) / 100, **kw)
        suite, _ = measure(SMALL, *args, key, lr=0.5, rolled=rolled)  # every estimator
        results[rolled] = [*power_tol, *sharp, _flat_values(suite)]
        assert suite["hessian_lanczos_residuals"][1] > 1e-6  # not converged in 10 steps: a sensitive check
    for rolled, host in zip(results[True], results[False]):
        np.testing.assert_allclose(host, rolled, rtol=1e-9, atol=1e-12)


def random_subspace_like(size: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(9), (size, 4), jnp.float64)


def _compiles(fn) -> list[str]:
    """The 'Compiling ...' log lines of programs compiled while running ``fn`` (jit, eager ops, AOT)."""
    with logged_compiles() as compiled:
        fn()
    return compiled


def test_second_measurement_compiles_nothing_and_estimators_share_the_hvp_program(problem):
    # Host-driven: each HVP chunk is one program for every estimator; a new measurement
    # (new parameters, a fresh loss closure over new arrays) compiles nothing at all.
    def make_loss(scale):
        return lambda params, batch: scale * loss_fn(params, batch)

    key, params2 = jax.random.PRNGKey(4), jax.tree.map(lambda a: a * 1.01, problem.params)
    first = _compiles(lambda: measure(SMALL, make_loss(jnp.float64(1.0)), problem.params, problem.data, key,
                                      rolled=False))
    assert len(first) > 0
    second = _compiles(lambda: measure(SMALL, make_loss(jnp.float64(2.0)), params2, problem.data, key,
                                       rolled=False))
    assert second == []


def test_estimators_share_one_hvp_program(problem):
    # Host-driven, the HVP programs (hoisted: the per-chunk linearization and its application;
    # not hoisted: the per-chunk HVP) are compiled once whoever asks: after Lanczos compiled
    # them for this chunking (24 divides N = 96: no tail), the other estimators compile none.
    args, kw = (loss_fn, problem.params, problem.data), {"chunk_size": 24, "rolled": False}
    key = jax.random.PRNGKey(5)
    hvp_programs = ("jit(residuals)", "jit(_add)", "jit(_finish)", "jit(_add_chunk)", "jit(_finish_chunks)")
    first = _compiles(lambda: hs.lanczos_top_eigenvalues(*args, key, k=1, num_iters=5, **kw))
    assert sum(m.startswith(tuple("Compiling " + p for p in hvp_programs)) for m in first) >= 2
    later = _compiles(lambda: (hs.power_iteration_top_eigenvalue(*args, key, num_iters=3, **kw),
                               hs.hutchinson_trace(*args, key, num_probes=2, **kw),
                               hs.slq_ritz(*args, key, num_probes=1, num_iters=5, **kw)))
    assert not [m for m in later if m.startswith(tuple("Compiling " + p for p in hvp_programs))]


DEVICE_SCRIPT = (
    PROBLEM_SRC
    + """
import dataclasses
import json
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from bench.metrics import hessian as hs

params, data = make_problem()
mesh = Mesh(np.array(jax.devices()), ("data",))
data = jax.device_put(data, NamedSharding(mesh, P("data")))
flat, unravel = ravel_pytree(params)
v = unravel(jax.random.normal(jax.random.PRNGKey(7), flat.shape, jnp.float64))
out = {"devices": len(jax.devices()), "shards": len(data["x"].sharding.device_set)}
for chunk in (96, 7):  # 7 divides neither N=96 nor the 24-example shards
    out[str(chunk)] = ravel_pytree(hs.hvp(loss_fn, params, data, v, chunk_size=chunk))[0].tolist()
for rolled in (False, True):  # host-driven (the CPU default) and rolled lax loops
    top = hs.lanczos_top_eigenvalues(loss_fn, params, data, jax.random.PRNGKey(3), k=2, num_iters=30, chunk_size=7,
                                     rolled=rolled)
    out["top_rolled" if rolled else "top"] = np.asarray(top.eigenvalues).tolist()
print(json.dumps(out))
"""
)


def _start_on_devices(n: int) -> subprocess.Popen:
    """Device simulation must precede JAX's initialisation: run in a fresh process."""
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
        JAX_ENABLE_X64="1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-c", DEVICE_SCRIPT]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_hvp_and_top_eigenvalue_independent_of_chunks_and_device_count(problem):
    procs = [_start_on_devices(1), _start_on_devices(4)]  # concurrently
    one, four = (_result(p) for p in procs)
    assert (one["devices"], four["devices"], four["shards"]) == (1, 4, 4)
    for run in (one, four):
        for chunk in ("96", "7"):
            np.testing.assert_allclose(run[chunk], one["96"], rtol=0, atol=1e-12)
        # Converged top-2 (residual ~1e-10, so eigenvalue error ~1e-20) equal the dense ones.
        np.testing.assert_allclose(run["top"], problem.eigs[::-1][:2], rtol=1e-10)
        np.testing.assert_allclose(run["top_rolled"], run["top"], rtol=1e-12)
    np.testing.assert_allclose(four["top"], one["top"], rtol=1e-12)


def test_measure_reports_enabled_metrics_consistently(problem):
    cfg = SUITE
    key = jax.random.PRNGKey(11)
    out, ema = measure(cfg, loss_fn, problem.params, problem.data, key, lr=0.5)
    json.dumps(out, allow_nan=False)  # valid JSON
    exact = problem.eigs[::-1]
    np.testing.assert_allclose(out["hessian_top_eigenvalue"], exact[0], rtol=1e-4)
    np.testing.assert_allclose(out["hessian_eigenvalues"], exact[:3], rtol=1e-4)
    assert len(out["hessian_lanczos_residuals"]) == 3 and out["hessian_lanczos_residual"] < 1e-4
    assert abs(out["hessian_trace"] - np.trace(problem.dense)) <= 4 * out["hessian_trace_stderr"]
    assert len(out["hessian_density"]["grid"]) == len(out["hessian_density"]["density"]) == 64
    for kind in ("full", "subspace"):
        assert out[f"sharpness_{kind}_eps1e-03"] >= out[f"sharpness_{kind}_eps5e-04"] >= 0
    # The first EMA update is bias-corrected to the raw estimate itself.
    np.testing.assert_allclose(out["noise_scale_simple_ema"], out["noise_scale_simple"], rtol=1e-12)
    np.testing.assert_allclose(out["trace_sigma"] / out["grad_norm_sq"], out["noise_scale_simple"], rtol=1e-12)
    assert out["two_over_lr"] == 4.0 and out["curvature_subset_size"] == 96

    # Each probe family has its own folded key: the top eigenvalues (shared with the density by
    # default: its SLQ runs, key fold 4) reproduce alone.
    alone = hs.slq_lanczos(
        loss_fn, problem.params, problem.data, jax.random.fold_in(key, 4), k=3, num_iters=30, num_probes=2,
        chunk_size=40
    )
    np.testing.assert_allclose(out["hessian_eigenvalues"], np.asarray(alone.eigenvalues), rtol=1e-12)

    # Disabled parts leave no keys; the EMA state carries over untouched.
    off = dataclasses.replace(cfg, hessian=False, density=False, sharpness=False, noise_scale=False)
    out2, ema2 = measure(off, loss_fn, problem.params, problem.data, key, state=ema)
    assert ema2 == ema
    assert set(out2) == {"curvature_subset_size", "curvature_hvps", "curvature_seconds"} and out2["curvature_hvps"] == 0
