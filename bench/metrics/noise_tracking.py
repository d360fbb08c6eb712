"""The noise scale followed through training: the curvature suite's ``noise_scale`` entry.

At each measurement, ``noise_draws`` independent two-batch draws (bench.metrics.noise_scale) of
fresh examples: the key folds in the training step and the draw index, so no two measurements
share their examples and the estimates' errors are independent across measurements. Their
means, standard errors and a 95% interval on B_simple are recorded.

Smoothing (``NoiseScaleEMA``) averages |G|^2 and tr(Sigma) over measurements, then divides.
Each past measurement weighs ``0.5 ** (age / noise_half_life)``, its age in
``noise_half_life_unit`` (steps, examples or tokens) since it was made, so the window is a span
of training whatever the cadence; with ``noise_half_life`` null, ``noise_ema`` is the decay per
measurement (a window that depends on ``metrics.every``). Recorded with the smoothed values:
the effective number of measurements behind them (sum w)^2 / sum w^2, their weighted mean age
(``noise_ema_lag``, in the unit) and an interval from the measurements' own variances. The
smoothed value averages over parameter states as well as draws: it lags the current B_simple.

The exact statistics from per-example gradients (``metrics.noise_exact``, overall, per layer and
of the norm layers) are the suite's ``noise_exact`` entry (bench.metrics.noise_exact).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from bench.metrics.noise_scale import gradient_noise_scale, ratio_interval, ratio_stderr, summarize
from bench.metrics.registry import Cost, Float, Measurement, Metric, num
from bench.schema import ConfigError, frozen, param

__all__ = ["KEY_NOISE", "NOISE_SCALE", "NoiseScaleEMA", "update"]

KEY_NOISE = 7
UNITS = ("steps", "examples", "tokens")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseScaleEMA:
    """Weighted sums over past measurements (weight 1 when made, decayed since): of |G|^2,
    tr(Sigma), the weights and squared weights, the squared-weight sums of each measurement's
    variances (of its means), and of its position. Smoothed values are sums / ``weight``."""

    grad_norm_sq: float = 0.0
    trace_sigma: float = 0.0
    weight: float = 0.0
    weight_sq: float = 0.0
    var_grad_norm_sq: float = 0.0
    var_trace_sigma: float = 0.0
    covariance: float = 0.0
    position_sum: float = 0.0
    position: float = 0.0  # of the latest measurement

    @property
    def smoothed_grad_norm_sq(self) -> float:
        return self.grad_norm_sq / self.weight

    @property
    def smoothed_trace_sigma(self) -> float:
        return self.trace_sigma / self.weight

    @property
    def b_simple(self) -> float:
        """smoothed tr(Sigma) / smoothed |G|^2 (the normalisations cancel)."""
        return self.trace_sigma / self.grad_norm_sq

    @property
    def effective_measurements(self) -> float:
        return self.weight**2 / self.weight_sq

    @property
    def lag(self) -> float:
        """Weighted mean age of the measurements behind the smoothed values (in the unit)."""
        return self.position - self.position_sum / self.weight

    def b_simple_stderr(self) -> float:
        w2 = self.weight**2
        return ratio_stderr(self.smoothed_grad_norm_sq, self.smoothed_trace_sigma, self.var_grad_norm_sq / w2,
                            self.var_trace_sigma / w2, self.covariance / w2)


def update(state: NoiseScaleEMA | None, grad_norm_sq: float, trace_sigma: float, *, decay: float,
           variances: tuple[float, float, float] = (0.0, 0.0, 0.0), position: float = 0.0) -> NoiseScaleEMA:
    """Fold one measurement in after decaying the past by ``decay`` (pure; None = fresh state).
    ``variances``: of its |G|^2 and tr(Sigma) means and their covariance."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    s = NoiseScaleEMA() if state is None else state
    d, d2 = decay, decay * decay
    return NoiseScaleEMA(
        grad_norm_sq=d * s.grad_norm_sq + grad_norm_sq, trace_sigma=d * s.trace_sigma + trace_sigma,
        weight=d * s.weight + 1.0, weight_sq=d2 * s.weight_sq + 1.0,
        var_grad_norm_sq=d2 * s.var_grad_norm_sq + variances[0],
        var_trace_sigma=d2 * s.var_trace_sigma + variances[1], covariance=d2 * s.covariance + variances[2],
        position_sum=d * s.position_sum + position, position=position)


