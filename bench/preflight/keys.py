"""Checks of the configuration alone: keys that would do nothing, and numbers that cannot be
what was meant (a learning rate float32 cannot hold, an unsorted schedule)."""

from __future__ import annotations

import numpy as np

from bench.preflight import Check, Context
from bench.schema import ConfigError

# Characters W&B refuses in a project name, and its longest name.
WANDB_FORBIDDEN = "/\\#?%:"
WANDB_MAX_NAME = 128


def metrics_cadence_needs_hessian(ctx: Context) -> None:
    m = ctx.cfg.metrics
    if m.hessian:
        return
    for key in ("every", "dense_every"):
        if getattr(m, key, None) is not None:
            raise ConfigError(f"metrics.{key}={getattr(m, key)} has no effect without "
                              f"metrics.hessian=true; add metrics.hessian=true or remove it")


def dense_cadence_pairs(ctx: Context) -> None:
    m = ctx.cfg.metrics
    every, until = getattr(m, "dense_every", None), getattr(m, "dense_until", 0)
    if every is not None and not until:
        raise ConfigError(f"metrics.dense_every={every} needs metrics.dense_until (the last step of "
                          f"the dense cadence, > 0); set it or remove metrics.dense_every")
    if until and every is None:
        raise ConfigError(f"metrics.dense_until={until} has no effect without metrics.dense_every; "
                          f"set metrics.dense_every or remove metrics.dense_until")


def sharpness_needs_eps(ctx: Context) -> None:
    m = ctx.cfg.metrics
    if m.hessian and getattr(m, "sharpness", False) and not tuple(getattr(m, "sharpness_eps", (1,))):
        raise ConfigError("metrics.sharpness_eps=[] with metrics.sharpness=true measures nothing; "
                          "give at least one epsilon (e.g. [1e-3]) or set metrics.sharpness=false")


def ghost_batch_needs_batch_norm(ctx: Context) -> None:
    model = ctx.cfg.model
    ghost = getattr(model, "ghost_batch_size", None)
    if ghost is not None and getattr(model, "batch_norm", True) is False:
        raise ConfigError(f"model.ghost_batch_size={ghost} has no effect without BatchNorm; add "
                          f"model.batch_norm=true or remove model.ghost_batch_size")


def cnn_has_convolutions(ctx: Context) -> None:
    model = ctx.cfg.model
    if model.name == "cnn" and not tuple(model.channels):
        raise ConfigError("model.channels=[] builds a CNN without convolutions; give at least one "
                          "width (e.g. [32]) or use model=mlp")


def logger_mode_needs_wandb(ctx: Context) -> None:
    logger = ctx.cfg.logger
    # offline is the section's default (a config built from a dict without logger.mode)
    if logger.name == "none" and getattr(logger, "mode", "disabled") == "online":
        raise ConfigError(f"logger.mode={logger.mode} has no effect with logger=none; use "
                          f"logger=wandb logger.mode={logger.mode}, or remove logger.mode")


def wandb_project_name(ctx: Context) -> None:
    project = getattr(ctx.cfg.logger, "project", None)
    if project is None or ctx.cfg.logger.name == "none":
        return
    bad = sorted({c for c in project if c in WANDB_FORBIDDEN or not c.isprintable()})
    if not project or bad or len(project) > WANDB_MAX_NAME:
        raise ConfigError(f"logger.project={project!r} is not a W&B project name: 1 to "
                          f"{WANDB_MAX_NAME} characters, none of {' '.join(WANDB_FORBIDDEN)}")


def lr_fits_float32(ctx: Context) -> None:
    """Parameters are float32: a smaller LR than its smallest normal number is 0 or denormal."""
    tiny = float(np.finfo(np.float32).tiny)
    lrs = [("optimizer.lr", ctx.cfg.optimizer.lr)]
    lrs += [(f"replicas.lr[{i}]", lr) for i, lr in enumerate(ctx.cfg.replicas.lr or ())]
    for key, lr in lrs:
        if 0 < lr < tiny:
            raise ConfigError(f"{key}={lr:g} is below float32's smallest normal number ({tiny:.3g}): "
                              f"training would use {float(np.float32(lr)):g}; use a value >= {tiny:.3g}")


def decay_epochs_sorted(ctx: Context) -> None:
    epochs = getattr(ctx.cfg.schedule, "decay_epochs", None)
    if not epochs:
        return
    epochs = list(epochs)
    if epochs[0] <= 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ConfigError(f"schedule.decay_epochs={epochs} must be increasing epochs > 0 "
                          f"(each a point in training where the LR decays)")


def eval_cadence_keys(ctx: Context) -> None:
    for b in (ctx.cfg.eval.every_steps_at or {}):
        if b < 1:
            raise ConfigError(f"eval.every_steps_at has batch size {b}; its keys are batch sizes "
                              f"of the run (>= 1), e.g. {{{ctx.cfg.batch_size}: 50}}")


CHECKS: list[Check] = [
    metrics_cadence_needs_hessian, dense_cadence_pairs, sharpness_needs_eps,
    ghost_batch_needs_batch_norm, cnn_has_convolutions, logger_mode_needs_wandb,
    wandb_project_name, lr_fits_float32, decay_epochs_sorted, eval_cadence_keys,
]
