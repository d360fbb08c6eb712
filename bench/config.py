"""The configuration of one job: every key, its default, type and range, stated once here or
in the registered option sections (bench.data, bench.models, bench.optim, bench.rules.lr_schedules,
bench.rules.batch_schedules, bench.core.tracking).

Hydra composes ``conf/`` on top of these defaults (``bench.hydra_conf`` registers them);
:func:`from_dict` turns the composed dict into frozen dataclasses, refusing unknown keys, wrong
types and out-of-range values, and :func:`validate` checks the rules that relate keys, all with
one-line :class:`ConfigError` messages before anything is compiled; with ``run=True`` it also
runs bench.preflight's checks of the data's metadata and the output paths.
"""

from __future__ import annotations

from typing import Any, Mapping

from bench.data import DATASETS, DatasetConfig
from bench.job_plan import plan_spec
from bench.rules.batch_schedules import BATCH_SCHEDULES, BatchScheduleConfig
from bench.rules.plan import parse_budget
from bench.metrics.suite import MetricsConfig  # the union of the curvature metrics' keys
from bench.models import MODELS, ModelConfig
from bench.optim import OPTIMIZERS, AdamFamily, OptimizerConfig
from bench.rules.lr_scaling import SCALING_RULES, ScalingConfig
from bench.rules.lr_schedules import SCHEDULES, ScheduleConfig
from bench.schema import (ConfigError, Registry, build, frozen, group, param, result_view,
                          section, to_dict)
from bench.core.tracking import LOGGERS, LoggerConfig

__all__ = ["Config", "ConfigError", "GROUPS", "as_dict", "from_dict", "from_hydra", "parse_budget",
           "validate"]

# Every config group: the key of the root config -> its registry of options.
GROUPS: dict[str, Registry] = {
    "dataset": DATASETS, "model": MODELS, "optimizer": OPTIMIZERS, "scaling": SCALING_RULES,
    "schedule": SCHEDULES, "batch_schedule": BATCH_SCHEDULES, "logger": LOGGERS,
}
# Optimizers whose step is theta -= lr P^-1 m with Adam's diagonal P (metrics.preconditioned);
# LAMB rescales each layer's step by a trust ratio, so P^-1 H is not its stability operator.
PRECONDITIONED_OPTIMIZERS = ("adam", "adamw")
# Seeds feed numpy's SeedSequence (non-negative) and JAX's int64 PRNG keys.
MAX_SEED = 2**63 - 1
# Fused steps per call: beyond this a call's compile time (its scan is unrolled on CPU) grows
# with no gain, the host overhead per step being already negligible.
MAX_STEPS_PER_CALL = 1000
# Root keys that are metadata of a preset or sweep, not settings of a job.
NOT_SETTINGS = ("sweep", "hydra", "reproduce")


@frozen
class EvalConfig:
    every_steps: int = param(100, ge=1, help="full train-set and test-set evaluation cadence")
    batch_size: int = param(1000, ge=1, help="examples per evaluation chunk")
    train_examples: int | None = param(
        None, ge=1, help="train loss/accuracy on the first n training examples (null: all of "
                         "them); the test set is always evaluated whole")
    every_steps_at: dict[int, int] | None = param(
        None, ge=1, help="per-batch-size cadence {B: steps}, overrides every_steps at those B")
    ewa_decay: float | None = param(
        None, ge=0, lt=1, help="evaluate an exponentially weighted average of the weights "
                               "(Zhang et al. 2024), decay per step; null: the weights themselves")
    write_every_seconds: float = param(
        30.0, ge=0, results=False,
        help="mid-run record refresh; always written at the end, on divergence, preemption, checkpoints")

    def cadence(self, batch_size: int) -> int:
        """Steps between evaluations at this batch size."""
        return (self.every_steps_at or {}).get(batch_size, self.every_steps)


@frozen
class TargetConfig:
    """Convergence speed: the first evaluation reaching these (null: not measured)."""
    test_accuracy: float | None = param(0.85, gt=0, le=1, help="the default MNIST-1D goal")
    train_loss: float | None = param(None, ge=0)
    test_loss: float | None = param(None, ge=0, help="steps / tokens to this test loss (Zhang et al.)")


@frozen
class ReplicasConfig:
    """K replicas trained at once (vmap): base LRs x seeds."""
    lr: tuple[float, ...] | None = param(None, gt=0, help="base LRs (before the scaling rule)")
    seeds: tuple[int, ...] | None = param(None, ge=0, le=MAX_SEED)

    def check(self, where: str) -> None:
        for key in ("lr", "seeds"):
            if getattr(self, key) == ():
                raise ConfigError(f"{where}{key} is an empty list; give at least one value or null")


@frozen
class CheckpointConfig:
    every_steps: int | None = param(None, ge=1, help="orbax checkpoint cadence (signals always save)")
    max_to_keep: int = param(2, ge=1)


@frozen
class DistributedConfig:
    """Several JAX processes (jax.distributed). Under SLURM (srun, one task per node or GPU)
    nothing needs setting; on one machine give all three (CPU collectives then use gloo)."""
    coordinator: str | None = param(None, help="host:port of process 0, e.g. 127.0.0.1:12345")
    num_processes: int | None = param(None, ge=1)
    process_id: int | None = param(None, ge=0)

    def check(self, where: str) -> None:
        given = [k for k in ("coordinator", "num_processes", "process_id") if getattr(self, k) is not None]
        if given and len(given) < 3:
            raise ConfigError(f"{where}coordinator, {where}num_processes and {where}process_id go "
                              f"together (got only {', '.join(where + k for k in given)})")
        if self.process_id is not None and self.num_processes is not None and \
                self.process_id >= self.num_processes:
            raise ConfigError(f"{where}process_id={self.process_id} must be below "
                              f"{where}num_processes={self.num_processes}")


