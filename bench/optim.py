"""Optimizers and batch-size LR scaling rules (registries; all optax).

``optimizer=<name>`` picks a registered section (its keys and its optax transformation);
``scaling=<name>`` picks the rule that turns the base LR into the peak LR for the job's batch
size. The learning rate is an injected hyperparameter (``optax.inject_hyperparams``), so each
vectorized replica carries its own value in its optimizer state; per step,
``lr(step) = peak_lr * multiplier(step)`` with the multiplier from bench.schedules.

Adding an optimizer: one registered section here (keys + ``transform``) and
``conf/optimizer/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any

import optax

from bench.adam_scaling import AdamHyperparams, beta_from_half_life, sde_scaling
from bench.schema import ConfigError, Registry, frozen, param

OPTIMIZERS: Registry["OptimizerConfig"] = Registry("optimizer", default="momentum")
SCALING_RULES: Registry["ScalingConfig"] = Registry("scaling", default="none")

_BETA = {"ge": 0.0, "lt": 1.0}


@frozen
class OptimizerConfig:
    name: str = param("momentum", help="optimizer=<name> selects the option")
    lr: float = param(0.05, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(0.0, ge=0)

    def transform(self, learning_rate: Any, mask: Any = None) -> optax.GradientTransformation:
        """The optax optimizer; ``mask``: the parameters weight decay applies to (None: all)."""
        raise NotImplementedError

    def stability_thresholds(self, lr: float) -> dict[str, float]:
        """Where full-batch training with this optimizer at LR ``lr`` turns unstable along the
        top curvature direction (Cohen et al. 2021, 2022): ``stability_threshold`` compares with
        the Hessian's top eigenvalue, ``preconditioned_stability_threshold`` with Adam's
        preconditioned sharpness. Empty where no such threshold is known (LARS, LAMB)."""
        return {}


@OPTIMIZERS.register("sgd")
@frozen
class SGDConfig(OptimizerConfig):
    """Plain SGD (no momentum), L2 weight decay added to the gradient."""
    lr: float = param(0.1, gt=0, help="base LR, defined at scaling.base_batch_size")

    def transform(self, learning_rate, mask=None):
        return optax.chain(optax.add_decayed_weights(self.weight_decay, mask), optax.sgd(learning_rate))

    def stability_thresholds(self, lr):
        return {"stability_threshold": 2.0 / lr}


@OPTIMIZERS.register("momentum")
@frozen
class MomentumConfig(OptimizerConfig):
    """Heavy-ball (or Nesterov) momentum SGD, L2 weight decay added to the gradient."""
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)

    def transform(self, learning_rate, mask=None):
        return optax.chain(optax.add_decayed_weights(self.weight_decay, mask),
                           optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.nesterov))

    def stability_thresholds(self, lr):
        # heavy ball: (2 + 2 beta) / lr (Cohen et al. 2021, appendix); Nesterov's differs: not stated
        return {} if self.nesterov else {"stability_threshold": (2.0 + 2.0 * self.momentum) / lr}


@frozen
class AdamFamily(OptimizerConfig):
    """Adam-type optimizers: b1, b2 and eps can follow the batch size (``beta*_half_life``,
    ``scaling=sde``); the values used are injected per batch size (``adaptive_hyperparams``)."""
    lr: float = param(0.001, gt=0, help="base LR, defined at scaling.base_batch_size")
    b1: float = param(0.9, **_BETA)
    b2: float = param(0.999, **_BETA)
    eps: float = param(1e-8, gt=0)
    beta1_half_life: float | None = param(
        None, gt=0, help="b1 = 0.5 ** (tokens per step / this), in tokens (examples for classifiers)")
    beta2_half_life: float | None = param(
        None, gt=0, help="b2 = 0.5 ** (tokens per step / this) (Marek et al. 2025)")

    def stability_thresholds(self, lr, b1=None):
        # Adam: the preconditioned sharpness equilibrates at (2 + 2 b1) / ((1 - b1) lr), 38 / lr
        # for b1 = 0.9 (Cohen et al. 2022, arXiv:2207.14484)
        b1 = self.b1 if b1 is None else b1
        return {"preconditioned_stability_threshold": (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)}


@OPTIMIZERS.register("adam")
@frozen
class AdamConfig(AdamFamily):
    """Adam with L2 weight decay added to the gradient (coupled)."""

    def transform(self, learning_rate, mask=None, b1=None, b2=None, eps=None):
        return optax.chain(optax.add_decayed_weights(self.weight_decay, mask),
                           optax.adam(learning_rate, *_betas(self, b1, b2, eps)))


@OPTIMIZERS.register("adamw")
@frozen
class AdamWConfig(AdamFamily):
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019)."""
    weight_decay: float = param(1e-4, ge=0)

    def transform(self, learning_rate, mask=None, b1=None, b2=None, eps=None):
        b1, b2, eps = _betas(self, b1, b2, eps)
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=self.weight_decay,
                           mask=mask)


