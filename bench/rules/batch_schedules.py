"""Batch size over training (``batch_schedule=<name>``) and the plan of a job.

Each option is a registered section whose ``stages(spec, num_train)`` gives the
:class:`~bench.rules.plan.BatchPlan` stages ``[(start_epoch, B)]`` and LR factors;
:func:`make_plan` builds the job's plan (stages, budget, warmup). Both take a
:class:`PlanSpec` (the few keys a plan depends on; bench.job_plan.plan_spec reads it from a
config), never the whole job config.

- ``constant``: B = ``batch_size`` throughout.
- ``increase`` (Smith et al. 2018, "Don't decay the learning rate, increase the batch size"):
  at each ``schedule.decay_epochs`` boundary of the step LR schedule B is multiplied by
  ``factor`` (default 1 / ``schedule.decay_factor``) instead of dividing the LR. B never exceeds
  ``max_batch_size`` (default N rounded down to a valid size); where B cannot grow by the full
  factor, the LR takes the rest. The invariant is the SGD noise scale g ~ lr * N / B: at every
  boundary lr / B is multiplied by ``decay_factor`` exactly as the step schedule would, so the
  LR multiplier there is ``decay_factor * B_new / B_old`` (1 while B grows by the full factor).
- ``warmup``: B grows from ``start_batch_size`` by ``growth`` (e.g. doubling) in equal-length
  stages over ``warmup_epochs``, then stays at ``batch_size``; the LR schedule is unchanged.
- ``seesaw`` (Meterez et al. 2025, arXiv:2510.14717): wherever the LR schedule (any decaying
  one: cosine, wsd, step) run at the constant ``batch_size`` would have cut the LR to half of
  its previous level (the first step after warmup where multiplier <= 2^-k, k = 1, 2, ...),
  B doubles and the LR is multiplied by 1/sqrt(2) instead, so the LR is piecewise constant
  at peak * 2^(-k/2) with B = batch_size * 2^k. Same examples (the budget must not be in
  steps), fewer steps. Beyond ``max_batch_size`` the LR takes the whole cut (1/2).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench.rules.plan import BatchPlan, parse_budget
from bench.rules.lr_schedules import ScheduleConfig, lr_multiplier
from bench.schema import ConfigError, Registry, frozen, param

BATCH_SCHEDULES: Registry["BatchScheduleConfig"] = Registry("batch_schedule", default="constant")

Stages = list[tuple[Any, int]]
LRFactors = list[tuple[float, float]]


def batch_quantum(accumulate: int, num_devices: int = 1, batch_multiple: int = 1) -> int:
    """Every batch size must be a multiple of this: accumulate * lcm(devices, ghost batch)."""
    return accumulate * math.lcm(num_devices, batch_multiple)


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    """What a job's batch plan depends on: its batch size, budget and LR schedule, the seeds of
    its replicas and the quantum every batch size is a multiple of (see :func:`batch_quantum`)."""
    batch_size: int
    budget: str
    schedule: ScheduleConfig
    seeds: tuple[int, ...] = (0,)
    quantum: int = 1


def round_batch(b: float, quantum: int) -> int:
    """The nearest positive multiple of ``quantum``."""
    return max(int(round(b / quantum)) * quantum, quantum)


@frozen
class BatchScheduleConfig:
    name: str = param("constant", help="batch_schedule=<name> selects the option")

    def stages(self, spec: PlanSpec, num_train: int,
               tokens_per_example: int | None = None) -> tuple[Stages, LRFactors]:
        return [(0, spec.batch_size)], []

    def check(self, where: str) -> None:
        pass

    def check_with(self, spec: PlanSpec) -> None:
        """Rules that relate this section to the plan's other inputs."""


@BATCH_SCHEDULES.register("constant")
@frozen
class ConstantBatch(BatchScheduleConfig):
    """Every step uses ``batch_size`` examples (the default)."""


def check_max_batch_size(max_batch_size: int | None, batch_size: int, quantum: int) -> None:
    """A cap on a growing batch: at least the starting B and a multiple of the quantum."""
    if max_batch_size is not None and (max_batch_size < batch_size or max_batch_size % quantum):
        raise ConfigError(f"batch_schedule.max_batch_size={max_batch_size} must be >= "
                          f"batch_size={batch_size} and a multiple of {quantum} "
                          f"(accumulate x devices x ghost batch)")


