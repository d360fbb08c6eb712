"""Curvature and gradient-noise measurements at one point of training: the suite's runner.

The training loop (through bench.metrics.probe) calls::

    metrics, state = measure(cfg, loss_fn, params, data, key, lr=lr, state=state)

``loss_fn(params, batch)`` is the MEAN loss of ``batch`` (model in eval mode);
``data = {"x": [N, ...], "y": [N]}`` is the training set, possibly sharded along
axis 0. Curvature (Hessian, density, sharpness) is measured on one subset of
``cfg.subset_size`` examples drawn with ``fold_in(key, KEY_SUBSET)`` (the whole set when
``subset_size`` is falsy or >= N): pass the same ``key`` at every measurement to
follow one fixed subset through training. Each enabled metric of ``bench.metrics.suite.METRICS``
runs in registry order with its own folded keys, so each piece reproduces alone; the record
keys each writes are declared in its entry (``bench.metrics.suite.record_keys``). The loop owns
the cadence (``cfg.every``); ``measure`` ignores it.

Output: a flat dict of JSON-able values (a non-finite value is stored as None); keys of
disabled metrics are absent. Always: ``curvature_subset_size``, ``curvature_hvps`` (the HVPs the
enabled metrics run, ``suite_hvps``), ``curvature_seconds`` and, when
``lr`` is given, ``two_over_lr`` = 2 / lr (the edge-of-stability threshold of Cohen et al. 2021).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from bench.metrics.hessian import Batch, LossFn, PyTree, num_examples
from bench.metrics.registry import Cost, Measurement, Metric, eps_tag
from bench.metrics.suite import METRICS

__all__ = ["KEY_SUBSET", "enabled_metrics", "eps_tag", "estimated_cost", "measure", "select_subset", "suite_hvps"]

KEY_SUBSET = 0  # folded into the measurement key for the curvature subset (metrics use 1, 2, ...)


def select_subset(data: Batch, key: jax.Array, size: int | None) -> Batch:
    """``size`` examples drawn without replacement (kept in index order); all if falsy or >= N."""
    n = num_examples(data)
    if not size or size >= n:
        return data
    idx = jnp.sort(jax.random.permutation(key, n)[:size])
    return jax.tree.map(lambda a: a[idx], data)


def enabled_metrics(cfg: Any, metrics: Iterable[Metric] = METRICS) -> list[Metric]:
    return [m for m in metrics if m.enabled(cfg)]


def estimated_cost(cfg: Any, m: Measurement, metrics: Iterable[Metric] = METRICS) -> dict[str, Cost]:
    """Each enabled metric's work at one measurement (HVP and gradient example passes)."""
    return {metric.name: metric.cost(cfg, m) for metric in enabled_metrics(cfg, metrics)}


def suite_hvps(costs: dict[str, Cost], subset_size: int) -> float:
    """The HVPs of one measurement, in HVPs of the whole curvature subset (minibatch HVPs, e.g.
    batch sharpness's, count by their share of examples; power iteration at its maximum)."""
    return sum(c.hvp_examples for c in costs.values()) / subset_size


def measure(
    cfg: Any,
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    step: int | None = None,
    lr: float | None = None,
    state: dict[str, Any] | None = None,
    rolled: bool | None = None,
    preconditioner: PyTree | None = None,
    batch_size: int | None = None,
    positions: dict[str, float] | None = None,
    metrics: Iterable[Metric] = METRICS,
    on_metric: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure the enabled metrics; see the module docstring.

    Returns (flat JSON-able dict, the metrics' carried state: metric name -> value, a new dict;
    ``state`` itself is not changed). ``step``: the training step (metrics that draw fresh
    samples at each measurement fold it in); ``positions``: the same point in other units
    ("examples", "tokens"). ``rolled``: loop style (bench.metrics.operator;
    default by backend), same numbers up to round-off. ``preconditioner``: Adam's P
    (params-shaped) for ``cfg.preconditioned``; ``batch_size``: the run's minibatch size for batch
    sharpness. ``on_metric(name, seconds)``: called after each metric (progress).
    """
    start = time.perf_counter()
    subset = select_subset(data, jax.random.fold_in(key, KEY_SUBSET), cfg.subset_size)
    m = Measurement(loss_fn, params, subset, data, key, cfg.chunk_size or None, rolled, step, lr,
                    preconditioner, batch_size, dict(state or {}), dict(positions or {}))
    out: dict[str, Any] = {"curvature_subset_size": num_examples(subset),
                           "curvature_hvps": suite_hvps(estimated_cost(cfg, m, metrics), num_examples(subset))}
    for metric in enabled_metrics(cfg, metrics):
        t = time.perf_counter()
        out.update(metric.measure(cfg, m))
        if on_metric is not None:
            on_metric(metric.name, time.perf_counter() - t)
    if lr is not None:
        out["two_over_lr"] = 2.0 / lr
    out["curvature_seconds"] = time.perf_counter() - start
    return out, m.state
