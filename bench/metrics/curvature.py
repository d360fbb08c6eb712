"""Curvature and gradient-noise measurements at one point of training (issue 3).

The training loop calls::

    metrics, ema_state = measure(cfg, loss_fn, params, data, key, lr=lr, ema_state=ema_state)

``loss_fn(params, batch)`` is the MEAN loss of ``batch`` (model in eval mode);
``data = {"x": [N, ...], "y": [N]}`` is the training set, possibly sharded along
axis 0. Curvature (Hessian, density, sharpness) is measured on one subset of
``cfg.subset_size`` examples drawn with ``fold_in(key, 0)`` (the whole set when
``subset_size`` is falsy or >= N): pass the same ``key`` at every measurement to
follow one fixed subset through training. The noise scale samples from all of
``data``. Each probe family has its own folded key, so each piece reproduces alone.
The loop owns the cadence (``cfg.every``); ``measure`` ignores it.

Output: a flat dict of JSON-able values (floats, ints, lists, one nested dict;
a non-finite value is stored as None). Keys of disabled parts are absent.

``cfg.hessian`` (Lanczos on the subset; power iteration if ``power_iters > 0``;
Hutchinson if ``hutchinson_probes > 0``):
- ``hessian_top_eigenvalue``: largest Ritz value (algebraically largest eigenvalue)
- ``hessian_eigenvalues``: top ``top_k`` Ritz values, descending
- ``hessian_lanczos_residual``: ||H u - theta u|| of the top Ritz pair (convergence)
- ``hessian_lanczos_residuals``: the same for each of the top ``top_k`` pairs
- ``power_top_eigenvalue``: power-iteration estimate (largest MAGNITUDE eigenvalue)
- ``power_residual``: ||H v - lambda v|| of the power-iteration pair
- ``hessian_trace``, ``hessian_trace_stderr``: Hutchinson mean and standard error
``cfg.density``:
- ``hessian_density``: {"grid", "density", "sigma", "nodes", "weights"}, SLQ with
  ``slq_probes`` probes x ``lanczos_iters`` steps on ``density_grid`` points
``cfg.sharpness`` (Keskar et al. 2017, ``sharpness_iters`` L-BFGS-B iterations):
- ``sharpness_loss``: the loss f(x) on the subset that phi is relative to
- ``sharpness_full_eps{eps}``: full-space phi, e.g. ``sharpness_full_eps1e-03``
- ``sharpness_subspace_eps{eps}``: phi in one random ``sharpness_subspace_dim``-dim
  subspace (shared by all eps; absent when that dim is 0)
``cfg.noise_scale`` (McCandlish et al. 2018, ``noise_num_small`` microbatches of
``noise_small_batch``):
- ``grad_norm_sq``, ``trace_sigma``: this draw's unbiased |G|^2 and tr(Sigma)
- ``noise_scale_simple``: trace_sigma / grad_norm_sq of this draw (noisy)
- ``grad_norm_sq_ema``, ``trace_sigma_ema``: bias-corrected EMAs (decay ``noise_ema``)
- ``noise_scale_simple_ema``: trace_sigma_ema / grad_norm_sq_ema
``cfg.preconditioned`` and a ``preconditioner`` P (Adam's, bench.metrics.preconditioned):
- ``preconditioned_top_eigenvalue``: lambda_max(P^-1 H) on the subset (Cohen et al. 2022),
  Lanczos with ``lanczos_iters`` steps on P^-1/2 H P^-1/2 (``lanczos_iters`` + 1 HVPs)
- ``preconditioned_lanczos_residual``: its Ritz pair's residual (in the symmetric form)
``cfg.batch_sharpness_batches`` > 0 and ``batch_size`` (Andreyev & Beneventano 2024):
- ``batch_sharpness``, ``batch_sharpness_stderr``: mean and standard error over that many
  minibatches of ``batch_size`` examples drawn from all of ``data`` of g_B^T H_B g_B / |g_B|^2
  (one HVP of ``batch_size`` examples per minibatch; a single draw when ``batch_size`` >= N)
- ``batch_sharpness_batches``, ``batch_sharpness_batch_size``: draws and minibatch size used
Always: ``curvature_subset_size`` (examples used for curvature),
``curvature_seconds`` (wall time of this call); ``two_over_lr`` = 2 / lr when
``lr`` is given (the edge-of-stability threshold of Cohen et al. 2021).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bench.metrics import noise_scale as ns
from bench.metrics.batch_sharpness import batch_sharpness
from bench.metrics.hessian import (
    Batch,
    LossFn,
    PyTree,
    hutchinson_trace,
    lanczos_top_eigenvalues,
    num_examples,
    power_iteration_top_eigenvalue,
    spectral_density,
)
from bench.metrics.preconditioned import preconditioned_top_eigenvalues
from bench.metrics.sharpness import keskar_sharpness, random_subspace

__all__ = ["CurvatureConfig", "eps_tag", "measure", "select_subset"]

# Constants folded into the measurement key, one per probe family.
KEY_SUBSET, KEY_LANCZOS, KEY_POWER, KEY_HUTCHINSON, KEY_SLQ, KEY_SUBSPACE, KEY_SHARPNESS, KEY_NOISE = range(8)
KEY_PRECONDITIONED, KEY_BATCH_SHARPNESS = 8, 9


class CurvatureConfig(Protocol):
    """The attributes ``measure`` reads (the loop's config dataclass has them)."""

    hessian: bool
    every: int | None
    subset_size: int
    chunk_size: int
    top_k: int
    lanczos_iters: int
    power_iters: int
    hutchinson_probes: int
    density: bool
    slq_probes: int
    density_grid: int
    sharpness: bool
    sharpness_eps: Sequence[float]
    sharpness_subspace_dim: int
    sharpness_iters: int
    noise_scale: bool
    noise_small_batch: int
    noise_num_small: int
    noise_ema: float
    preconditioned: bool
    batch_sharpness_batches: int


def select_subset(data: Batch, key: jax.Array, size: int | None) -> Batch:
    """``size`` examples drawn without replacement (kept in index order); all if falsy or >= N."""
    n = num_examples(data)
    if not size or size >= n:
        return data
    idx = jnp.sort(jax.random.permutation(key, n)[:size])
    return jax.tree.map(lambda a: a[idx], data)


def eps_tag(eps: float) -> str:
    """Shortest exact scientific form: 1e-3 -> '1e-03', 2.5e-4 -> '2.5e-04'."""
    for digits in range(8):
        tag = f"{eps:.{digits}e}"
        if float(tag) == eps:
            return tag
    return repr(eps)


def _num(x: Any) -> float | None:
    """A host float, or None when not finite (keeps records valid JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _nums(xs: Any) -> list[float | None]:
    return [_num(x) for x in np.asarray(xs).reshape(-1)]


def _hessian(cfg: CurvatureConfig, loss_fn: LossFn, params: PyTree, data: Batch, key: jax.Array,
             rolled: bool | None) -> dict:
    chunk = cfg.chunk_size or None
    res = lanczos_top_eigenvalues(
        loss_fn,
        params,
        data,
        jax.random.fold_in(key, KEY_LANCZOS),
        k=cfg.top_k,
        num_iters=cfg.lanczos_iters,
        chunk_size=chunk,
        rolled=rolled,
    )
    out: dict[str, Any] = {
        "hessian_top_eigenvalue": _num(res.eigenvalues[0]),
        "hessian_eigenvalues": _nums(res.eigenvalues),
        "hessian_lanczos_residual": _num(res.residuals[0]),
        "hessian_lanczos_residuals": _nums(res.residuals),
    }
    if cfg.power_iters > 0:
        eig, resid = power_iteration_top_eigenvalue(
            loss_fn, params, data, jax.random.fold_in(key, KEY_POWER), num_iters=cfg.power_iters, chunk_size=chunk,
            rolled=rolled,
        )
        out["power_top_eigenvalue"], out["power_residual"] = _num(eig), _num(resid)
    if cfg.hutchinson_probes > 0:
        mean, stderr = hutchinson_trace(
            loss_fn,
            params,
            data,
            jax.random.fold_in(key, KEY_HUTCHINSON),
            num_probes=cfg.hutchinson_probes,
            chunk_size=chunk,
            rolled=rolled,
        )
        out["hessian_trace"], out["hessian_trace_stderr"] = _num(mean), _num(stderr)
    return out


def _sharpness(cfg: CurvatureConfig, loss_fn: LossFn, params: PyTree, data: Batch, key: jax.Array,
               rolled: bool | None) -> dict:
    chunk = cfg.chunk_size or None
    out: dict[str, Any] = {}
    subspace = None
    if cfg.sharpness_subspace_dim:
        flat = ravel_pytree(params)[0]
        subspace = random_subspace(jax.random.fold_in(key, KEY_SUBSPACE), flat.size, cfg.sharpness_subspace_dim, flat.dtype)
    for i, eps in enumerate(cfg.sharpness_eps):
        tag = eps_tag(float(eps))
        for kind, a in (("full", None), ("subspace", subspace)):
            if kind == "subspace" and a is None:
                continue
            k = jax.random.fold_in(jax.random.fold_in(key, KEY_SHARPNESS), 2 * i + (kind == "subspace"))
            res = keskar_sharpness(
                loss_fn, params, data, k, eps=float(eps), subspace=a, max_iter=cfg.sharpness_iters, chunk_size=chunk,
                rolled=rolled,
            )
            out[f"sharpness_{kind}_eps{tag}"] = _num(res.phi)
            out["sharpness_loss"] = _num(res.loss)
    return out


def _noise(
    cfg: CurvatureConfig, loss_fn: LossFn, params: PyTree, data: Batch, key: jax.Array, ema_state: ns.NoiseScaleEMA | None
) -> tuple[dict, ns.NoiseScaleEMA]:
    est = ns.gradient_noise_scale(
        loss_fn,
        params,
        data,
        jax.random.fold_in(key, KEY_NOISE),
        small_batch=cfg.noise_small_batch,
        num_small=cfg.noise_num_small,
    )
    g2, tr = float(est.grad_norm_sq), float(est.trace_sigma)
    ema_state = ns.update(ema_state, g2, tr, decay=cfg.noise_ema)
    out = {
        "grad_norm_sq": _num(g2),
        "trace_sigma": _num(tr),
        "noise_scale_simple": _num(tr / g2) if g2 != 0 else None,
        "grad_norm_sq_ema": _num(ema_state.smoothed_grad_norm_sq),
        "trace_sigma_ema": _num(ema_state.smoothed_trace_sigma),
        "noise_scale_simple_ema": _num(ema_state.b_simple) if ema_state.grad_norm_sq != 0 else None,
    }
    return out, ema_state


def _modern(cfg: CurvatureConfig, loss_fn: LossFn, params: PyTree, subset: Batch, data: Batch, key: jax.Array,
            rolled: bool | None, preconditioner: PyTree | None, batch_size: int | None) -> dict:
    """Adam's preconditioned sharpness (on the subset) and batch sharpness (minibatches of all data)."""
    out: dict[str, Any] = {}
    if getattr(cfg, "preconditioned", False) and preconditioner is not None:
        res = preconditioned_top_eigenvalues(
            loss_fn, params, subset, jax.random.fold_in(key, KEY_PRECONDITIONED), preconditioner, k=1,
            num_iters=cfg.lanczos_iters, chunk_size=cfg.chunk_size or None, rolled=rolled)
        out["preconditioned_top_eigenvalue"] = _num(res.eigenvalues[0])
        out["preconditioned_lanczos_residual"] = _num(res.residuals[0])
    draws = getattr(cfg, "batch_sharpness_batches", 0)
    if draws and batch_size:
        bs = batch_sharpness(loss_fn, params, data, jax.random.fold_in(key, KEY_BATCH_SHARPNESS),
                             batch_size=batch_size, num_batches=draws)
        out.update(batch_sharpness=_num(bs.mean), batch_sharpness_stderr=_num(bs.stderr),
                   batch_sharpness_batches=len(bs.samples),
                   batch_sharpness_batch_size=min(int(batch_size), num_examples(data)))
    return out


def measure(
    cfg: CurvatureConfig,
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    lr: float | None = None,
    ema_state: ns.NoiseScaleEMA | None = None,
    rolled: bool | None = None,
    preconditioner: PyTree | None = None,
    batch_size: int | None = None,
) -> tuple[dict[str, Any], ns.NoiseScaleEMA | None]:
    """Measure the enabled curvature / noise-scale metrics; see the module docstring.

    Returns (flat JSON-able dict, new noise-scale EMA state); the state is returned
    unchanged when the noise scale is disabled. ``rolled``: loop style (bench.metrics.operator;
    default by backend), same numbers up to round-off. ``preconditioner``: Adam's P (params-shaped)
    for ``cfg.preconditioned``; ``batch_size``: the run's minibatch size for batch sharpness.
    """
    start = time.perf_counter()
    subset = select_subset(data, jax.random.fold_in(key, KEY_SUBSET), cfg.subset_size)
    out: dict[str, Any] = {"curvature_subset_size": num_examples(subset)}
    if cfg.hessian:
        out.update(_hessian(cfg, loss_fn, params, subset, key, rolled))
    if cfg.density:
        out["hessian_density"] = spectral_density(
            loss_fn,
            params,
            subset,
            jax.random.fold_in(key, KEY_SLQ),
            num_probes=cfg.slq_probes,
            num_iters=cfg.lanczos_iters,
            grid_size=cfg.density_grid,
            chunk_size=cfg.chunk_size or None,
            rolled=rolled,
        )
    if cfg.sharpness:
        out.update(_sharpness(cfg, loss_fn, params, subset, key, rolled))
    if cfg.noise_scale:
        noise, ema_state = _noise(cfg, loss_fn, params, data, key, ema_state)
        out.update(noise)
    out.update(_modern(cfg, loss_fn, params, subset, data, key, rolled, preconditioner, batch_size))
    if lr is not None:
        out["two_over_lr"] = 2.0 / lr
    out["curvature_seconds"] = time.perf_counter() - start
    return out, ema_state
