"""The curvature suite: the registered metrics, in measurement order, and the ``metrics.*`` keys.

``METRICS`` is the registry (bench.metrics.registry says what an entry holds). Adding a metric
is one module that defines its :class:`~bench.metrics.registry.Metric` and one entry here;
``MetricsConfig`` (the ``metrics`` section of the config), the record schema
(``record_keys``) and the summary columns of analysis (``summary_columns``) follow from it.

Noise record keys (stable; read by analyses from records): ``noise_scale`` (two-batch draws)
writes ``grad_norm_sq``, ``trace_sigma``, ``noise_scale_simple`` with ``_stderr`` /
``_interval`` and the smoothed ``noise_scale_simple_ema`` (+ ``_interval``,
``noise_ema_measurements``, ``noise_ema_lag``); ``noise_exact`` (per-example gradients on
fresh subsets) writes ``grad_norm_sq_exact``, ``trace_sigma_exact``, ``noise_scale_simple_exact``
(+ ``_stderr``, ``_interval``), ``noise_exact_examples``, ``noise_exact_draws``; with
``noise_per_layer`` the dicts keyed by layer path ``noise_scale_layers`` (+ ``_interval``),
``grad_norm_sq_layers``, ``trace_sigma_layers``; with ``noise_norm_layers``
``noise_scale_norm`` (+ ``_stderr``, ``_interval``), ``grad_norm_sq_norm``,
``trace_sigma_norm``, ``noise_norm_params``, ``noise_norm_layer_paths``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.metrics.batch_sharpness import BATCH_SHARPNESS
from bench.metrics.noise_exact import NOISE_EXACT
from bench.metrics.noise_tracking import NOISE_SCALE
from bench.metrics.preconditioned import PRECONDITIONED
from bench.metrics.registry import Metric, check_registry, expand
from bench.metrics.sharpness import SHARPNESS
from bench.metrics.spectrum import DENSITY, HUTCHINSON, LANCZOS, POWER
from bench.schema import frozen, param

__all__ = ["METRICS", "MetricsConfig", "ProbeKeys", "RECORD_KEYS", "metrics_config", "record_keys",
           "summary_columns"]

METRICS: tuple[Metric, ...] = (LANCZOS, POWER, HUTCHINSON, DENSITY, SHARPNESS, NOISE_SCALE,
                               PRECONDITIONED, BATCH_SHARPNESS, NOISE_EXACT)


@frozen
class ProbeKeys:
    """When and on what the suite measures (every metric shares these)."""
    hessian: bool = param(False, help="curvature measurements on (the metrics below that are on)")
    every: int | None = param(None, ge=1, help="steps between measurements (null: at the end)")
    dense_every: int | None = param(
        None, ge=1, help="also measure every n steps up to metrics.dense_until (e.g. around the "
                         "edge-of-stability crossing); null: off")
    dense_until: int = param(0, ge=0, help="last step of the metrics.dense_every cadence")
    subset_size: int = param(10000, ge=0, help="training examples used (0 or >= N: all of them)")
    chunk_size: int = param(1000, ge=1, help="examples per Hessian-vector-product chunk")


def metrics_config(metrics: tuple[Metric, ...]) -> type:
    """The ``metrics`` config section of these metrics: ``ProbeKeys`` and every metric's keys in
    one flat frozen dataclass, so users type ``metrics.lanczos_iters=20`` and stored configs
    keep their shape (config hashes and reuse unchanged)."""
    check_registry(metrics)
    sections = (ProbeKeys, *(m.keys for m in metrics))

    def check(self: Any, where: str) -> None:  # each section's rules (e.g. top_k <= lanczos_iters)
        for section in sections:
            if "check" in vars(section):
                section.check(self, where)

    # Bases in reverse: dataclasses collect fields from the last base first, so the keys come
    # in registry order.
    return dataclasses.make_dataclass(
        "MetricsConfig", [], bases=tuple(reversed(sections)), frozen=True,
        namespace={"check": check, "__module__": __name__,
                   "__doc__": "Curvature and gradient-noise measurements (bench.metrics.suite); "
                              "off unless hessian."})


MetricsConfig = metrics_config(METRICS)


# Keys every measured row has beyond the metrics' own (stability thresholds: from the optimizer,
# ``OptimizerConfig.stability_thresholds``, added by the run records).
RECORD_KEYS: dict[str, Any] = {
    "curvature_subset_size": int,  # examples curvature was measured on
    "curvature_hvps": float,  # HVPs of that subset the measurement ran (bench.metrics.curvature.suite_hvps)
    "curvature_seconds": float,  # wall time of the measurement
    "two_over_lr": float,  # 2 / lr, the edge-of-stability threshold of Cohen et al. 2021
    "stability_threshold": float, "preconditioned_stability_threshold": float,
}


def record_keys(cfg: Any | None = None, metrics: tuple[Metric, ...] = METRICS) -> dict[str, Any]:
    """Every key a measured history row can add to ``bench.record.EvalRow``, with its type;
    with a ``MetricsConfig``, templates expanded for it (else left as ``..._eps{eps}``)."""
    out = dict(RECORD_KEYS)
    for metric in metrics:
        for key, tp in metric.record.items():
            out.update(dict.fromkeys(expand([key], cfg) if cfg is not None else [key], tp))
    return out


def summary_columns(cfg: Any | None = None, metrics: tuple[Metric, ...] = METRICS) -> tuple[str, ...]:
    """Summary-table columns of the final curvature (``curvature_<key>``, analysis.load's
    naming), for the default config unless given."""
    cfg = MetricsConfig() if cfg is None else cfg
    return tuple(f"curvature_{k}" for m in metrics for k in expand(m.summary, cfg))

