"""Structured, validated configuration.

Hydra composes ``conf/`` into a DictConfig; :func:`from_hydra` turns it into frozen dataclasses
and :func:`validate` checks every value before anything is compiled. Each failure is one
:class:`ConfigError` whose message names the bad value and what is allowed. An unknown key is
an error (init2winit's rule): a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

DATASETS = ("mnist1d", "digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
MODELS = ("mlp", "cnn", "resnet")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("constant", "cosine", "step")
SCALING_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
BATCH_SCHEDULES = ("constant", "increase", "warmup")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line, meant for the user."""


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "mnist1d"
    data_dir: str | None = None        # TFDS data_dir (prepared ArrayRecord data)
    num_train: int | None = None       # optional subset of the training set (first n)
    seed: int = 0                      # split / generation seed where the dataset has one
    # synthetic teacher-student task
    input_dim: int = 32
    num_classes: int = 10
    teacher_width: int = 64
    synthetic_train: int = 4096
    synthetic_test: int = 1024
    label_noise: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    hidden: tuple[int, ...] = (256,)   # MLP hidden layers / CNN head layers
    channels: tuple[int, ...] = (32, 32, 32)  # CNN conv layers
    kernel_size: int = 5
    pool_size: int = 0                 # max-pool window after each conv (0 = no pooling)
    pool_stride: int = 2
    conv_stride: int = 1
    batch_norm: bool = False
    dropout: float = 0.0
    depth: int = 8                     # ResNet depth 6n+2
    width: int = 16                    # ResNet base width
    ghost_batch_size: int | None = None  # Hoffer et al. ghost batch norm (None = global batch)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "momentum"
    lr: float = 0.05                   # base LR, defined at scaling.base_batch_size
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    trust_coefficient: float = 0.001   # LARS


@dataclass(frozen=True)
class ScalingConfig:
    rule: str = "none"                 # none | sqrt | linear
    base_batch_size: int = 128

    @property
    def alpha(self) -> float:
        return SCALING_RULES[self.rule]


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_from: str = "zero"          # zero | base (Goyal: start at the unscaled LR)
    decay_epochs: tuple[float, ...] = ()  # step schedule boundaries, in epochs
    decay_factor: float = 0.1
    final_fraction: float = 0.0        # cosine: LR at the end as a fraction of the peak


@dataclass(frozen=True)
class BatchScheduleConfig:
    """Batch size over training (bench.data.batching.BatchPlan); B = batch_size when constant."""
    name: str = "constant"             # constant | increase | warmup
    # increase (Smith et al. 2018): at schedule.decay_epochs multiply B instead of decaying the LR
    factor: float | None = None        # B multiplier per boundary (None: 1 / schedule.decay_factor)
    max_batch_size: int | None = None  # cap; beyond it the LR decays (None: training-set size)
    # warmup: B grows start_batch_size, x growth, ... up to batch_size over warmup_epochs
    start_batch_size: int | None = None
    warmup_epochs: float = 0.0
    growth: float = 2.0


BUDGET_UNITS = ("steps", "epochs", "examples")


def parse_budget(budget: str) -> tuple[float, str]:
    """'3000steps' -> (3000.0, 'steps'); also '40epochs', '1000000examples' (big_vision style)."""
    text = str(budget).strip().replace("_", "")
    for unit in BUDGET_UNITS:
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0 and (unit == "epochs" or value == int(value)):
                return value, unit
            break
    raise ConfigError(f"budget={budget!r} must be a positive number followed by a unit, like "
                      f"'3000steps', '40epochs' or '1000000examples'")


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 100
    batch_size: int = 1000
    write_every_seconds: float = 30.0  # refresh records on disk at most this often mid-run


@dataclass(frozen=True)
class TargetConfig:
    test_accuracy: float | None = None
    train_loss: float | None = None


@dataclass(frozen=True)
class ReplicasConfig:
    lr: tuple[float, ...] | None = None     # base LRs (before the scaling rule)
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LoggerConfig:
    name: str = "wandb"
    mode: str = "offline"
    project: str = "batch-bench"
    entity: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """Curvature and noise-scale measurements (see bench.metrics.curvature)."""
    hessian: bool = False
    every: int | None = None           # steps between measurements (None: at the end only)
    subset_size: int = 10000
    chunk_size: int = 1000
    top_k: int = 1
    lanczos_iters: int = 30
    power_iters: int = 50
    hutchinson_probes: int = 64
    density: bool = True
    slq_probes: int = 4
    density_grid: int = 256
    sharpness: bool = True
    sharpness_eps: tuple[float, ...] = (1e-3, 5e-4)
    sharpness_subspace_dim: int = 100
    sharpness_iters: int = 10
    noise_scale: bool = True
    noise_small_batch: int = 32
    noise_num_small: int = 16
    noise_ema: float = 0.9


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int | None = None     # None: only on preemption signals
    max_to_keep: int = 2


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    batch_schedule: BatchScheduleConfig = field(default_factory=BatchScheduleConfig)
    seed: int = 0
    batch_size: int = 128
    budget: str = "40epochs"           # training length: '<n>steps', '<n>epochs' or '<n>examples'
    accumulate: int = 1
    steps_per_call: int = 25           # training steps fused into one jitted call
    save_params: bool = False          # store final parameters beside the record
    output_dir: str | None = None      # default: Hydra's run directory
    progress: bool = True
    name: str | None = None            # free-form experiment label (e.g. a preset name)
    source: str | None = None          # citation for paper presets


