"""The Hessian-spectrum metrics of the curvature suite (estimators in bench.metrics.hessian).

Each is one registry entry (bench.metrics.registry): top-k eigenvalues by Lanczos, the
power-iteration cross-check, Hutchinson's trace and the SLQ spectral density, all on the
curvature subset. The first three run when ``metrics.hessian`` is on (power and Hutchinson
unless their counts are 0); the density has its own switch.

Shared work (the default, ``metrics.top_from_slq``): with the density on, the top-k eigenvalues
are the Ritz values of the density's own Lanczos runs (``hessian.slq_lanczos``: the run with
the largest top Ritz value, its residuals from k explicit HVPs), so one measurement runs
``slq_probes x lanczos_iters + top_k`` Lanczos HVPs instead of ``(slq_probes + 1) x
lanczos_iters + top_k``. Power iteration is an optional cross-check (``metrics.power_iters``,
off by default): it finds the largest-MAGNITUDE eigenvalue, the same as Lanczos' top one
whenever the most negative eigenvalue is smaller in magnitude.
"""

from __future__ import annotations

from typing import Any

from bench.metrics.hessian import (
    SLQResult,
    density_record,
    hutchinson_trace,
    lanczos_top_eigenvalues,
    num_examples,
    power_iteration_top_eigenvalue,
    slq_lanczos,
)
from bench.metrics.registry import Cost, Float, Measurement, Metric, num, nums
from bench.schema import ConfigError, frozen, param

KEY_LANCZOS, KEY_POWER, KEY_HUTCHINSON, KEY_SLQ = 1, 2, 3, 4


@frozen
class LanczosKeys:
    top_k: int = param(1, ge=1, help="top Hessian eigenvalues reported (Lanczos Ritz values)")
    lanczos_iters: int = param(30, ge=1, help="Lanczos steps (also of the density and the "
                                              "preconditioned sharpness)")
    top_from_slq: bool = param(True, help="with the density on, the top eigenvalues are the Ritz "
                                          "values of its Lanczos runs (no separate run); false: "
                                          "a separate Lanczos run")

    def check(self, where: str) -> None:
        if self.top_k > self.lanczos_iters:
            raise ConfigError(f"{where}top_k={self.top_k} must be <= {where}lanczos_iters="
                              f"{self.lanczos_iters}")


def _iters(cfg: Any, m: Measurement) -> int:
    return min(cfg.lanczos_iters, m.num_params)


def _shared(cfg: Any) -> bool:
    """Whether the top eigenvalues come from the density's Lanczos runs."""
    return cfg.density and cfg.top_from_slq


def _slq(cfg: Any, m: Measurement) -> SLQResult:
    """The density's Lanczos runs, once per measurement (top-k included)."""
    return m.once("slq", lambda: slq_lanczos(
        m.loss_fn, m.params, m.subset, m.key(KEY_SLQ), num_probes=cfg.slq_probes,
        num_iters=cfg.lanczos_iters, k=cfg.top_k, chunk_size=m.chunk_size, rolled=m.rolled))


def _lanczos(cfg: Any, m: Measurement) -> dict[str, Any]:
    if _shared(cfg):
        res = _slq(cfg, m)
    else:
        res = lanczos_top_eigenvalues(m.loss_fn, m.params, m.subset, m.key(KEY_LANCZOS), k=cfg.top_k,
                                      num_iters=cfg.lanczos_iters, chunk_size=m.chunk_size, rolled=m.rolled)
    return {"hessian_top_eigenvalue": num(res.eigenvalues[0]), "hessian_eigenvalues": nums(res.eigenvalues),
            "hessian_lanczos_residual": num(res.residuals[0]),
            "hessian_lanczos_residuals": nums(res.residuals)}


