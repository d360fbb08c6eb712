"""Experiment tracking: W&B (offline by default, never needs a network) or nothing.

W&B mirrors the run records: the same history rows, the record's config, and the final
metrics in the summary. With K replicas in one job each metric is prefixed ``r{k}/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from bench.schema import Registry, frozen, param

LOGGERS: Registry["LoggerConfig"] = Registry("logger", default="wandb")


@frozen
class LoggerConfig:
    name: str = param("wandb", help="logger=<name> selects the option")

    def make(self, **kwargs: Any) -> "Tracker":
        return NullTracker()


@LOGGERS.register("wandb", "none")
@frozen
class WandbLogger(LoggerConfig):
    """W&B, offline by default: files under <run dir>/wandb, upload later with `wandb sync`.
    ``logger=none`` is W&B turned off (mode disabled): a preset's W&B settings (e.g. its
    ``logger.group``) stay valid whichever logger is chosen."""
    mode: str = param("offline", choices=("offline", "online", "disabled"))
    project: str = param("batch-bench")
    entity: str | None = param(None)
    group: str | None = param(None)

    def make(self, **kwargs: Any) -> "Tracker":
        if self.name == "none" or self.mode == "disabled":
            return NullTracker()
        return WandbTracker(self, **kwargs)


class Tracker(Protocol):
    def log_rows(self, rows: dict[int, dict[str, Any]], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class NullTracker:
    def log_rows(self, rows: dict[int, dict[str, Any]], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def _scalars(row: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker:
    """One W&B run per job; ``run_id`` is stable so a requeued job resumes the same run."""

    def __init__(self, cfg: WandbLogger, *, config: dict[str, Any], run_id: str, name: str,
                 output_dir: Path, replicas: list[dict[str, Any]]):
        import wandb

        self.replica_prefixes = [f"r{r['index']}/" for r in replicas] if len(replicas) > 1 else [""]
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, name=name, id=run_id,
            resume="allow", mode=cfg.mode, dir=str(output_dir),
            config={**config, "record": {"run_id": run_id, "replicas": replicas}},
            settings=wandb.Settings(silent=True, console="off"))

    def log_rows(self, rows: dict[int, dict[str, Any]], step: int) -> None:
        merged: dict[str, float] = {}
        for k, row in rows.items():
            merged.update(_scalars(row, self.replica_prefixes[k]))
        self.run.log(merged, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()


def make_tracker(cfg: LoggerConfig, **kwargs: Any) -> Tracker:
    """The tracker of the chosen logger (``kwargs``: WandbTracker's keyword arguments)."""
    return cfg.make(**kwargs)
