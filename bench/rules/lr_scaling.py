"""Batch-size LR scaling rules (a registry) and the hyperparameters they give at a batch size.

``scaling=<name>`` picks the rule that turns the base LR into the peak LR for the job's batch
size (and, for ``timescale``, the weight decay); :func:`adaptive_hyperparams` adds Adam's
batch-size rules (bench.rules.adam). Inputs are the optimizer section, the rule and the batch
size, never the whole job config (``check_with`` is the one cross-section validation hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.optim import OPTIMIZERS, AdamFamily, OptimizerConfig, decoupled_optimizers
from bench.rules.adam import (AdamHyperparams, beta_from_half_life, sde_scaling,
                              weight_decay_for_timescale)
from bench.rules.adam import timescale as ema_timescale
from bench.schema import ConfigError, Registry, frozen, param

if TYPE_CHECKING:  # type hints only: bench.config imports this module
    from bench.config import Config

SCALING_RULES: Registry["ScalingConfig"] = Registry("scaling", default="none")

@frozen
class ScalingConfig:
    """peak LR = base LR * (B / base_batch_size) ** alpha."""
    name: str = param("none", help="scaling=<name> selects the rule")
    base_batch_size: int = param(128, ge=1, help="the batch size at which optimizer.lr is defined")
    alpha = 0.0
    scales_adam = False  # whether the rule also scales Adam's b1, b2 and eps

    def peak_lr(self, base_lr: float, batch_size: int) -> float:
        return float(base_lr) * (batch_size / self.base_batch_size) ** self.alpha

    def check_with(self, cfg: "Config") -> None:
        """Rules that relate this section to the rest of the config."""


@SCALING_RULES.register("none")
@frozen
class NoScaling(ScalingConfig):
    """The same LR at every batch size."""
    alpha = 0.0


@SCALING_RULES.register("sqrt")
@frozen
class SqrtScaling(ScalingConfig):
    """Square-root scaling (Krizhevsky 2014; Hoffer et al. 2017)."""
    alpha = 0.5


@SCALING_RULES.register("linear")
@frozen
class LinearScaling(ScalingConfig):
    """Linear scaling (Goyal et al. 2017)."""
    alpha = 1.0


@SCALING_RULES.register("sde")
@frozen
class SDEScaling(ScalingConfig):
    """Malladi et al. 2022's square-root (SDE) rule for Adam/RMSprop: with kappa = B / base,
    lr x sqrt(kappa), 1 - b1 and 1 - b2 x kappa, eps / sqrt(kappa) (bench.rules.adam)."""
    alpha = 0.5
    scales_adam = True


@SCALING_RULES.register("timescale")
@frozen
class TimescaleScaling(ScalingConfig):
    """AdamW's EMA timescale held fixed as B and the LR change (Wang & Aitchison 2024,
    arXiv:2405.13698; Bergsma et al. 2025, arXiv:2505.13738): with decoupled decay the weights
    are an EMA of the updates over tau_iter = 1 / (lr * wd) steps, i.e.
    tau = B / (lr * wd * D) in units of D. ``unit=epochs``: D = the training set (N examples),
    tau in epochs (Wang & Aitchison's tau_epoch); ``unit=tokens``: D = one token (one example
    for classifiers), tau in tokens (Bergsma et al.'s tau is this over the run's tokens).
    The weight decay at batch size B is wd = B / (lr * tau * D), lr the run's peak LR (the
    schedule multiplies lr * wd as in AdamW); it is stored in each replica's hyperparams."""
    alpha: float = param(0.0, ge=0, le=1, help="peak LR = optimizer.lr * (B / base_batch_size) ** alpha")
    tau: float | None = param(
        None, gt=0, help="the timescale (in scaling.unit); null: the one optimizer.lr and "
                         "optimizer.weight_decay give at base_batch_size")
    unit: str = param("epochs", choices=("epochs", "tokens"),
                      help="tau in epochs of the training set or in tokens (examples for classifiers)")

    def _per_step(self, batch_size: int, tokens_per_example: int | None,
                  num_train: int | None) -> tuple[float, float]:
        """(B, D) in the unit's terms: (examples, N) for epochs, (tokens, 1) for tokens."""
        if self.unit == "tokens":
            return float(batch_size * (tokens_per_example or 1)), 1.0
        if num_train is None:
            raise ValueError("scaling.unit=epochs needs the training-set size")
        return float(batch_size), float(num_train)

    def timescale(self, opt: OptimizerConfig, base_lr: float, tokens_per_example: int | None,
                  num_train: int | None) -> float:
        """tau: the key, or that of optimizer.weight_decay at base_batch_size and base LR."""
        if self.tau is not None:
            return self.tau
        b, d = self._per_step(self.base_batch_size, tokens_per_example, num_train)
        return ema_timescale(b, base_lr, opt.weight_decay, d)

    def weight_decay(self, opt: OptimizerConfig, batch_size: int, base_lr: float, peak_lr: float,
                     tokens_per_example: int | None, num_train: int | None) -> float:
        tau = self.timescale(opt, base_lr, tokens_per_example, num_train)
        b, d = self._per_step(batch_size, tokens_per_example, num_train)
        return weight_decay_for_timescale(tau, b, peak_lr, d)

    def check_with(self, cfg):
        opt = cfg.optimizer
        if opt.weight_decay_kind != "decoupled":
            raise ConfigError(
                f"scaling=timescale sets decoupled weight decay (theta -= lr * wd * theta); "
                f"optimizer={opt.name} applies it {opt.weight_decay_kind.replace('_', ' ')}; use "
                f"optimizer={'|'.join(decoupled_optimizers())}")
        if self.tau is None and not opt.weight_decay > 0:
            raise ConfigError("scaling=timescale with optimizer.weight_decay=0 has no timescale to "
                              "keep; set optimizer.weight_decay or scaling.tau")
        if self.tau is not None and opt.weight_decay != OPTIMIZERS.create(opt.name).weight_decay:
            raise ConfigError(f"scaling.tau={self.tau:g} sets the weight decay; remove "
                              f"optimizer.weight_decay={opt.weight_decay:g} or scaling.tau")
        lrs = cfg.replicas.lr
        if lrs is not None and len(set(lrs)) > 1:
            raise ConfigError(f"scaling=timescale sets the weight decay from the LR, shared by the "
                              f"replicas of a job; replicas.lr={list(lrs)} needs one job per LR "
                              f"(a sweep: -m optimizer.lr=...)")