LANCZOS = Metric(
    "lanczos", LanczosKeys,
    record={"hessian_top_eigenvalue": Float,  # largest Ritz value (algebraically largest eigenvalue)
            "hessian_eigenvalues": list[Float],  # top ``top_k`` Ritz values, descending
            "hessian_lanczos_residual": Float,  # ||H u - theta u|| of the top Ritz pair
            "hessian_lanczos_residuals": list[Float]},  # the same for each of the top k
    measure=_lanczos, enabled=lambda cfg: cfg.hessian,
    # shared: the SLQ runs are started here (they are charged where they run) and reused by DENSITY
    cost=lambda cfg, m: Cost(hvp_examples=(_lanczos_runs(cfg) * _iters(cfg, m) + cfg.top_k)
                             * num_examples(m.subset)),
    folds=(KEY_LANCZOS,), summary=("hessian_top_eigenvalue",))


def _lanczos_runs(cfg: Any) -> int:
    return cfg.slq_probes if _shared(cfg) else 1


@frozen
class PowerKeys:
    power_iters: int = param(0, ge=0, help="power-iteration cross-check of the top eigenvalue "
                                           "(largest magnitude, <= power_iters + 2 HVPs); 0: off")


def _power(cfg: Any, m: Measurement) -> dict[str, Any]:
    eig, resid = power_iteration_top_eigenvalue(m.loss_fn, m.params, m.subset, m.key(KEY_POWER),
                                                num_iters=cfg.power_iters, chunk_size=m.chunk_size,
                                                rolled=m.rolled)
    return {"power_top_eigenvalue": num(eig), "power_residual": num(resid)}


POWER = Metric(
    "power", PowerKeys,
    record={"power_top_eigenvalue": Float,  # largest-MAGNITUDE eigenvalue
            "power_residual": Float},  # ||H v - lambda v||
    measure=_power, enabled=lambda cfg: cfg.hessian and cfg.power_iters > 0,
    cost=lambda cfg, m: Cost(hvp_examples=(cfg.power_iters + 2) * num_examples(m.subset)),  # at most
    folds=(KEY_POWER,))


@frozen
class HutchinsonKeys:
    hutchinson_probes: int = param(64, ge=0, help="Rademacher probes of Hutchinson's trace "
                                                  "estimate; 0: off")


def _trace(cfg: Any, m: Measurement) -> dict[str, Any]:
    mean, stderr = hutchinson_trace(m.loss_fn, m.params, m.subset, m.key(KEY_HUTCHINSON),
                                    num_probes=cfg.hutchinson_probes, chunk_size=m.chunk_size,
                                    rolled=m.rolled)
    return {"hessian_trace": num(mean), "hessian_trace_stderr": num(stderr)}


HUTCHINSON = Metric(
    "hutchinson", HutchinsonKeys,
    record={"hessian_trace": Float, "hessian_trace_stderr": Float},  # mean and standard error
    measure=_trace, enabled=lambda cfg: cfg.hessian and cfg.hutchinson_probes > 0,
    cost=lambda cfg, m: Cost(hvp_examples=cfg.hutchinson_probes * num_examples(m.subset)),
    folds=(KEY_HUTCHINSON,), summary=("hessian_trace",))


@frozen
class DensityKeys:
    density: bool = param(True, help="spectral density by stochastic Lanczos quadrature")
    slq_probes: int = param(4, ge=1)
    density_grid: int = param(256, ge=2)


def _density(cfg: Any, m: Measurement) -> dict[str, Any]:
    res = _slq(cfg, m)  # the same runs as slq_ritz (same key): the density is unchanged by sharing
    return {"hessian_density": density_record(res.nodes, res.weights, grid_size=cfg.density_grid)}


DENSITY = Metric(
    "density", DensityKeys,
    # {"grid", "density", "sigma", "nodes", "weights"}: slq_probes x lanczos_iters Lanczos steps
    record={"hessian_density": dict[str, Any]},
    measure=_density, enabled=lambda cfg: cfg.density,
    cost=lambda cfg, m: Cost(hvp_examples=0 if cfg.hessian and _shared(cfg) else  # run by LANCZOS
                             cfg.slq_probes * _iters(cfg, m) * num_examples(m.subset)),
    folds=(KEY_SLQ,))
