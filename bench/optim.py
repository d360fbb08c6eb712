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

from bench.schema import Registry, frozen, param

OPTIMIZERS: Registry["OptimizerConfig"] = Registry("optimizer", default="momentum")
SCALING_RULES: Registry["ScalingConfig"] = Registry("scaling", default="none")

_BETA = {"ge": 0.0, "lt": 1.0}


@frozen
class OptimizerConfig:
    name: str = param("momentum", help="optimizer=<name> selects the option")
    lr: float = param(0.05, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(0.0, ge=0)

    def transform(self, learning_rate: Any) -> optax.GradientTransformation:
        raise NotImplementedError


@OPTIMIZERS.register("sgd")
@frozen
class SGDConfig(OptimizerConfig):
    """Plain SGD (no momentum), L2 weight decay added to the gradient."""
    lr: float = param(0.1, gt=0, help="base LR, defined at scaling.base_batch_size")

    def transform(self, learning_rate):
        return optax.chain(optax.add_decayed_weights(self.weight_decay), optax.sgd(learning_rate))


@OPTIMIZERS.register("momentum")
@frozen
class MomentumConfig(OptimizerConfig):
    """Heavy-ball (or Nesterov) momentum SGD, L2 weight decay added to the gradient."""
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)

    def transform(self, learning_rate):
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.nesterov))


@frozen
class _AdamFamily(OptimizerConfig):
    lr: float = param(0.001, gt=0, help="base LR, defined at scaling.base_batch_size")
    b1: float = param(0.9, **_BETA)
    b2: float = param(0.999, **_BETA)
    eps: float = param(1e-8, gt=0)


@OPTIMIZERS.register("adam")
@frozen
class AdamConfig(_AdamFamily):
    """Adam with L2 weight decay added to the gradient (coupled)."""

    def transform(self, learning_rate):
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.adam(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps))


@OPTIMIZERS.register("adamw")
@frozen
class AdamWConfig(_AdamFamily):
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019)."""
    weight_decay: float = param(1e-4, ge=0)

    def transform(self, learning_rate):
        return optax.adamw(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps,
                           weight_decay=self.weight_decay)


@OPTIMIZERS.register("lamb")
@frozen
class LambConfig(_AdamFamily):
    """LAMB (You et al. 2019)."""
    lr: float = param(0.002, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0)

    def transform(self, learning_rate):
        return optax.lamb(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps,
                          weight_decay=self.weight_decay)


@OPTIMIZERS.register("lars")
@frozen
class LarsConfig(OptimizerConfig):
    """LARS (You et al. 2017)."""
    lr: float = param(1.0, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0)
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)
    trust_coefficient: float = param(0.001, gt=0)

    def transform(self, learning_rate):
        return optax.lars(learning_rate, weight_decay=self.weight_decay,
                          trust_coefficient=self.trust_coefficient, momentum=self.momentum,
                          nesterov=self.nesterov)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optimizer with its LR injected (placeholder 1.0; the train step sets it every step)."""
    return optax.inject_hyperparams(cfg.transform)(learning_rate=1.0)


# ------------------------------------------------------------------------- LR scaling rules


@frozen
class ScalingConfig:
    """peak LR = base LR * (B / base_batch_size) ** alpha."""
    name: str = param("none", help="scaling=<name> selects the rule")
    base_batch_size: int = param(128, ge=1, help="the batch size at which optimizer.lr is defined")
    alpha = 0.0

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
