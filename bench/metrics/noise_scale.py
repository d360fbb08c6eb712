"""Simple gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018).

Two-batch-size estimators (App. A), from E|G_B|^2 = |G|^2 + tr(Sigma) / B:

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Measured by drawing ``num_small`` disjoint microbatches of ``small_batch`` examples
(without replacement, from ``key``): per-microbatch gradients come from one
``vmap``; |G_small|^2 is the mean of their squared norms and G_big their mean
(B_big = num_small * small_batch). Both estimators are unbiased for i.i.d. sampling;
drawing from a finite set of N examples without replacement, the tr(Sigma) estimate
is unbiased for the (N - 1)-normalised covariance and the |G|^2 estimate is low by
tr(Sigma) / N, negligible for B_simple << N.

A single draw is noisy (|G|^2 may even come out negative), so smooth numerator and
denominator separately across measurements with ``NoiseScaleEMA`` / ``update`` and
divide afterwards, as the paper advises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bench.metrics.hessian import Batch, LossFn, PyTree, jit_loss, num_examples
from bench.metrics.registry import Cost, Float, Measurement, Metric, num
from bench.schema import frozen, param

__all__ = ["NoiseScaleEMA", "NoiseScaleEstimate", "gradient_noise_scale", "two_batch_estimates", "update"]


class NoiseScaleEstimate(NamedTuple):
    grad_norm_sq: jax.Array  # unbiased estimate of |G|^2
    trace_sigma: jax.Array  # unbiased estimate of tr(Sigma) (per-example covariance)
    b_simple: jax.Array  # trace_sigma / grad_norm_sq for this draw alone
    g_small_sq: jax.Array  # mean over microbatches of |G_small|^2
    g_big_sq: jax.Array  # |G_big|^2


def two_batch_estimates(
    g_small_sq: jax.Array, g_big_sq: jax.Array, b_small: int, b_big: int
) -> tuple[jax.Array, jax.Array]:
    """(|G|^2, tr(Sigma)) from squared gradient norms at two batch sizes."""
    grad_norm_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace_sigma = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
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
    """One two-batch estimate of B_simple from ``num_small`` disjoint microbatches."""
    n = num_examples(data)
    b_big = num_small * small_batch
    if num_small < 2 or b_big > n:
        raise ValueError(f"need num_small >= 2 and num_small * small_batch <= N={n}, got {num_small} x {small_batch}")
    idx = jax.random.permutation(key, n)[:b_big].reshape(num_small, small_batch)
    batches = jax.tree.map(lambda a: a[idx], data)
    grads = jax.vmap(lambda b: ravel_pytree(jax.grad(loss_fn)(params, b))[0])(batches)
    g_small_sq = jnp.mean(jnp.sum(grads**2, axis=1))
    g_big_sq = jnp.sum(jnp.mean(grads, axis=0) ** 2)
    grad_norm_sq, trace_sigma = two_batch_estimates(g_small_sq, g_big_sq, small_batch, b_big)
    return NoiseScaleEstimate(grad_norm_sq, trace_sigma, trace_sigma / grad_norm_sq, g_small_sq, g_big_sq)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseScaleEMA:
    """EMA of |G|^2 and tr(Sigma) with Adam-style bias correction.

    ``grad_norm_sq`` and ``trace_sigma`` are the raw (biased) accumulators and
    ``weight`` = 1 - decay^t; the smoothed values divide by ``weight``, so the first
    update returns the first estimate exactly.
    """

    grad_norm_sq: float = 0.0
    trace_sigma: float = 0.0
    weight: float = 0.0

    @property
    def smoothed_grad_norm_sq(self) -> float:
        return self.grad_norm_sq / self.weight

    @property
    def smoothed_trace_sigma(self) -> float:
        return self.trace_sigma / self.weight

    @property
    def b_simple(self) -> float:
        """EMA(tr Sigma) / EMA(|G|^2) (the bias corrections cancel)."""
        return self.trace_sigma / self.grad_norm_sq


def update(state: NoiseScaleEMA | None, grad_norm_sq: float, trace_sigma: float, *, decay: float) -> NoiseScaleEMA:
    """Fold one (|G|^2, tr Sigma) estimate into the EMA (pure; None = fresh state)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    state = NoiseScaleEMA() if state is None else state
    return NoiseScaleEMA(
        grad_norm_sq=decay * state.grad_norm_sq + (1.0 - decay) * grad_norm_sq,
        trace_sigma=decay * state.trace_sigma + (1.0 - decay) * trace_sigma,
        weight=decay * state.weight + (1.0 - decay),
    )


# The curvature-suite entry (bench.metrics.registry): microbatches drawn from all the probe's
# data; the EMA state is carried per replica (``Measurement.state``).
KEY_NOISE = 7


@frozen
class NoiseScaleKeys:
    noise_scale: bool = param(True, help="McCandlish gradient noise scale B_simple")
    noise_small_batch: int = param(32, ge=1)
    noise_num_small: int = param(16, ge=2)
    noise_ema: float = param(0.9, ge=0, lt=1)


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    est = gradient_noise_scale(m.loss_fn, m.params, m.data, m.key(KEY_NOISE),
                               small_batch=cfg.noise_small_batch, num_small=cfg.noise_num_small)
    g2, tr = float(est.grad_norm_sq), float(est.trace_sigma)
    ema = m.state["noise_scale"] = update(m.state.get("noise_scale"), g2, tr, decay=cfg.noise_ema)
    return {"grad_norm_sq": num(g2), "trace_sigma": num(tr),
            "noise_scale_simple": num(tr / g2) if g2 != 0 else None,
            "grad_norm_sq_ema": num(ema.smoothed_grad_norm_sq),
            "trace_sigma_ema": num(ema.smoothed_trace_sigma),
            "noise_scale_simple_ema": num(ema.b_simple) if ema.grad_norm_sq != 0 else None}


NOISE_SCALE = Metric(
    "noise_scale", NoiseScaleKeys,
    record={"grad_norm_sq": Float, "trace_sigma": Float,  # this draw's unbiased |G|^2, tr(Sigma)
            "noise_scale_simple": Float,  # trace_sigma / grad_norm_sq of this draw (noisy)
            "grad_norm_sq_ema": Float, "trace_sigma_ema": Float,  # bias-corrected EMAs
            "noise_scale_simple_ema": Float},  # trace_sigma_ema / grad_norm_sq_ema
    measure=_measure, enabled=lambda cfg: cfg.noise_scale,
    cost=lambda cfg, m: Cost(grad_examples=cfg.noise_num_small * cfg.noise_small_batch),
    folds=(KEY_NOISE,))