@frozen
class NoiseScaleKeys:
    noise_scale: bool = param(True, help="McCandlish gradient noise scale B_simple")
    noise_small_batch: int = param(32, ge=1)
    noise_num_small: int = param(16, ge=2)
    noise_draws: int = param(4, ge=1, help="independent two-batch draws per measurement (>= 2 "
                                           "for standard errors and intervals)")
    noise_ema: float = param(0.9, ge=0, lt=1, help="smoothing decay per measurement, used when "
                                                   "metrics.noise_half_life is null")
    noise_half_life: float | None = param(
        None, gt=0, help="smoothing half-life in metrics.noise_half_life_unit (replaces "
                         "metrics.noise_ema); null: per measurement")
    noise_half_life_unit: str = param("steps", choices=UNITS)

    def check(self, where: str) -> None:
        default = NoiseScaleKeys.__dataclass_fields__["noise_ema"].default
        if self.noise_half_life is not None and self.noise_ema != default:
            raise ConfigError(f"{where}noise_ema (per measurement) and {where}noise_half_life (per "
                              f"{self.noise_half_life_unit}) both set the smoothing; choose one")


def _draws(cfg: Any, m: Measurement):
    key = jax.random.fold_in(m.key(KEY_NOISE), m.step or 0)  # fresh examples at every step
    ests = [gradient_noise_scale(m.loss_fn, m.params, m.data, jax.random.fold_in(key, i),
                                 small_batch=cfg.noise_small_batch, num_small=cfg.noise_num_small)
            for i in range(cfg.noise_draws)]
    return summarize([float(e.grad_norm_sq) for e in ests], [float(e.trace_sigma) for e in ests])


def _smooth(cfg: Any, m: Measurement, s) -> NoiseScaleEMA:
    position = m.position(cfg.noise_half_life_unit)
    previous = m.state.get("noise_scale")
    if cfg.noise_half_life is None:
        decay = cfg.noise_ema
    else:
        decay = 0.0 if previous is None else 0.5 ** (max(position - previous.position, 0.0) / cfg.noise_half_life)
    variances = tuple(0.0 if math.isnan(v) else v for v in (s.grad_norm_sq_var, s.trace_sigma_var, s.covariance))
    return update(previous, s.grad_norm_sq, s.trace_sigma, decay=decay, variances=variances, position=position)


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    s = _draws(cfg, m)
    ema = m.state["noise_scale"] = _smooth(cfg, m, s)
    ema_se = ema.b_simple_stderr() if s.draws > 1 else math.nan
    dof = s.draws * ema.effective_measurements - 1
    out = {"grad_norm_sq": num(s.grad_norm_sq), "trace_sigma": num(s.trace_sigma),
           "noise_scale_simple": num(s.b_simple), "noise_scale_draws": s.draws,
           "grad_norm_sq_stderr": num(math.sqrt(s.grad_norm_sq_var)),
           "trace_sigma_stderr": num(math.sqrt(s.trace_sigma_var)),
           "noise_scale_simple_stderr": num(s.b_simple_stderr),
           "noise_scale_simple_interval": [num(v) for v in s.interval()],
           "grad_norm_sq_ema": num(ema.smoothed_grad_norm_sq), "trace_sigma_ema": num(ema.smoothed_trace_sigma),
           "noise_scale_simple_ema": num(ema.b_simple) if ema.grad_norm_sq != 0 else None,
           "noise_scale_simple_ema_stderr": num(ema_se),
           "noise_scale_simple_ema_interval": [num(v) for v in ratio_interval(ema.b_simple, ema_se, dof)],
           "noise_ema_measurements": num(ema.effective_measurements), "noise_ema_lag": num(ema.lag)}
    return out


NOISE_SCALE = Metric(
    "noise_scale", NoiseScaleKeys,
    record={"grad_norm_sq": Float, "trace_sigma": Float,  # means over this measurement's draws
            "noise_scale_simple": Float,  # their ratio
            "noise_scale_draws": int,
            "grad_norm_sq_stderr": Float, "trace_sigma_stderr": Float,  # over draws (None: one)
            "noise_scale_simple_stderr": Float,  # delta method
            "noise_scale_simple_interval": list[Float],  # 95%, Student-t with draws - 1 dof
            "grad_norm_sq_ema": Float, "trace_sigma_ema": Float,  # smoothed over measurements
            "noise_scale_simple_ema": Float,  # trace_sigma_ema / grad_norm_sq_ema
            "noise_scale_simple_ema_stderr": Float, "noise_scale_simple_ema_interval": list[Float],
            "noise_ema_measurements": Float,  # effective number of measurements smoothed over
            "noise_ema_lag": Float},  # their weighted mean age, in noise_half_life_unit
    measure=_measure, enabled=lambda cfg: cfg.noise_scale,
    cost=lambda cfg, m: Cost(grad_examples=cfg.noise_draws * cfg.noise_num_small * cfg.noise_small_batch),
    folds=(KEY_NOISE,))