@OPTIMIZERS.register("lamb")
@frozen
class LambConfig(AdamFamily):
    """LAMB (You et al. 2019)."""
    lr: float = param(0.002, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0)

    def transform(self, learning_rate, mask=None, b1=None, b2=None, eps=None):
        b1, b2, eps = _betas(self, b1, b2, eps)
        return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=self.weight_decay,
                          mask=mask)


@OPTIMIZERS.register("lars")
@frozen
class LarsConfig(OptimizerConfig):
    """LARS (You et al. 2017)."""
    lr: float = param(1.0, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0)
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)
    trust_coefficient: float = param(0.001, gt=0)

    def transform(self, learning_rate, mask=None):
        return optax.lars(learning_rate, weight_decay=self.weight_decay,
                          trust_coefficient=self.trust_coefficient, momentum=self.momentum,
                          nesterov=self.nesterov, weight_decay_mask=True if mask is None else mask)


def _betas(cfg: AdamFamily, b1: Any, b2: Any, eps: Any) -> tuple[Any, Any, Any]:
    return (cfg.b1 if b1 is None else b1, cfg.b2 if b2 is None else b2,
            cfg.eps if eps is None else eps)


def make_optimizer(cfg: OptimizerConfig, *, mask: Any = None,
                   injected: dict[str, float] | None = None) -> optax.GradientTransformation:
    """The optimizer with its LR injected (placeholder 1.0; the train step sets it every step),
    and ``injected`` hyperparameters (b1, b2, eps) that the train step sets per batch size."""
    if mask is None:
        return optax.inject_hyperparams(cfg.transform)(learning_rate=1.0, **(injected or {}))
    # the mask is a function of the params: static (inject_hyperparams takes callables for schedules)
    return optax.inject_hyperparams(cfg.transform, static_args=("mask",))(
        learning_rate=1.0, mask=mask, **(injected or {}))


def adaptive_hyperparams(opt: OptimizerConfig, scaling: "ScalingConfig", batch_size: int,
                         tokens_per_example: int | None) -> tuple[dict[str, float], bool]:
    """(b1, b2, eps used at ``batch_size``, whether any batch-size rule changed them).

    ``scaling=sde`` (Malladi et al. 2022) scales them from ``scaling.base_batch_size``; a
    ``beta*_half_life`` (Marek et al. 2025) fixes b = 0.5 ** (tokens per step / half-life), tokens
    per step = B x T (B for classifiers; the whole optimizer batch when accumulating). Empty
    for optimizers without betas. Raises ConfigError when a rule leaves (0, 1).
    """
    if not isinstance(opt, AdamFamily):
        return {}, False
    values = {"b1": opt.b1, "b2": opt.b2, "eps": opt.eps}
    changed = False
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
    return values, changed


# ------------------------------------------------------------------------- LR scaling rules


@frozen
class ScalingConfig:
    """peak LR = base LR * (B / base_batch_size) ** alpha."""
    name: str = param("none", help="scaling=<name> selects the rule")
    base_batch_size: int = param(128, ge=1, help="the batch size at which optimizer.lr is defined")
    alpha = 0.0
    scales_adam = False  # whether the rule also scales Adam's b1, b2 and eps

    def peak_lr(self, base_lr: float, batch_size: int) -> float:
        return float(base_lr) * (batch_size / self.base_batch_size) ** self.alpha


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
    lr x sqrt(kappa), 1 - b1 and 1 - b2 x kappa, eps / sqrt(kappa) (bench.adam_scaling)."""
    alpha = 0.5
    scales_adam = True