@BATCH_SCHEDULES.register("increase")
@frozen
class IncreaseBatch(BatchScheduleConfig):
    """Smith et al. 2018: multiply B at the step schedule's decay epochs instead of the LR."""
    factor: float | None = param(None, gt=1, help="B multiplier per boundary (null: 1 / schedule.decay_factor)")
    max_batch_size: int | None = param(None, ge=1, help="cap on B; beyond it the LR decays (null: N)")

    def check_with(self, spec):
        s = spec.schedule
        if s.name != "step" or not s.decay_epochs:
            raise ConfigError("batch_schedule=increase replaces the decays of a step LR schedule;"
                              " use schedule=step with non-empty schedule.decay_epochs")
        if list(s.decay_epochs) != sorted(set(s.decay_epochs)):
            raise ConfigError(f"schedule.decay_epochs={list(s.decay_epochs)} must be strictly"
                              f" increasing for batch_schedule=increase")
        if not s.decay_factor < 1:
            raise ConfigError(f"schedule.decay_factor={s.decay_factor} must be in (0, 1)"
                              f" for batch_schedule=increase")
        check_max_batch_size(self.max_batch_size, spec.batch_size, spec.quantum)

    def stages(self, spec, num_train, tokens_per_example=None):
        cap = self.max_batch_size or (num_train // spec.quantum) * spec.quantum
        return increase_stages(spec.batch_size, spec.schedule.decay_epochs,
                               spec.schedule.decay_factor, factor=self.factor, cap=cap,
                               quantum=spec.quantum)


@BATCH_SCHEDULES.register("warmup")
@frozen
class WarmupBatch(BatchScheduleConfig):
    """B grows start_batch_size, x growth, ... up to batch_size over warmup_epochs."""
    start_batch_size: int = param(32, ge=1, help="first batch size")
    warmup_epochs: float = param(2.0, gt=0, help="epochs until B reaches batch_size")
    growth: float = param(2.0, gt=1, help="B multiplier between the warmup sizes (2: doubling)")

    def check_with(self, spec):
        if self.start_batch_size % spec.quantum or not self.start_batch_size < spec.batch_size:
            raise ConfigError(f"batch_schedule.start_batch_size={self.start_batch_size} must be below"
                              f" batch_size={spec.batch_size} and a multiple of {spec.quantum}"
                              f" (accumulate x devices x ghost batch)")

    def stages(self, spec, num_train, tokens_per_example=None):
        return warmup_stages(self.start_batch_size, spec.batch_size, self.warmup_epochs,
                             growth=self.growth, quantum=spec.quantum), []


@BATCH_SCHEDULES.register("seesaw")
@frozen
class SeesawBatch(BatchScheduleConfig):
    """Meterez et al. 2025: B x 2 and LR x 1/sqrt(2) wherever the LR schedule would halve the LR."""
    max_batch_size: int | None = param(None, ge=1, help="cap on B; beyond it the LR takes the whole cut (null: N)")

    def check_with(self, spec):
        if spec.schedule.name == "constant":
            raise ConfigError("batch_schedule=seesaw turns the LR schedule's decay into batch growth;"
                              " use a decaying schedule (schedule=cosine|wsd|step)")
        if parse_budget(spec.budget)[1] == "steps":
            raise ConfigError(f"batch_schedule=seesaw keeps the examples of the run at constant B and "
                              f"takes fewer steps; give budget in epochs, examples or tokens, not "
                              f"budget={spec.budget}")
        check_max_batch_size(self.max_batch_size, spec.batch_size, spec.quantum)

    def stages(self, spec, num_train, tokens_per_example=None):
        reference = BatchPlan([0], num_train, spec.batch_size, budget=parse_budget(spec.budget),
                              warmup_epochs=spec.schedule.warmup_epochs,
                              warmup_steps=spec.schedule.warmup_steps,
                              tokens_per_example=tokens_per_example)
        steps = jnp.arange(reference.total_steps)
        multiplier = np.asarray(jax.vmap(lr_multiplier(spec.schedule, reference))(steps), np.float64)
        cap = self.max_batch_size or (num_train // spec.quantum) * spec.quantum
        return seesaw_stages(reference, multiplier, cap=cap)


def halving_levels(multiplier: np.ndarray, warmup: int) -> np.ndarray:
    """k(t) = how many times the LR has halved by step t: the largest k with multiplier <= 2^-k
    at t or before (0 during warmup)."""
    m = np.asarray(multiplier, np.float64)
    with np.errstate(divide="ignore"):
        levels = np.floor(-np.log2(np.maximum(m, 0.0)))
    levels = np.clip(np.nan_to_num(levels, posinf=1e9), 0, None)
    levels[:warmup] = 0
    return np.maximum.accumulate(levels).astype(np.int64)


def seesaw_stages(reference: BatchPlan, multiplier: np.ndarray, *, cap: int) -> tuple[Stages, LRFactors]:
    """(stages, LR factors) of Seesaw from the LR multiplier per step of the constant-B run
    ``reference``: at each step where it halves n more times, B x 2 and LR x 1/sqrt(2) for
    each of the n halvings while 2B <= cap, LR x 1/2 for the rest. Boundaries sit at the data
    position of that step in the reference run."""
    levels = halving_levels(multiplier, reference.warmup_steps)
    b = reference.first_batch_size
    stages: Stages = [(0, b)]
    lr_factors: LRFactors = []
    for t in np.nonzero(np.diff(levels, prepend=0))[0]:
        epoch, offset = reference.data_epoch(int(t))
        at = Fraction(epoch) + Fraction(offset, reference.n)
        factor, new = 1.0, b
        for _ in range(int(levels[t] - (levels[t - 1] if t else 0))):
            if 2 * new <= cap:
                new, factor = 2 * new, factor / math.sqrt(2.0)
            else:
                factor /= 2.0
        if new != b:
            stages.append((at, new))
        lr_factors.append((float(at), factor))
        b = new
    return stages, lr_factors


def increase_stages(batch_size: int, decay_epochs: Sequence[float], decay_factor: float, *,
                    factor: float | None, cap: int, quantum: int = 1) -> tuple[Stages, LRFactors]:
    """Smith et al. 2018: (stages, LR factors) replacing a step LR schedule's decays.

    At each boundary B <- min(round(B * factor), cap) and the LR is multiplied by
    ``decay_factor * B_new / B_old``, so lr / B follows the step schedule exactly
    (LR unchanged while B grows by the full 1 / decay_factor).
    """
    factor = 1.0 / decay_factor if factor is None else float(factor)
    cap = (cap // quantum) * quantum
    stages: Stages = [(0, batch_size)]
    lr_factors: LRFactors = []
    b = batch_size
    for e in sorted(decay_epochs):
        new = min(round_batch(b * factor, quantum), max(cap, b))
        lr_factors.append((float(e), decay_factor * new / b))
        if new != b:
            stages.append((e, new))
        b = new
    return stages, lr_factors


def warmup_stages(start: int, batch_size: int, warmup_epochs: float, *, growth: float = 2.0,
                  quantum: int = 1) -> Stages:
    """B = start, start * growth, ... (< batch_size) in equal stages over ``warmup_epochs``."""
    sizes: list[int] = []
    b = float(start)
    while round_batch(b, quantum) < batch_size:
        size = round_batch(b, quantum)
        if not sizes or size > sizes[-1]:
            sizes.append(size)
        b *= growth
    if not sizes:
        return [(0, batch_size)]
    length = Fraction(warmup_epochs).limit_denominator(10**9) / len(sizes)
    return ([(i * length, s) for i, s in enumerate(sizes)]
            + [(Fraction(warmup_epochs).limit_denominator(10**9), batch_size)])


def make_plan(spec: PlanSpec, num_train: int, batch_schedule: BatchScheduleConfig,
              tokens_per_example: int | None = None) -> BatchPlan:
    """The plan of one job: stages from ``batch_schedule``, the budget, the LR warmup.

    Raises ConfigError when the plan does not fit the data (B > N, warmup > training).
    """
    if spec.batch_size > num_train:
        raise ConfigError(
            f"batch_size={spec.batch_size} is larger than the training set ({num_train} examples);"
            f" the largest allowed is {num_train} (full batch)")
    cap = getattr(batch_schedule, "max_batch_size", None)
    if cap is not None and cap > num_train:
        raise ConfigError(f"batch_schedule.max_batch_size={cap} is larger than the training set"
                          f" ({num_train} examples)")
    stages, lr_factors = batch_schedule.stages(spec, num_train, tokens_per_example=tokens_per_example)
    plan = BatchPlan(spec.seeds, num_train, stages, budget=parse_budget(spec.budget),
                     warmup_epochs=spec.schedule.warmup_epochs,
                     warmup_steps=spec.schedule.warmup_steps, lr_factors=lr_factors,
                     name=batch_schedule.name, tokens_per_example=tokens_per_example)
    if plan.warmup_steps > plan.total_steps:
        raise ConfigError(f"warmup ({plan.warmup_steps} steps) is longer than training "
                          f"({plan.total_steps} steps)")
    return plan