def adaptive_hyperparams(opt: OptimizerConfig, scaling: "ScalingConfig", batch_size: int,
                         tokens_per_example: int | None, *, base_lr: float | None = None,
                         peak_lr: float | None = None,
                         num_train: int | None = None) -> tuple[dict[str, float], bool]:
    """(hyperparameters used at ``batch_size``, whether any batch-size rule changed them).

    Adam's b1, b2, eps (empty for optimizers without betas): ``scaling=sde`` (Malladi et al.
    2022) scales them from ``scaling.base_batch_size``; a ``beta*_half_life`` (Marek et al.
    2025) fixes b = 0.5 ** (tokens per step / half-life), tokens per step = B x T (B for
    classifiers; the whole optimizer batch when accumulating). ``scaling=timescale`` adds
    ``weight_decay`` from the run's ``peak_lr`` (and ``base_lr``, ``num_train``: see
    :class:`TimescaleScaling`). Raises ConfigError when a rule leaves its range.
    """
    values: dict[str, float] = {}
    changed = False
    if isinstance(opt, AdamFamily):
        values = {"b1": opt.b1, "b2": opt.b2, "eps": opt.eps}
        if scaling.scales_adam:
            try:
                scaled = sde_scaling(batch_size, scaling.base_batch_size,
                                     AdamHyperparams(opt.lr, opt.b1, opt.b2, opt.eps))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            values.update(b1=scaled.b1, b2=scaled.b2, eps=scaled.eps)
            changed = True
        tokens = batch_size * (tokens_per_example or 1)
        for key, half_life in (("b1", opt.beta1_half_life), ("b2", opt.beta2_half_life)):
            if half_life is not None:
                values[key] = beta_from_half_life(half_life, tokens)
                changed = True
    if isinstance(scaling, TimescaleScaling):
        if peak_lr is None or base_lr is None:
            raise ValueError("scaling=timescale needs the run's base_lr and peak_lr")
        values["weight_decay"] = scaling.weight_decay(opt, batch_size, base_lr, peak_lr,
                                                      tokens_per_example, num_train)
        changed = True
    return values, changed
