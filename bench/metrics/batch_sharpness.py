"""Batch sharpness (Andreyev & Beneventano, "Edge of Stochastic Stability", arXiv:2412.20553).

    batch_sharpness = E_B[ g_B^T H_B g_B / ||g_B||^2 ]

the curvature of each minibatch's own loss L_B along its own gradient g_B, averaged over
minibatches B of the run's batch size (each a uniformly random subset, drawn without
replacement; independent across draws), as the authors' code computes it by default (the mean
of the per-batch Rayleigh quotients, not a ratio of means). Under minibatch SGD it is this
quantity, not the full-batch lambda_max, that settles near 2/lr.

Cost: one HVP per minibatch of B examples (``jax.linearize`` of the gradient: its primal pass
is the gradient, its tangent pass H_B g_B), one compiled program per (B, shapes), reused by
every draw and every measurement (the loss travels as a pytree, ``lift_closure``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.metrics.hessian import Batch, LossFn, PyTree, jit_loss, num_examples
from bench.metrics.registry import Cost, Float, Measurement, Metric, num
from bench.schema import frozen, param

__all__ = ["BatchSharpness", "batch_rayleigh", "batch_sharpness", "minibatch_indices"]


class BatchSharpness(NamedTuple):
    mean: float         # E_B[g^T H g / g^T g]
    stderr: float       # std (ddof=1) / sqrt(draws); NaN for one draw
    samples: np.ndarray  # the per-minibatch Rayleigh quotients


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "num"))
def minibatch_indices(key: jax.Array, *, n: int, batch_size: int, num: int) -> jax.Array:
    """[num, batch_size] example indices: each row a uniformly random subset of range(n)."""
    return jax.vmap(lambda k: jax.random.permutation(k, n)[:batch_size])(jax.random.split(key, num))


@jit_loss()
def batch_rayleigh(loss: LossFn, params: PyTree, data: Batch, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(g^T H g, g^T g) of the minibatch ``data[idx]`` (its mean loss, its own gradient g)."""
    batch = jax.tree.map(lambda a: a[idx], data)
    g, hvp = jax.linearize(lambda p: jax.grad(loss)(p, batch), params)
    return optax.tree.vdot(g, hvp(g)), optax.tree.vdot(g, g)


def batch_sharpness(loss_fn: LossFn, params: PyTree, data: Batch, key: jax.Array, *, batch_size: int,
                    num_batches: int) -> BatchSharpness:
    """Mean and standard error of g_B^T H_B g_B / |g_B|^2 over ``num_batches`` random minibatches
    of ``batch_size`` examples of ``data`` (one draw of all of it when ``batch_size`` >= N)."""
    n = num_examples(data)
    if batch_size >= n:
        idx = np.arange(n)[None]
    else:  # host rows: every call sees the same (uncommitted) input, so one compile serves all
        idx = np.asarray(minibatch_indices(key, n=n, batch_size=batch_size, num=num_batches))
    pairs = [batch_rayleigh(loss_fn, params, data, row) for row in idx]
    ghg, gg = (np.asarray(jax.device_get(v), np.float64) for v in zip(*pairs))
    samples = ghg / gg
    stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return BatchSharpness(float(np.mean(samples)), stderr, samples)


# The curvature-suite entry (bench.metrics.registry): minibatches of the run's batch size from
# all the probe's data (not the curvature subset).
KEY_BATCH_SHARPNESS = 9


@frozen
class BatchSharpnessKeys:
    batch_sharpness_batches: int = param(
        0, ge=0, help="minibatches of the run's batch size averaged for batch sharpness "
                      "E[g_B^T H_B g_B / |g_B|^2] (Andreyev & Beneventano 2024); 0: off")


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    if not m.batch_size:
        return {}
    bs = batch_sharpness(m.loss_fn, m.params, m.data, m.key(KEY_BATCH_SHARPNESS),
                         batch_size=m.batch_size, num_batches=cfg.batch_sharpness_batches)
    return {"batch_sharpness": num(bs.mean), "batch_sharpness_stderr": num(bs.stderr),
            "batch_sharpness_batches": len(bs.samples),
            "batch_sharpness_batch_size": min(int(m.batch_size), num_examples(m.data))}


BATCH_SHARPNESS = Metric(
    "batch_sharpness", BatchSharpnessKeys,
    record={"batch_sharpness": Float, "batch_sharpness_stderr": Float,  # mean, standard error
            "batch_sharpness_batches": int,  # draws used (1 when batch_size >= N)
            "batch_sharpness_batch_size": int},
    measure=_measure, enabled=lambda cfg: cfg.batch_sharpness_batches > 0,
    cost=lambda cfg, m: Cost(hvp_examples=cfg.batch_sharpness_batches * min(m.batch_size or 0, num_examples(m.data))),
    folds=(KEY_BATCH_SHARPNESS,))
