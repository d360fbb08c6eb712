"""Keskar et al. (2017) epsilon-sharpness, in the full space and in a random subspace.

Definition (Keskar et al. 2017, Sec. 2.2.2, Eq. 3-4), for parameters x in R^n,
a matrix A in R^{n x p} and eps > 0:

    C_eps = { z in R^p : |z_i| <= eps * (|(A^+ x)_i| + 1),  i = 1..p }
    phi_{x,f}(eps, A) = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))

with A^+ the Moore-Penrose pseudo-inverse. Full space: A = I_n, so
C_eps = { y : |y_i| <= eps (|x_i| + 1) }. Random subspace: p = 100 in the paper.

What is implemented (choices the paper leaves open are marked *):
- f is the full-data mean loss over ``data`` (chunked, on device, in the params'
  dtype); the optimiser runs on the host in float64 (scipy L-BFGS-B with the box as
  bounds, ``maxiter`` = 10 as in the paper, gradient from jax: A^T grad f(x + A y)).
- * A has i.i.d. standard normal entries, drawn from ``key`` (the paper only says
  "random"); A^+ x is the least-squares solution of A u = x, computed in float64.
  A is held in memory: O(n p) floats.
- * The maximisation starts at a uniformly random point of the box (from ``key``),
  not at y = 0: at an exact minimum grad f(x) = 0 and L-BFGS-B started at 0 stops
  at once. ``init="zero"`` gives the y = 0 start.
- y = 0 is feasible, so the maximum is at least f(x); the reported phi uses
  max(f(x + A y*), f(x)) and is never negative.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bench.metrics.operator import Batch, HessianOperator, LossFn, PyTree, estimator, num_examples
from bench.metrics.registry import Cost, Float, Measurement, Metric, eps_tag, num
from bench.schema import frozen, param

__all__ = ["SHARPNESS", "SharpnessResult", "keskar_sharpness", "loss_and_grad_at", "random_subspace"]


class SharpnessResult(NamedTuple):
    phi: float  # 100 * (f_max - f0) / (1 + f0)
    loss: float  # f(x)
    loss_max: float  # best f(x + A y) found (>= f(x))
    iterations: int  # L-BFGS-B iterations used
    evaluations: int  # loss+gradient evaluations on the full data


def _value_and_grad_on_batch(loss: LossFn, params: PyTree, batch: Batch) -> tuple[jax.Array, PyTree]:
    return jax.value_and_grad(loss)(params, batch)


def _shifted(params: PyTree, a: jax.Array | None, y: jax.Array) -> PyTree:
    flat, unravel = ravel_pytree(params)
    delta = y if a is None else a @ y
    return unravel(flat + delta.astype(flat.dtype))


def _projected(grad: PyTree, a: jax.Array | None) -> jax.Array:
    g = ravel_pytree(grad)[0]
    return g if a is None else a.T @ g


@estimator()
def loss_and_grad_at(op: HessianOperator, a: jax.Array | None, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f(x + A y), A^T grad f(x + A y)) for the full-data mean loss; A = None means I.

    Called as ``loss_and_grad_at(loss_fn, params, data, a, y, chunk_size=..., rolled=...)``;
    one full-data gradient (chunked as the HVPs, see bench.metrics.operator).
    """
    value, grad = op.mean(_value_and_grad_on_batch, op.call(_shifted, op.params, a, y))
    return value, op.call(_projected, grad, a)


def random_subspace(key: jax.Array, num_params: int, dim: int, dtype: Any = jnp.float32) -> jax.Array:
    """A random n x p matrix with i.i.d. N(0, 1) entries."""
    return jax.random.normal(key, (num_params, dim), dtype)


