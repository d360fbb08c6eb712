"""Simple gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018).

Definitions, for a data set of N examples with per-example gradients g_i of the loss at fixed
parameters: G = (1/N) sum_i g_i and Sigma = (1/(N-1)) sum_i (g_i - G)(g_i - G)^T (the
(N-1)-normalised per-example covariance; ``exact_noise_scale`` computes both from every g_i).

Two-batch estimators (App. A). A draw takes ``num_small`` disjoint microbatches of
``small_batch`` examples (one random permutation, so each is a sample WITHOUT replacement);
|G_small|^2 is the mean of their squared gradient norms and G_big their mean
(B_big = num_small * small_batch). Without replacement from N examples,
E|G_B|^2 = |G|^2 + tr(Sigma) (1/B - 1/N), so

    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
    |G|^2     ~ |G_big|^2 - tr(Sigma)~ (1/B_big - 1/N)

are both unbiased (the finite-N term 1/N, dropped by the paper's i.i.d. formulas, makes |G|^2
low by tr(Sigma)/N otherwise: 10-15% when B_simple ~ N/8). Their ratio is not unbiased: average
numerator and denominator over draws, then divide (``summarize``), which also gives standard
errors (draws are independent) and a delta-method interval on the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bench.metrics.hessian import Batch, LossFn, PyTree, jit_loss, num_examples

__all__ = ["NoiseScaleEstimate", "NoiseScaleSummary", "exact_noise_scale", "gradient_noise_scale",
           "moments_noise_scale", "per_example_moments", "ratio_interval", "summarize",
           "two_batch_estimates"]


class NoiseScaleEstimate(NamedTuple):
    grad_norm_sq: jax.Array  # unbiased estimate of |G|^2
    trace_sigma: jax.Array  # unbiased estimate of tr(Sigma) (per-example covariance)
    b_simple: jax.Array  # trace_sigma / grad_norm_sq for this draw alone
    g_small_sq: jax.Array  # mean over microbatches of |G_small|^2
    g_big_sq: jax.Array  # |G_big|^2


def two_batch_estimates(g_small_sq: jax.Array, g_big_sq: jax.Array, b_small: int, b_big: int,
                        n: float = math.inf) -> tuple[jax.Array, jax.Array]:
    """(|G|^2, tr(Sigma)) from squared gradient norms at two batch sizes drawn without
    replacement from ``n`` examples (``inf``: the paper's i.i.d. formulas)."""
    trace_sigma = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    grad_norm_sq = g_big_sq - trace_sigma * (1.0 / b_big - 1.0 / n)
    return grad_norm_sq, trace_sigma


@jit_loss("small_batch", "num_small")
def gradient_noise_scale(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    small_batch: int,
    num_small: int,
) -> NoiseScaleEstimate:
    """One two-batch estimate from ``num_small`` disjoint microbatches of ``data`` (finite-N
    corrected for the N examples of ``data``)."""
    n = num_examples(data)
    b_big = num_small * small_batch
    if num_small < 2 or b_big > n:
        raise ValueError(f"need num_small >= 2 and num_small * small_batch <= N={n}, got {num_small} x {small_batch}")
    idx = jax.random.permutation(key, n)[:b_big].reshape(num_small, small_batch)
    batches = jax.tree.map(lambda a: a[idx], data)
    grads = jax.vmap(lambda b: ravel_pytree(jax.grad(loss_fn)(params, b))[0])(batches)
    g_small_sq = jnp.mean(jnp.sum(grads**2, axis=1))
    g_big_sq = jnp.sum(jnp.mean(grads, axis=0) ** 2)
    grad_norm_sq, trace_sigma = two_batch_estimates(g_small_sq, g_big_sq, small_batch, b_big, n)
    return NoiseScaleEstimate(grad_norm_sq, trace_sigma, trace_sigma / grad_norm_sq, g_small_sq, g_big_sq)


class NoiseScaleSummary(NamedTuple):
    """Means over independent draws, their standard errors and covariance, and B = tr / |G|^2."""

    grad_norm_sq: float
    trace_sigma: float
    b_simple: float  # ratio of the means
    grad_norm_sq_var: float  # variance of the MEAN (NaN for one draw)
    trace_sigma_var: float
    covariance: float  # of the two means
    draws: int

    @property
    def b_simple_stderr(self) -> float:
        return ratio_stderr(self.grad_norm_sq, self.trace_sigma, self.grad_norm_sq_var,
                            self.trace_sigma_var, self.covariance)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Delta-method interval on B_simple, Student-t with draws - 1 degrees of freedom."""
        return ratio_interval(self.b_simple, self.b_simple_stderr, self.draws - 1, level)


def summarize(grad_norm_sq: Sequence[float], trace_sigma: Sequence[float]) -> NoiseScaleSummary:
    g = np.asarray(grad_norm_sq, np.float64)
    t = np.asarray(trace_sigma, np.float64)
    k = len(g)
    if k > 1:
        cov = np.cov(np.stack([g, t]), ddof=1) / k
        var_g, var_t, cov_gt = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    else:
        var_g = var_t = cov_gt = math.nan
    mg, mt = float(g.mean()), float(t.mean())
    return NoiseScaleSummary(mg, mt, mt / mg if mg != 0 else math.nan, var_g, var_t, cov_gt, k)


def ratio_stderr(g: float, t: float, var_g: float, var_t: float, cov: float) -> float:
    """Delta-method standard error of t / g."""
    if g == 0:
        return math.nan
    b = t / g
    return math.sqrt(max(var_t - 2 * b * cov + b * b * var_g, 0.0)) / abs(g)


def ratio_interval(value: float, stderr: float, dof: float, level: float = 0.95) -> tuple[float, float]:
    """value -/+ t_{(1+level)/2, dof} stderr (NaNs when dof < 1 or the stderr is unknown)."""
    if not (dof >= 1 and math.isfinite(stderr) and math.isfinite(value)):
        return math.nan, math.nan
    import scipy.stats  # here, not at module level: 1-2 s of every training process's start-up

    half = float(scipy.stats.t.ppf(0.5 + level / 2, dof)) * stderr
    return value - half, value + half


def _grad_moments(loss_fn: LossFn, params: PyTree, batch: Batch) -> tuple[PyTree, PyTree]:
    """(sum_i g_i, sum_i |g_i|^2) over the examples of ``batch``, per parameter leaf (per-example
    gradients, vmapped): the first params-shaped, the second a scalar per leaf."""
    def one(example: Batch) -> PyTree:
        single = jax.tree.map(lambda a: a[None], example)
        return jax.grad(loss_fn)(params, single)
    grads = jax.vmap(one)(batch)
    return (jax.tree.map(lambda g: jnp.sum(g, axis=0), grads),
            jax.tree.map(lambda g: jnp.sum(g**2), grads))


_moments = jit_loss()(_grad_moments)


def per_example_moments(loss_fn: LossFn, params: PyTree, data: Batch, *,
                        chunk_size: int | None = 256) -> tuple[PyTree, PyTree]:
    """(sum_i g_i, sum_i |g_i|^2) over every example of ``data``, per parameter leaf, from the
    per-example gradients ``chunk_size`` examples at a time (memory chunk_size x P; one compiled
    program per chunk shape). ``loss_fn`` is a per-batch MEAN loss, so a batch of one is one
    example's loss. Any group of leaves (a layer, the norm layers) sums its leaves' moments."""
    n = num_examples(data)
    chunk = n if chunk_size is None else max(1, min(int(chunk_size), n))
    total = sq = None
    for start in range(0, n, chunk):
        part = jax.tree.map(lambda a: a[start:start + chunk], data)
        s, q = _moments(loss_fn, params, part)
        total, sq = (s, q) if total is None else (jax.tree.map(jnp.add, total, s), jax.tree.map(jnp.add, sq, q))
    return total, sq


def moments_noise_scale(total: PyTree, sq: PyTree, n: int) -> NoiseScaleEstimate:
    """|G|^2, tr(Sigma) and B_simple of ``n`` examples from their summed gradients and summed
    squared gradient norms (all leaves of ``total`` and ``sq`` together)."""
    grad_norm_sq = sum(jnp.sum((t / n) ** 2) for t in jax.tree.leaves(total))
    sq_sum = sum(jax.tree.leaves(sq))
    trace_sigma = (sq_sum - n * grad_norm_sq) / (n - 1)
    return NoiseScaleEstimate(grad_norm_sq, trace_sigma, trace_sigma / grad_norm_sq, sq_sum / n, grad_norm_sq)


def exact_noise_scale(loss_fn: LossFn, params: PyTree, data: Batch, *,
                      chunk_size: int | None = 256) -> NoiseScaleEstimate:
    """|G|^2, tr(Sigma) and B_simple of ``data`` exactly, from every per-example gradient
    (``per_example_moments``). ``g_small_sq``/``g_big_sq`` hold the mean |g_i|^2 and |G|^2."""
    total, sq = per_example_moments(loss_fn, params, data, chunk_size=chunk_size)
    return moments_noise_scale(total, sq, num_examples(data))
