"""A job config's batch plan: the one place that reads the batch-size rules' narrow inputs
(:class:`~bench.rules.batch_schedules.PlanSpec`) from a whole :class:`~bench.config.Config`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from bench.rules.batch_schedules import PlanSpec, batch_quantum, make_plan
from bench.rules.plan import BatchPlan

if TYPE_CHECKING:  # type hints only: bench.config imports this module
    from bench.config import Config


def plan_spec(cfg: Config, num_devices: int = 1, seeds: Sequence[int] | None = None) -> PlanSpec:
    """The keys of ``cfg`` that its batch plan depends on (seeds: the replicas', by default)."""
    if seeds is None:
        seeds = cfg.replicas.seeds if cfg.replicas.seeds is not None else (cfg.seed,)
    quantum = batch_quantum(cfg.accumulate, num_devices, cfg.model.batch_multiple())
    return PlanSpec(cfg.batch_size, cfg.budget, cfg.schedule, tuple(seeds), quantum)


def job_plan(cfg: Config, num_train: int, num_devices: int = 1, seeds: Sequence[int] | None = None,
             tokens_per_example: int | None = None) -> BatchPlan:
    """The batch plan of a job with config ``cfg`` on ``num_train`` examples."""
    return make_plan(plan_spec(cfg, num_devices, seeds), num_train, cfg.batch_schedule,
                     tokens_per_example)
