"""LR schedules (``schedule=<name>``): the multiplier of the peak LR at every step.

``lr(step) = peak_lr * lr_multiplier(cfg.schedule, plan, peak_over_base)(step)``: a linear
warmup over ``plan.warmup_steps`` (from 0, or from the unscaled LR with ``warmup_from=base``,
Goyal et al. 2017), then the option's shape. Every epoch is turned into steps by the job's
:class:`~bench.rules.plan.BatchPlan` (``step_at_epoch``), which owns all step counts; with
Smith et al.'s ``batch_schedule=increase`` the step schedule's decays become the plan's LR
factors (1 while B absorbs the decay), and with Seesaw the cuts where B doubles (1/sqrt(2)).

Adding a schedule: one registered section here (keys + ``after_warmup``) and
``conf/schedule/<name>.yaml``.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from bench.rules.plan import BatchPlan
from bench.schema import ConfigError, Registry, frozen, param

SCHEDULES: Registry["ScheduleConfig"] = Registry("schedule", default="constant")

Multiplier = Callable[[jnp.ndarray], jnp.ndarray]


@frozen
class ScheduleConfig:
    name: str = param("constant", help="schedule=<name> selects the option")
    warmup_steps: int = param(0, ge=0, help="linear LR warmup length in steps")
    warmup_epochs: float = param(0.0, ge=0, help="... or in epochs (not both)")
    warmup_from: str = param("zero", choices=("zero", "base"),
                             help="warmup start: 0, or the unscaled LR (Goyal et al.)")

    def check(self, where: str) -> None:
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError(f"set {where}warmup_steps or {where}warmup_epochs, not both")

    def after_warmup(self, plan: BatchPlan, warmup: int) -> Multiplier:
        raise NotImplementedError


@SCHEDULES.register("constant")
@frozen
class ConstantSchedule(ScheduleConfig):
    """The peak LR after warmup."""

    def after_warmup(self, plan, warmup):
        return optax.constant_schedule(1.0)


@SCHEDULES.register("cosine")
@frozen
class CosineSchedule(ScheduleConfig):
    """Cosine decay from the peak to ``final_fraction`` of it at the end of training."""
    final_fraction: float = param(0.0, ge=0, le=1, help="final LR as a fraction of the peak")

    def after_warmup(self, plan, warmup):
        return optax.cosine_decay_schedule(1.0, max(plan.total_steps - warmup, 1),
                                           alpha=self.final_fraction)


@SCHEDULES.register("step")
@frozen
class StepSchedule(ScheduleConfig):
    """Multiply the LR by ``decay_factor`` at each of ``decay_epochs``."""
    decay_epochs: tuple[float, ...] = param((20.0, 30.0), ge=0, help="epochs of the decays")
    decay_factor: float = param(0.1, gt=0, le=1)

    def after_warmup(self, plan, warmup):
        return piecewise(warmup, [(plan.step_at_epoch(e), self.decay_factor) for e in self.decay_epochs])


@SCHEDULES.register("wsd")
@frozen
class WSDSchedule(ScheduleConfig):
    """Warmup-stable-decay (Hägele et al. 2024, arXiv:2405.18392): the peak LR, then a cooldown
    to ``final_fraction`` of it over the last ``decay_fraction`` of the steps. With s the
    cooldown's progress in [0, 1): linear 1 - (1 - f) s, 1-sqrt f + (1 - f)(1 - sqrt(s))."""
    decay_fraction: float = param(0.2, gt=0, le=1, help="cooldown length as a fraction of training")
    cooldown: str = param("linear", choices=("linear", "1-sqrt"), help="the cooldown's shape")
    final_fraction: float = param(0.0, ge=0, lt=1, help="LR at the end as a fraction of the peak")

    def cooldown_start(self, plan: BatchPlan) -> int:
        """The first step of the cooldown (steps count from 0, warmup included)."""
        return plan.total_steps - max(int(round(self.decay_fraction * plan.total_steps)), 1)

    def after_warmup(self, plan, warmup):
        start = self.cooldown_start(plan)
        if start < warmup:
            raise ConfigError(f"schedule.decay_fraction={self.decay_fraction:g}: the cooldown "
                              f"(from step {start}) overlaps the warmup ({warmup} steps)")
        length, f = plan.total_steps - start, self.final_fraction

        def multiplier(count):  # count: steps since the end of warmup
            s = jnp.clip((count + warmup - start) / length, 0.0, 1.0)
            shape = s if self.cooldown == "linear" else jnp.sqrt(s)
            return 1.0 - (1.0 - f) * shape
        return multiplier


def piecewise(warmup: int, pairs: list[tuple[int, float]]) -> Multiplier:
    """Piecewise constant: multiplied by each factor from its step on (steps count from 0;
    boundaries inside the warmup act at its end)."""
    boundaries: dict[int, float] = {}
    for step, factor in pairs:  # optax counts from the end of warmup
        key = max(step - warmup, 0)
        boundaries[key] = boundaries.get(key, 1.0) * factor
    return optax.piecewise_constant_schedule(1.0, boundaries)


def lr_multiplier(schedule: ScheduleConfig, plan: BatchPlan, peak_over_base: float = 1.0) -> Multiplier:
    """Multiplier of the peak LR per step: warmup, then the schedule's shape.

    ``peak_over_base`` is peak_lr / base_lr; with ``warmup_from=base`` warmup starts at the
    unscaled LR instead of zero.
    """
    warmup = plan.warmup_steps
    # a batch schedule's LR factors (increase, seesaw) replace the schedule's own decay
    after = (piecewise(warmup, plan.lr_factor_steps()) if plan.lr_factors
             else schedule.after_warmup(plan, warmup))
    if warmup == 0:
        return after
    start = (1.0 / peak_over_base) if schedule.warmup_from == "base" else 0.0
    return optax.join_schedules([optax.linear_schedule(start, 1.0, warmup), after], [warmup])
