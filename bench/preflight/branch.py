"""Checks of a branch (``init_from``, bench.core.branch): keys that do nothing without it, and,
before a job runs, the parent's checkpoint (present, saved at that step, its seal intact), which
parent replica each replica starts from, and that the parent's example count is a step of this
run's plan. Whether the model and optimizer fit the checkpoint's tree is checked by the core
from the checkpoint's metadata, before compiling."""

from __future__ import annotations

from bench.preflight import Check, Context
from bench.schema import ConfigError


def keys_need_init_from(ctx: Context) -> None:
    cfg = ctx.cfg
    if cfg.init_from is not None:
        return
    given = [f"init_from_step={cfg.init_from_step}" if cfg.init_from_step is not None else "",
             f"init_from_replica={cfg.init_from_replica}" if cfg.init_from_replica is not None else "",
             "init_from_optimizer=reset" if cfg.init_from_optimizer == "reset" else ""]
    if any(given):
        raise ConfigError(f"{next(g for g in given if g)} does nothing without init_from=<run dir>; "
                          f"give the parent run's output_dir or drop it")


def parent_fits(ctx: Context) -> None:
    from bench.core import branch

    cfg = ctx.cfg
    if cfg.init_from is None:
        return
    parent = branch.open_parent(cfg)
    k = len(cfg.replicas.lr or (None,)) * len(cfg.replicas.seeds or (None,))
    branch.replica_sources(cfg, parent, k)
    if ctx.plan is not None:
        branch.entry_step(ctx.plan, parent, cfg)


CHECKS: list[Check] = [keys_need_init_from]
RUN_CHECKS: list[Check] = [parent_fits]
