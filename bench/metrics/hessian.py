"""Matrix-free Hessian probes of a full-data mean loss.

All estimators take ``loss_fn(params, batch) -> scalar`` (a per-batch MEAN loss),
``params`` (any pytree) and ``data = {"x": [N, ...], "y": [N]}`` (possibly sharded
along axis 0 over a mesh axis "data"), and act on the Hessian of

    L(params) = (1 / N) * sum_i loss(params, example_i)

through :class:`bench.metrics.operator.HessianOperator` (forward-over-reverse HVPs summed
over chunks of ``chunk_size`` examples; exact across chunk sizes and device counts up to
round-off). ``rolled`` picks how the loops run (default: ``lax`` loops in one jitted program
off CPU, host-driven loops of cached jitted programs on CPU; see bench.metrics.operator);
both give the same numbers up to float round-off.

Cost in HVPs (P = number of parameters, m = min(num_iters, P)):
- ``lanczos_top_eigenvalues``: m + k (k residuals);
- ``power_iteration_top_eigenvalue``: 1 + (iterations run, <= num_iters) + 1 (residual);
- ``hutchinson_trace``: num_probes;  ``slq_ritz`` / ``spectral_density``: num_probes * m;
- ``slq_lanczos`` (the suite's default): num_probes * m + k, the density and the top-k together.

Lanczos is written out here (``lanczos``: full reorthogonalisation, restart on
breakdown) rather than taken from ``matfree.decomp.tridiag_sym``: matfree 0.6
divides by a zero residual when the Krylov space is exhausted (an operator with
fewer distinct eigenvalues than iterations), which silently corrupts every later
Lanczos vector and the SLQ nodes. Hutchinson uses matfree's Rademacher sampler and
trace integrand, looped over probes (not matfree's ``vmap``) so memory stays at one
HVP whatever the probe count. Lanczos stores its m + 1 basis vectors: O(m P) memory.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from matfree import stochtrace

from bench.metrics.operator import (
    Batch,
    HessianOperator,
    LossFn,
    PyTree,
    chunked_mean,
    estimator,
    jit_loss,
    lift_closure,
    num_examples,
    rolled_loops,
)

__all__ = [
    "HessianOperator",
    "LanczosResult",
    "SLQResult",
    "chunked_mean",
    "density_from_ritz",
    "density_record",
    "hutchinson_trace",
    "hvp",
    "jit_loss",
    "lanczos",
    "lanczos_from_key",
    "lift_closure",
    "lanczos_top_eigenvalues",
    "num_examples",
    "power_iteration_top_eigenvalue",
    "ritz",
    "rolled_loops",
    "slq_lanczos",
    "slq_ritz",
    "spectral_density",
]


@estimator()
def hvp(op: HessianOperator, v: PyTree) -> PyTree:
    """Hessian-vector product H v of the full-data mean loss (same pytree as ``v``)."""
    return op.hvp(v)


class LanczosResult(NamedTuple):
    """Top-k Ritz pairs of a Lanczos run (``eigenvalues`` descending)."""

    eigenvalues: jax.Array  # [k]
    residuals: jax.Array  # [k], ||H u - theta u|| for the unit Ritz vectors u (explicit HVPs)
    ritz_values: jax.Array  # [num_iters], all Ritz values, ascending
    eigenvectors: jax.Array  # [k, P], flat unit Ritz vectors


def _orthogonalise(w: jax.Array, q: jax.Array) -> jax.Array:
    w = w - q.T @ (q @ w)
    return w - q.T @ (q @ w)


def _lanczos_step(j: jax.Array, v: jax.Array, w: jax.Array, state: tuple, key: jax.Array) -> tuple:
    """One Lanczos step: v = q_j, w = H q_j -> (q_{j+1}, state with alpha_j, beta_j, q_{j+1})."""
    q, alpha, beta, scale = state
    tol = 100 * jnp.finfo(q.dtype).eps
    a = jnp.vdot(v, w)
    w = _orthogonalise(w, q)  # removes a q_j + b q_{j-1} and any round-off drift
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(a), b))
    broke = b <= tol * scale

    def restart(j: jax.Array, q: jax.Array) -> jax.Array:
        r = _orthogonalise(jax.random.normal(jax.random.fold_in(key, j), (q.shape[1],), q.dtype), q)
        return r / jnp.linalg.norm(r)

    nxt = jax.lax.cond(broke, restart, lambda j_, q_: w / b, j, q)
    state = (q.at[j + 1].set(nxt), alpha.at[j].set(a), beta.at[j].set(jnp.where(broke, 0.0, b)), scale)
    return nxt, state


def _lanczos_start(v0: jax.Array, *, m: int) -> tuple[jax.Array, tuple]:
    q0 = v0 / jnp.linalg.norm(v0)
    size, dtype = v0.shape[0], v0.dtype
    state = (jnp.zeros((m + 1, size), dtype).at[0].set(q0), jnp.zeros(m, dtype), jnp.zeros(m, dtype),
             jnp.zeros((), dtype))
    return q0, state


def _lanczos_basis(q: jax.Array, alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return q[:-1], alpha, beta


def lanczos(op: HessianOperator, v0: jax.Array, num_iters: int, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lanczos with full reorthogonalisation: (Q [m, P] orthonormal rows, alpha [m], beta [m]).

    T = tridiag(beta[:-1], alpha, beta[:-1]) = Q H Q^T; beta[-1] is the norm of the
    final residual (H Q^T = Q^T T + beta[-1] q_{m+1} e_m^T). Each new vector is
    orthogonalised twice against all previous ones (classical Gram-Schmidt). On breakdown
    (beta <= 100 eps |T|: the Krylov space is H-invariant, as for an operator with
    fewer than m distinct eigenvalues) the iteration restarts from a random vector
    orthogonal to Q with beta = 0, so T stays exactly Q H Q^T (block diagonal) and
    the first block still carries all of v0's quadrature weight. m HVPs.
    """
    q0, state = op.call(_lanczos_start, v0, m=num_iters)
    _, (q, alpha, beta, _) = op.fori(num_iters, _lanczos_step, q0, state, key)
    return op.call(_lanczos_basis, q, alpha, beta)


