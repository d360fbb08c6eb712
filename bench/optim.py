"""Optimizers, LR schedules with warmup, and batch-size LR scaling rules (all optax).

The learning rate is an injected hyperparameter (``optax.inject_hyperparams``), so each
vectorized replica carries its own value in its optimizer state. The schedule is a *shape*
(a multiplier of the peak LR, a pure function of the step), so
``lr(step) = peak_lr * shape(step)`` with ``peak_lr = base_lr * (B / base_B) ** alpha``.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from bench.config import Config, OptimizerConfig, total_steps, warmup_steps, steps_per_epoch

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The named optax optimizer with its LR injected (placeholder value 1.0, set per step)."""
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        factory = lambda learning_rate: optax.chain(
            optax.add_decayed_weights(wd), optax.sgd(learning_rate))
    elif cfg.name == "momentum":
        factory = lambda learning_rate: optax.chain(
            optax.add_decayed_weights(wd),
            optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov))
    elif cfg.name == "adam":
        factory = lambda learning_rate: optax.chain(
            optax.add_decayed_weights(wd),
            optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif cfg.name == "adamw":
        factory = lambda learning_rate: optax.adamw(
            learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd)
    elif cfg.name == "lars":
        factory = lambda learning_rate: optax.lars(
            learning_rate, weight_decay=wd, trust_coefficient=cfg.trust_coefficient,
            momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "lamb":
        factory = lambda learning_rate: optax.lamb(
            learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    return optax.inject_hyperparams(factory)(learning_rate=1.0)


def lr_shape(cfg: Config, num_train: int, peak_over_base: float = 1.0) -> Schedule:
    """Multiplier of the peak LR at each step: warmup, then constant / cosine / step decay.

    ``peak_over_base`` is peak_lr / base_lr; with ``schedule.warmup_from=base`` warmup starts at
    the unscaled LR (Goyal et al. 2017) instead of zero.
    """
    s = cfg.schedule
    steps = total_steps(cfg, num_train)
    warm = warmup_steps(cfg, num_train)
    spe = steps_per_epoch(cfg, num_train)
    decay_steps = max(steps - warm, 1)
    if s.name == "constant":
        after = optax.constant_schedule(1.0)
    elif s.name == "cosine":
        after = optax.cosine_decay_schedule(1.0, decay_steps, alpha=s.final_fraction)
    elif s.name == "step":
        boundaries = {max(int(round(e * spe)) - warm, 0): s.decay_factor for e in s.decay_epochs}
        after = optax.piecewise_constant_schedule(1.0, boundaries)
    else:
        raise ValueError(f"unknown schedule {s.name!r}")
    if warm == 0:
        return after
    start = (1.0 / peak_over_base) if s.warmup_from == "base" else 0.0
    warmup = optax.linear_schedule(start, 1.0, warm)
    return optax.join_schedules([warmup, after], [warm])