# ----------------------------------------------------------------------------------------
# dict -> dataclass with unknown-key errors


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)};"
            f" allowed under '{where.rstrip('.') or 'top level'}': {', '.join(sorted(hints))}")
    kwargs = {}
    for name, value in data.items():
        sub = _nested_types.get((cls, name))
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{name}: expected a group of settings, got {value!r}")
            kwargs[name] = _build(sub, value, f"{where}{name}.")
        elif isinstance(value, (list, tuple)):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_nested_types = {
    (Config, f.name): f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING
}


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build a Config from a plain nested dict; unknown keys raise ConfigError."""
    data = dict(data)
    data.pop("sweep", None)  # named-sweep metadata, not a hyperparameter
    data.pop("hydra", None)
    return _build(Config, data, "")


def from_hydra(cfg: Any) -> Config:
    from omegaconf import OmegaConf

    return from_dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------
# validation


def _names(options: Any) -> str:
    return ", ".join(options)


def validate(cfg: Config, *, num_devices: int = 1) -> Config:
    """Static checks (no data needed). Raises ConfigError with one clear line."""
    if cfg.dataset.name not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg.dataset.name!r}; valid: {_names(DATASETS)}")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.model.name!r}; valid: {_names(MODELS)}")
    if cfg.optimizer.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer.name!r}; valid: {_names(OPTIMIZERS)}")
    if cfg.schedule.name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.schedule.name!r}; valid: {_names(SCHEDULES)}")
    if cfg.scaling.rule not in SCALING_RULES:
        raise ConfigError(f"unknown scaling rule {cfg.scaling.rule!r}; valid: {_names(SCALING_RULES)}")
    if cfg.logger.name not in LOGGERS:
        raise ConfigError(f"unknown logger {cfg.logger.name!r}; valid: {_names(LOGGERS)}")
    if cfg.logger.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={cfg.logger.mode!r} is not allowed; valid: {_names(WANDB_MODES)}")
    if cfg.schedule.warmup_from not in ("zero", "base"):
        raise ConfigError(f"schedule.warmup_from={cfg.schedule.warmup_from!r}; valid: zero, base")

    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be an integer >= 1")
    if cfg.accumulate < 1 or cfg.batch_size % cfg.accumulate:
        raise ConfigError(f"accumulate={cfg.accumulate} must be >= 1 and divide batch_size={cfg.batch_size}")
    micro = cfg.batch_size // cfg.accumulate
    if micro % num_devices:
        raise ConfigError(
            f"batch_size={cfg.batch_size} (microbatch {micro}) is not divisible by the number of "
            f"devices ({num_devices}); use a multiple of {num_devices}")
    if cfg.scaling.base_batch_size < 1:
        raise ConfigError(f"scaling.base_batch_size={cfg.scaling.base_batch_size} must be >= 1")

    lrs = cfg.replicas.lr if cfg.replicas.lr is not None else (cfg.optimizer.lr,)
    for lr in lrs:
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning rate {lr!r} must be a finite number > 0")
    if cfg.replicas.lr is not None and len(cfg.replicas.lr) == 0:
        raise ConfigError("replicas.lr is an empty list; give at least one learning rate or null")
    if cfg.replicas.seeds is not None and len(cfg.replicas.seeds) == 0:
        raise ConfigError("replicas.seeds is an empty list; give at least one seed or null")

    parse_budget(cfg.budget)
    if cfg.schedule.warmup_steps < 0 or cfg.schedule.warmup_epochs < 0:
        raise ConfigError("schedule.warmup_steps and schedule.warmup_epochs must be >= 0")
    if cfg.schedule.warmup_steps and cfg.schedule.warmup_epochs:
        raise ConfigError("set schedule.warmup_steps or schedule.warmup_epochs, not both")
    if cfg.eval.every_steps < 1:
        raise ConfigError(f"eval.every_steps={cfg.eval.every_steps} must be >= 1")
    if cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.batch_size={cfg.eval.batch_size} must be >= 1")
    if not cfg.eval.write_every_seconds >= 0:
        raise ConfigError(f"eval.write_every_seconds={cfg.eval.write_every_seconds} must be >= 0"
                          " (0: write the records at every evaluation)")
    if cfg.steps_per_call < 1:
        raise ConfigError(f"steps_per_call={cfg.steps_per_call} must be >= 1")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    if cfg.target.test_accuracy is not None and not 0.0 < cfg.target.test_accuracy <= 1.0:
        raise ConfigError(f"target.test_accuracy={cfg.target.test_accuracy} must be in (0, 1]")
    if cfg.model.ghost_batch_size is not None and (
            cfg.model.ghost_batch_size < 1 or micro % cfg.model.ghost_batch_size):
        raise ConfigError(
            f"model.ghost_batch_size={cfg.model.ghost_batch_size} must divide the microbatch size {micro}")
    if cfg.metrics.every is not None and cfg.metrics.every < 1:
        raise ConfigError(f"metrics.every={cfg.metrics.every} must be >= 1 or null")
    bs = cfg.batch_schedule
    quantum = cfg.accumulate * math.lcm(num_devices, cfg.model.ghost_batch_size or 1)
    valid_b = f"a multiple of {quantum} (accumulate x devices x ghost batch)"
    if bs.name not in BATCH_SCHEDULES:
        raise ConfigError(f"unknown batch_schedule {bs.name!r}; valid: {_names(BATCH_SCHEDULES)}")
    if bs.name == "increase" and (cfg.schedule.name != "step" or not cfg.schedule.decay_epochs):
        raise ConfigError("batch_schedule=increase replaces the decays of a step LR schedule;"
                          " use schedule=step with non-empty schedule.decay_epochs")
    if bs.name == "increase" and list(cfg.schedule.decay_epochs) != sorted(set(cfg.schedule.decay_epochs)):
        raise ConfigError(f"schedule.decay_epochs={list(cfg.schedule.decay_epochs)} must be strictly"
                          f" increasing for batch_schedule=increase")
    if bs.name == "increase" and not 0 < cfg.schedule.decay_factor < 1:
        raise ConfigError(f"schedule.decay_factor={cfg.schedule.decay_factor} must be in (0, 1)"
                          f" for batch_schedule=increase")
    if bs.name == "increase" and bs.factor is not None and not bs.factor > 1:
        raise ConfigError(f"batch_schedule.factor={bs.factor} must be > 1 (or null: 1 / schedule.decay_factor)")
    if bs.name == "increase" and bs.max_batch_size is not None and (
            bs.max_batch_size < cfg.batch_size or bs.max_batch_size % quantum):
        raise ConfigError(f"batch_schedule.max_batch_size={bs.max_batch_size} must be >= batch_size="
                          f"{cfg.batch_size} and {valid_b}")
    if bs.name == "warmup" and (bs.start_batch_size is None or bs.start_batch_size % quantum
                                or not 1 <= bs.start_batch_size < cfg.batch_size):
        raise ConfigError(f"batch_schedule.start_batch_size={bs.start_batch_size} must be below"
                          f" batch_size={cfg.batch_size} and {valid_b}")
    if bs.name == "warmup" and not bs.warmup_epochs > 0:
        raise ConfigError(f"batch_schedule.warmup_epochs={bs.warmup_epochs} must be > 0 for batch_schedule=warmup")
    if bs.name == "warmup" and not bs.growth > 1:
        raise ConfigError(f"batch_schedule.growth={bs.growth} must be > 1")
    return cfg


def validate_with_data(cfg: Config, num_train: int) -> None:
    """Checks that need the training-set size (still before any compile)."""
    if cfg.batch_size > num_train:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the training set ({num_train} examples);"
            f" the largest allowed is {num_train} (full batch)")
    cap = cfg.batch_schedule.max_batch_size
    if cfg.batch_schedule.name == "increase" and cap is not None and cap > num_train:
        raise ConfigError(f"batch_schedule.max_batch_size={cap} is larger than the training set"
                          f" ({num_train} examples)")
    steps = total_steps(cfg, num_train)
    warm = warmup_steps(cfg, num_train)
    if warm > steps:
        raise ConfigError(f"warmup ({warm} steps) is longer than training ({steps} steps)")


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    """Steps in one pass over the data, dropping the last partial batch."""
    return max(num_train // cfg.batch_size, 1)


def total_steps(cfg: Config, num_train: int) -> int:
    value, unit = parse_budget(cfg.budget)
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        return max(int(round(value * steps_per_epoch(cfg, num_train))), 1)
    return max(int(value) // cfg.batch_size, 1)


def warmup_steps(cfg: Config, num_train: int) -> int:
    if cfg.schedule.warmup_epochs:
        return int(round(cfg.schedule.warmup_epochs * steps_per_epoch(cfg, num_train)))
    return int(cfg.schedule.warmup_steps)


def scaled_lr(base_lr: float, batch_size: int, scaling: ScalingConfig) -> float:
    """lr = base_lr * (B / base_batch_size) ** alpha, alpha = 0 (none), 0.5 (sqrt), 1 (linear)."""
    return float(base_lr) * (batch_size / scaling.base_batch_size) ** scaling.alpha


def as_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