def _gaussian_start(flat: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    start_key, restart_key = jax.random.split(key)
    return jax.random.normal(start_key, flat.shape, flat.dtype), restart_key


def lanczos_from_key(op: HessianOperator, flat: jax.Array, num_iters: int, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``lanczos`` from the Gaussian start vector and restart key that ``key`` determines, as
    ``lanczos_top_eigenvalues`` uses them (the same key gives the same Krylov basis)."""
    v0, restart_key = op.call(_gaussian_start, flat, key)
    return lanczos(op, v0, num_iters, restart_key)


def ritz(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of tridiag(beta, alpha, beta): (values ascending, vectors [m, m])."""
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    return jnp.linalg.eigh(t)


def _ravel(params: PyTree) -> jax.Array:
    return ravel_pytree(params)[0]


def _top_ritz(q: jax.Array, alpha: jax.Array, beta: jax.Array, *, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    theta, y = ritz(alpha, beta[:-1])
    top, vecs = theta[::-1][:k], y[:, ::-1][:, :k].T @ q  # [k], [k, P]
    return top, vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True), theta


def _residual_norms(hv: jax.Array, values: jax.Array, vecs: jax.Array) -> jax.Array:
    return jnp.linalg.norm(hv - values[..., None] * vecs, axis=-1)


@estimator("k", "num_iters", hoist=True)
def lanczos_top_eigenvalues(op: HessianOperator, key: jax.Array, *, k: int = 1, num_iters: int = 30) -> LanczosResult:
    """Top-k Hessian eigenvalues by Lanczos (full reorthogonalisation, Gaussian start).

    Costs ``min(num_iters, P)`` HVPs plus k for the residuals ||H u - theta u||,
    which tell whether each Ritz pair has converged: the nearest eigenvalue of H
    lies within r of theta. They are computed with explicit HVPs, not as
    beta_m |y_m| from the Lanczos relation, which underflows to 0 for a converged
    pair and hides the round-off floor (~1e-6 relative in float32).
    """
    flat = op.call(_ravel, op.params)
    m = min(num_iters, flat.size)
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= min(num_iters, num_params) = {m}, got k={k}")
    q, alpha, beta = lanczos_from_key(op, flat, m, key)
    top, vecs, theta = op.call(_top_ritz, q, alpha, beta, k=k)
    residuals = op.call(_residual_norms, op.map(op.matvec, vecs), top, vecs)
    return LanczosResult(top, residuals, theta, vecs)


def _normalize(x: jax.Array) -> jax.Array:
    return optax.tree.scale(1.0 / optax.tree.norm(x), x)  # as optax.power_iteration


def _power_start(flat: jax.Array, key: jax.Array) -> jax.Array:
    return _normalize(jax.random.normal(key, flat.shape, flat.dtype))


def _power_state(v0: jax.Array, z0: jax.Array, num_iters: jax.Array, tol: jax.Array) -> tuple[jax.Array, tuple]:
    limits = (jnp.asarray(num_iters), jnp.asarray(tol, v0.dtype))
    return _normalize(z0), (v0, z0, jnp.asarray(0.0, v0.dtype), jnp.asarray(0), limits)


def _power_step(j: jax.Array, v: jax.Array, w: jax.Array, state: tuple) -> tuple:
    """v = the current unit vector, w = H v -> (next vector, (v, w, v.w, count + 1, limits))."""
    _, _, _, count, limits = state
    return _normalize(w), (v, w, optax.tree.vdot(v, w), count + 1, limits)


def _power_running(state: tuple) -> jax.Array:
    """optax.power_iteration's condition: not converged and under the iteration limit."""
    eigvec, z, eig, count, (num_iters, tol) = state
    residual = optax.tree.norm(optax.tree.sub(z, optax.tree.scale(eig, eigvec)))
    return ~(jnp.abs(residual / eig) < tol) & (count < num_iters)


def _power_result(state: tuple) -> tuple[jax.Array, jax.Array]:
    _, z, eig, _, _ = state
    return eig, _normalize(z)


@estimator("num_iters", hoist=True)
def power_iteration_top_eigenvalue(op: HessianOperator, key: jax.Array, *, num_iters: int = 100,
                                   tol: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """(eigenvalue, residual ||H v - lambda v||), ``optax.power_iteration``'s algorithm.

    This is the LARGEST-MAGNITUDE eigenvalue (negative if the most negative
    eigenvalue dominates), unlike Lanczos' algebraically largest. Stops after
    ``num_iters`` iterations or when the relative change is below ``tol``.
    """
    v0 = op.call(_power_start, op.call(_ravel, op.params), key)
    z0 = op.matvec(v0)
    v, state = op.call(_power_state, v0, z0, num_iters, tol)
    _, state = op.while_(_power_running, _power_step, v, state)
    eig, vec = op.call(_power_result, state)
    return eig, op.call(_residual_norms, op.matvec(vec), eig, vec)


def _signs(flat: jax.Array, key: jax.Array, *, num: int) -> jax.Array:
    return stochtrace.sampler_signs(flat, num=num)(key)


def _trace_sample(v: jax.Array, hv: jax.Array) -> jax.Array:
    return stochtrace.monte_carlo_trace()(lambda _: hv, v)  # v . Hv, as matfree's integrand


def _mean_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    num = samples.shape[0]
    stderr = jnp.std(samples, ddof=1) / math.sqrt(num) if num > 1 else jnp.nan
    return jnp.mean(samples), jnp.asarray(stderr, samples.dtype)


@estimator("num_probes", hoist=True)
def hutchinson_trace(op: HessianOperator, key: jax.Array, *, num_probes: int = 100) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean, standard error).

    The standard error is std(ddof=1) / sqrt(num_probes) (NaN for one probe).
    """
    probes = op.call(_signs, op.call(_ravel, op.params), key, num=num_probes)
    samples = op.map(lambda v: op.call(_trace_sample, v, op.matvec(v)), probes)
    return op.call(_mean_stderr, samples)


def _slq_probes(flat: jax.Array, key: jax.Array, *, num: int) -> tuple[jax.Array, jax.Array]:
    probe_key, restart_key = jax.random.split(key)
    return _signs(flat, probe_key, num=num), restart_key


def _nodes_weights(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    theta, y = ritz(alpha, beta[:-1])
    return theta, y[0, :] ** 2


@estimator("num_probes", "num_iters", hoist=True)
def slq_ritz(op: HessianOperator, key: jax.Array, *, num_probes: int = 1, num_iters: int = 30) -> tuple[jax.Array, jax.Array]:
    """Stochastic Lanczos quadrature nodes and weights, each [num_probes, m].

    Per probe v (Rademacher, normalised), Lanczos gives T = Y diag(theta) Y^T; the
    nodes are theta and the weights Y[0, :]^2 (they sum to 1), so
    sum_j w_j delta(t - theta_j) approximates the spectral density of H
    (Ghorbani et al. 2019; Ubaru et al. 2017).
    """
    flat = op.call(_ravel, op.params)
    m = min(num_iters, flat.size)
    probes, restart_key = op.call(_slq_probes, flat, key, num=num_probes)

    def one(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, alpha, beta = lanczos(op, v, m, restart_key)
        return op.call(_nodes_weights, alpha, beta)

    return op.map(one, probes)


class SLQResult(NamedTuple):
    """SLQ quadrature plus the top-k Ritz pairs its Lanczos runs give for free.

    ``nodes`` / ``weights`` are ``slq_ritz``'s (same key, same numbers). Every Ritz value of a
    Lanczos run is at most the top eigenvalue (Cauchy interlacing), so the run whose top Ritz
    value is largest (``probe``) gives the best lower bound; its top-k Ritz pairs are reported,
    with residuals ||H u - theta u|| from k explicit HVPs (the nearest eigenvalue lies within
    r of theta), exactly as ``lanczos_top_eigenvalues`` states its convergence.
    """

    nodes: jax.Array  # [num_probes, m]
    weights: jax.Array  # [num_probes, m]
    eigenvalues: jax.Array  # [k], descending, of run ``probe``
    residuals: jax.Array  # [k]
    probe: jax.Array  # index of the run the top-k come from


def _best_run(tops: jax.Array, vecs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    best = jnp.argmax(tops[:, 0])
    return tops[best], vecs[best], best


@estimator("num_probes", "num_iters", "k", hoist=True)
def slq_lanczos(op: HessianOperator, key: jax.Array, *, num_probes: int = 1, num_iters: int = 30,
                k: int = 1) -> SLQResult:
    """``slq_ritz`` and the top-k Hessian eigenvalues from the same Lanczos runs: p m + k HVPs,
    where separate runs cost p m + m + k (``SLQResult`` says which pairs and how converged)."""
    flat = op.call(_ravel, op.params)
    m = min(num_iters, flat.size)
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= min(num_iters, num_params) = {m}, got k={k}")
    probes, restart_key = op.call(_slq_probes, flat, key, num=num_probes)

    def one(v: jax.Array) -> tuple[jax.Array, ...]:
        q, alpha, beta = lanczos(op, v, m, restart_key)
        nodes, weights = op.call(_nodes_weights, alpha, beta)
        top, vecs, _ = op.call(_top_ritz, q, alpha, beta, k=k)
        return nodes, weights, top, vecs

    nodes, weights, tops, vecs = op.map(one, probes)
    top, vecs, best = op.call(_best_run, tops, vecs)
    residuals = op.call(_residual_norms, op.map(op.matvec, vecs), top, vecs)
    return SLQResult(nodes, weights, top, residuals, best)


def density_from_ritz(
    nodes: np.ndarray,
    weights: np.ndarray,
    *,
    grid_size: int = 256,
    sigma_rel: float = 0.01,
    pad_sigmas: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian-smoothed SLQ density on a grid: (grid, density, sigma).

    sigma = sigma_rel * (max - min of the nodes); the grid spans
    [min - delta, max + delta] with delta = pad_sigmas * sigma, and the density is
    renormalised so its trapezoid integral over the grid is exactly 1.
    """
    nodes = np.asarray(nodes, np.float64).reshape(-1)
    weights = np.asarray(weights, np.float64).reshape(-1)
    lo, hi = float(nodes.min()), float(nodes.max())
    spread = max(hi - lo, 1e-3 * max(abs(lo), abs(hi)), 1e-12)
    sigma = sigma_rel * spread
    delta = pad_sigmas * sigma
    grid = np.linspace(lo - delta, hi + delta, grid_size)
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = kernel @ weights
    density = density / np.trapezoid(density, grid)
    return grid, density, sigma


def _round(x: np.ndarray, digits: int) -> list:
    """Round to ``digits`` significant digits, as nested Python floats."""
    x = np.asarray(x, np.float64)
    return [float(f"{v:.{digits}g}") for v in x.reshape(-1)] if x.ndim <= 1 else [_round(r, digits) for r in x]


def spectral_density(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    num_probes: int = 1,
    num_iters: int = 30,
    grid_size: int = 256,
    sigma_rel: float = 0.01,
    chunk_size: int | None = None,
    digits: int = 5,
    rolled: bool | None = None,
) -> dict[str, Any]:
    """Hessian spectral density by SLQ, as a compact JSON-able dict.

    Keys: ``grid`` and ``density`` (``grid_size`` points, integrating to 1 by the
    trapezoid rule), ``sigma`` (Gaussian kernel width), and the raw quadrature
    ``nodes`` / ``weights`` ([num_probes][m]), all rounded to ``digits`` significant
    digits.
    """
    nodes, weights = slq_ritz(
        loss_fn, params, data, key, num_probes=num_probes, num_iters=num_iters, chunk_size=chunk_size, rolled=rolled
    )
    return density_record(nodes, weights, grid_size=grid_size, sigma_rel=sigma_rel, digits=digits)


def density_record(nodes: Any, weights: Any, *, grid_size: int = 256, sigma_rel: float = 0.01,
                   digits: int = 5) -> dict[str, Any]:
    """``spectral_density``'s dict from SLQ nodes and weights already computed."""
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    grid, density, sigma = density_from_ritz(nodes, weights, grid_size=grid_size, sigma_rel=sigma_rel)
    return {
        "grid": _round(grid, digits),
        "density": _round(density, digits),
        "sigma": float(f"{sigma:.{digits}g}"),
        "nodes": _round(nodes, digits),
        "weights": _round(weights, digits),
    }