@frozen
class Config:
    dataset: DatasetConfig = group(DATASETS)
    model: ModelConfig = group(MODELS)
    optimizer: OptimizerConfig = group(OPTIMIZERS)
    scaling: ScalingConfig = group(SCALING_RULES)
    schedule: ScheduleConfig = group(SCHEDULES)
    batch_schedule: BatchScheduleConfig = group(BATCH_SCHEDULES)
    logger: LoggerConfig = group(LOGGERS, results=False)
    eval: EvalConfig = section(EvalConfig)
    target: TargetConfig = section(TargetConfig)
    replicas: ReplicasConfig = section(ReplicasConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig, results=False)
    distributed: DistributedConfig = section(DistributedConfig, results=False)
    seed: int = param(0, ge=0, le=MAX_SEED,
                      help="root seed of the replica (init, dropout, data order, probes)")
    loss: str = param("cross_entropy", choices=("cross_entropy", "mse"),
                      help="mse: Cohen et al.'s 0.5 ||f(x) - onehot(y)||^2 per example")
    batch_size: int = param(128, ge=1, help="examples per step (the peak B with batch_schedule)")
    budget: str = param("40epochs", help="training length: <n>steps, <n>epochs, <n>examples or "
                                         "<n>tokens (language data)")
    accumulate: int = param(1, ge=1, help="microbatches per step (gradient accumulation)")
    steps_per_call: int = param(25, ge=1, le=MAX_STEPS_PER_CALL,
                                help="training steps fused into one jitted call (at most up to "
                                     "the next evaluation)")
    save_params: bool = param(False, help="store final params beside the record")
    output_dir: str | None = param(None, results=False, help="default: Hydra's run directory")
    progress: bool = param(True, results=False, help="progress bar and eval lines")
    name: str | None = param(None, results=False, help="free-form label (W&B name, reports)")
    source: str | None = param(None, results=False, help="citation of a paper preset")
    compile_cache_dir: str | None = param(
        "auto", results=False, help="JAX persistent compilation cache (auto: $BATCH_BENCH_COMPILE_CACHE"
                                    " or ~/.cache/batch-bench/jax-compile; null: off)")

    def check(self, where: str) -> None:
        parse_budget(self.budget)


def from_dict(data: Mapping[str, Any]) -> Config:
    """A Config from a plain nested dict (missing keys: defaults); unknown keys, wrong types and
    out-of-range values raise ConfigError."""
    data = {k: v for k, v in data.items() if k not in NOT_SETTINGS}
    return build(Config, data)


def from_hydra(cfg: Any) -> Config:
    """A Config from Hydra's composed DictConfig (its ``hydra`` node, if returned, left out)."""
    from omegaconf import OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return from_dict({k: plain(cfg[k]) for k in cfg if k not in NOT_SETTINGS})


def validate(cfg: Config, *, num_devices: int = 1, run: bool = False, data: Any = None) -> Config:
    """The rules that relate keys of different sections (types and ranges were checked when the
    Config was built) and bench.preflight's checks; ``run``: also those of the data's metadata
    and the output paths, before a job runs (``data``: the dataset already loaded, else
    described from ``cfg.dataset``). Raises ConfigError with one clear line."""
    if cfg.batch_size % cfg.accumulate:
        raise ConfigError(f"accumulate={cfg.accumulate} must divide batch_size={cfg.batch_size}")
    micro = cfg.batch_size // cfg.accumulate
    if micro % num_devices:
        raise ConfigError(
            f"batch_size={cfg.batch_size} (microbatch {micro}) is not divisible by the number of "
            f"devices ({num_devices}); use a multiple of {num_devices}")
    ghost = cfg.model.batch_multiple()
    if micro % ghost:
        raise ConfigError(f"model.ghost_batch_size={ghost} must divide the microbatch size {micro}")
    cfg.batch_schedule.check_with(plan_spec(cfg, num_devices))
    cfg.optimizer.check_with(cfg)
    cfg.scaling.check_with(cfg)
    if cfg.metrics.preconditioned and cfg.optimizer.name not in PRECONDITIONED_OPTIMIZERS:
        raise ConfigError(f"metrics.preconditioned=true measures Adam's preconditioned sharpness; use "
                          f"optimizer={'|'.join(PRECONDITIONED_OPTIMIZERS)} (got optimizer={cfg.optimizer.name})")
    if cfg.scaling.scales_adam:
        if not isinstance(cfg.optimizer, AdamFamily):
            raise ConfigError(f"scaling={cfg.scaling.name} scales Adam's b1, b2 and eps; use "
                              f"optimizer={'|'.join(n for n in OPTIMIZERS.names if isinstance(OPTIMIZERS.create(n), AdamFamily))}")
        both = [k for k in ("beta1_half_life", "beta2_half_life") if getattr(cfg.optimizer, k) is not None]
        if both:
            raise ConfigError(f"scaling={cfg.scaling.name} and optimizer.{both[0]} both set "
                              f"b{both[0][4]}; choose one rule")
    from bench import preflight
    from bench.data.base import data_info

    streamed = getattr(cfg.dataset, "loader", "memory") == "stream"
    info = None if not run else cfg.dataset.describe() if data is None else data_info(data, streamed)
    preflight.run(cfg, num_devices=num_devices, data=info)
    return cfg


def as_dict(cfg: Config) -> dict[str, Any]:
    """The whole config as plain JSON types (what records and W&B store)."""
    return to_dict(cfg)


def result_config(cfg: Config) -> dict[str, Any]:
    """The keys that can change results (what the config hash covers)."""
    return result_view(cfg)