def keskar_sharpness(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    eps: float,
    subspace: jax.Array | None = None,
    max_iter: int = 10,
    chunk_size: int | None = None,
    init: Literal["random", "zero"] = "random",
    rolled: bool | None = None,
) -> SharpnessResult:
    """Keskar epsilon-sharpness phi; ``subspace`` = A (n x p), None for the full space."""
    flat = np.asarray(ravel_pytree(params)[0], np.float64)
    if subspace is None:
        center = flat
    else:
        a64 = np.asarray(subspace, np.float64)
        center = np.linalg.lstsq(a64, flat, rcond=None)[0]  # A^+ x
    bound = eps * (np.abs(center) + 1.0)
    dtype = ravel_pytree(params)[0].dtype
    a = None if subspace is None else jnp.asarray(subspace, dtype)

    evals = 0

    def objective(y: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evals
        evals += 1
        value, grad = loss_and_grad_at(loss_fn, params, data, a, jnp.asarray(y, dtype), chunk_size=chunk_size,
                                       rolled=rolled)
        return -float(value), -np.asarray(grad, np.float64)

    f0 = -objective(np.zeros_like(bound))[0]
    if init == "random":
        y0 = np.asarray(jax.random.uniform(key, bound.shape, jnp.float32, -1.0, 1.0), np.float64) * bound
    else:
        y0 = np.zeros_like(bound)
    import scipy.optimize  # here, not at module level: a second of every training process's start-up

    res = scipy.optimize.minimize(
        objective,
        y0,
        jac=True,
        method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(-bound, bound),
        options={"maxiter": max_iter},
    )
    f_max = max(-float(res.fun), f0)
    phi = 100.0 * (f_max - f0) / (1.0 + f0)
    return SharpnessResult(float(phi), float(f0), float(f_max), int(res.nit), evals)


# The curvature-suite entry (bench.metrics.registry): phi on the curvature subset, for each eps,
# in the full space and in one random subspace shared by all eps.
KEY_SUBSPACE, KEY_SHARPNESS = 5, 6


@frozen
class SharpnessKeys:
    sharpness: bool = param(True, help="Keskar epsilon-sharpness")
    sharpness_eps: tuple[float, ...] = param((1e-3, 5e-4), gt=0)
    sharpness_subspace_dim: int = param(100, ge=0, help="dimension of the random subspace; 0: "
                                                         "full space only")
    sharpness_iters: int = param(10, ge=1, help="L-BFGS-B iterations (10 in the paper)")


def _kinds(cfg: Any) -> int:
    return 2 if cfg.sharpness_subspace_dim else 1


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    out: dict[str, Any] = {}
    subspace = None
    if cfg.sharpness_subspace_dim:
        flat = ravel_pytree(m.params)[0]
        subspace = random_subspace(m.key(KEY_SUBSPACE), flat.size, cfg.sharpness_subspace_dim, flat.dtype)
    for i, eps in enumerate(cfg.sharpness_eps):
        tag = eps_tag(float(eps))
        for kind, a in (("full", None), ("subspace", subspace)):
            if kind == "subspace" and a is None:
                continue
            key = jax.random.fold_in(m.key(KEY_SHARPNESS), 2 * i + (kind == "subspace"))
            res = keskar_sharpness(m.loss_fn, m.params, m.subset, key, eps=float(eps), subspace=a,
                                   max_iter=cfg.sharpness_iters, chunk_size=m.chunk_size, rolled=m.rolled)
            out[f"sharpness_{kind}_eps{tag}"] = num(res.phi)
            out["sharpness_loss"] = num(res.loss)
    return out


SHARPNESS = Metric(
    "sharpness", SharpnessKeys,
    record={"sharpness_loss": Float,  # f(x) on the subset that phi is relative to
            "sharpness_full_eps{eps}": Float,  # e.g. sharpness_full_eps1e-03
            "sharpness_subspace_eps{eps}": Float},  # absent when sharpness_subspace_dim is 0
    measure=_measure, enabled=lambda cfg: cfg.sharpness,
    # each run: f(x), then L-BFGS-B's evaluations (about 1.25 per iteration), one gradient each
    cost=lambda cfg, m: Cost(grad_examples=len(cfg.sharpness_eps) * _kinds(cfg)
                             * (1 + 1.25 * cfg.sharpness_iters) * num_examples(m.subset)),
    folds=(KEY_SUBSPACE, KEY_SHARPNESS),
    summary=("sharpness_full_eps{eps}", "sharpness_subspace_eps{eps}"))
