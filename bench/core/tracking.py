"""Experiment tracking: W&B (offline by default, never needs a network) or nothing.

W&B mirrors the run records, one W&B run per replica (``wandb.init(reinit="create_new")``):
its config is the config that trains that replica alone (its seed and base LR) plus
``effective`` (batch size, seed, base and peak LR, the LR rule, Adam's b1 / b2 / eps at this
batch size) and ``record`` (the record's run id and replica, what ``analysis.load`` reads
back); its history holds the record's eval rows under their own names, against ``examples``
(``tokens`` for language data) as the default x axis; its summary holds the final metrics
(``final_<key>``), the convergence fields, the status, and the best and last value of each
loss and accuracy. Curvature rows add the Hessian's eigenvalue density as a W&B histogram and
each list of numbers (the top eigenvalues) as one series per entry (``hessian_eigenvalues/0``).

Runs of one sweep share a group: ``logger.group`` when set, else ``logger.finding`` (which
``analysis.reproduce`` sets on the jobs it runs and prints: bench never imports analysis), else the Hydra multirun's sweep directory, else
the job. ``job_type`` is the preset (a finding's arm); tags name the finding, the preset and
the job's config hash.

Run ids: ``<config hash>-<token>-r<k>``, kept in ``<output dir>/wandb/batch_bench.json``. A
requeued or restarted job that resumes from a checkpoint in the same directory resumes the
same W&B runs; a job that starts from step 0 where W&B runs of its configuration already
exist gets new ids (and says so), so two starts never log into one W&B run.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench.schema import Registry, frozen, param

LOGGERS: Registry["LoggerConfig"] = Registry("logger", default="wandb")

IDS_FILE = "batch_bench.json"  # under <output dir>/wandb/: run ids, group, project
MAX_HISTOGRAM_BINS = 512       # W&B's limit for one histogram
SUMMARIES = {"train_accuracy": "max,last", "test_accuracy": "max,last", "train_loss": "min,last",
             "test_loss": "min,last", "train_bits_per_byte": "min,last",
             "test_bits_per_byte": "min,last"}


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
    group: str | None = param(None, help="W&B group; default: logger.finding, else the Hydra "
                                          "sweep directory, else the job")
    finding: str | None = param(None, help="the finding the job belongs to (analysis.reproduce "
                                            "sets it): the default group and a tag")
    job_type: str | None = param(None, help="W&B job type; default: the preset's name (a "
                                             "finding's arm), else 'train'")
    tags: tuple[str, ...] = param((), help="W&B tags added to the default ones (finding, "
                                           "preset, config hash)")

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


# ---------------------------------------------------------------------- grouping and identity


def hydra_sweep_dir() -> str | None:
    """The sweep directory of the Hydra multirun this process runs a job of (None: none)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - Hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def grouping(cfg: WandbLogger, config: dict[str, Any], config_hash: str, name: str
             ) -> dict[str, Any]:
    """W&B group, job type and tags of a job's runs (see the module docstring)."""
    preset = config.get("name")
    finding = cfg.finding
    group = cfg.group or finding or hydra_sweep_dir() or f"{name}-{config_hash}"
    tags = [*([f"finding:{finding}"] if finding else []), *([f"preset:{preset}"] if preset else []),
            f"config:{config_hash}", *cfg.tags]
    return {"group": group[-128:], "job_type": (cfg.job_type or preset or "train")[:64],
            "tags": [t[:64] for t in dict.fromkeys(tags)]}


def replica_config(config: dict[str, Any], replica: dict[str, Any], config_hash: str
                   ) -> dict[str, Any]:
    """The W&B config of one replica: the job's config as it trains this replica alone, what
    it trained with (``effective``) and the record it mirrors (``record``)."""
    out = json.loads(json.dumps(config))  # a deep copy of plain JSON types
    out["seed"] = replica["seed"]
    out["optimizer"] = {**out.get("optimizer", {}), "lr": replica["base_lr"]}
    out["replicas"] = {**out.get("replicas", {}), "lr": None, "seeds": None}
    out["effective"] = {"batch_size": config.get("batch_size"), "seed": replica["seed"],
                        "base_lr": replica["base_lr"], "peak_lr": replica["peak_lr"],
                        "rule": (config.get("scaling") or {}).get("name"),
                        **(replica.get("hyperparams") or {})}
    out["record"] = {"run_id": f"{config_hash}-r{replica['index']}", "config_hash": config_hash,
                     "replica": replica}
    return out


def run_ids(output_dir: Path, config_hash: str, replicas: list[dict[str, Any]], *,
            resuming: bool) -> tuple[list[str], list[str]]:
    """(the W&B run ids of this start, the ids an earlier start in ``output_dir`` used that
    this one does not resume). Resuming keeps the saved ids of the same configuration."""
    path = output_dir / "wandb" / IDS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    old = list(saved.get("ids") or [])
    if resuming and saved.get("config_hash") == config_hash and len(old) == len(replicas):
        return old, []
    token = secrets.token_hex(3)
    return [f"{config_hash}-{token}-r{r['index']}" for r in replicas], old


# ---------------------------------------------------------------------- values


def density_histogram(density: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mass per bin, bin edges) of an eigenvalue density sampled on a grid: each grid point is
    the centre of its bin, mass = density x bin width (at most MAX_HISTOGRAM_BINS bins)."""
    grid = np.asarray(density["grid"], dtype=np.float64)
    values = np.nan_to_num(np.asarray(density["density"], dtype=np.float64))
    if grid.size < 2:
        return values, np.array([grid[0] - 0.5, grid[0] + 0.5]) if grid.size else np.zeros(1)
    mids = (grid[1:] + grid[:-1]) / 2
    edges = np.concatenate([[2 * grid[0] - mids[0]], mids, [2 * grid[-1] - mids[-1]]])
    mass = values * np.diff(edges)
    if mass.size > MAX_HISTOGRAM_BINS:
        mass, edges = np.histogram(grid, bins=MAX_HISTOGRAM_BINS, range=(edges[0], edges[-1]),
                                   weights=mass)
    return mass, edges


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wandb_values(row: dict[str, Any]) -> dict[str, Any]:
    """An eval row as W&B values: numbers as they are, the eigenvalue density as a histogram,
    lists of numbers as one series per entry; None (a non-finite measurement) left out."""
    import wandb

    out: dict[str, Any] = {}
    for key, value in row.items():
        if _number(value):
            out[key] = value
        elif key == "hessian_density" and isinstance(value, dict):
            out[key] = wandb.Histogram(np_histogram=density_histogram(value))
        elif isinstance(value, (list, tuple)):
            out.update({f"{key}/{i}": v for i, v in enumerate(value) if _number(v)})
    return out


def per_replica(summary: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``RunRecords.summary()`` split by replica (keys prefixed ``r<k>/`` when K > 1), without
    its nested values (the final eigenvalue density: the history holds it as a histogram)."""
    out: list[dict[str, Any]] = [{} for _ in range(count)]
    for key, value in summary.items():
        if isinstance(value, dict):
            continue
        head, _, rest = key.partition("/")
        if count == 1:
            out[0][key] = value
        elif head.startswith("r") and head[1:].isdigit() and int(head[1:]) < count:
            out[int(head[1:])][rest] = value
    return out


# ---------------------------------------------------------------------- the tracker


class WandbTracker:
    """The W&B runs of one job, one per replica. They start at the first logged evaluation
    (its step says whether this start resumes a checkpoint: 0 is a fresh start)."""

    def __init__(self, cfg: WandbLogger, *, config: dict[str, Any], run_id: str, name: str,
                 output_dir: Path, replicas: list[dict[str, Any]]):
        self.cfg, self.config, self.config_hash = cfg, config, run_id
        self.name, self.output_dir, self.replicas = name, Path(output_dir), replicas
        self.grouping = grouping(cfg, config, run_id, name)
        self.runs: list[Any] = []

    def _display_name(self, replica: dict[str, Any]) -> str:
        b = f"B{self.config.get('batch_size')}"
        parts = [self.name] if b in self.name.split("-") else [self.name, b]
        return "-".join([*parts, f"lr{replica['peak_lr']:.3g}", f"s{replica['seed']}"])

    def _start(self, *, resuming: bool, lm: bool) -> None:
        import wandb

        ids, replaced = run_ids(self.output_dir, self.config_hash, self.replicas, resuming=resuming)
        if replaced:
            print(f"W&B: {self.output_dir} holds W&B runs of an earlier start ({', '.join(replaced)});"
                  f" this start from step 0 logs to new runs ({', '.join(ids)})", file=sys.stderr)
        self._save_ids(ids)
        # requirements.txt off: the records keep the library versions, and collecting them
        # costs every run a scan of all installed packages
        settings = wandb.Settings(silent=True, console="off", x_save_requirements=False)
        for replica, run_id in zip(self.replicas, ids):
            run = wandb.init(
                project=self.cfg.project, entity=self.cfg.entity, id=run_id, resume="allow",
                name=self._display_name(replica), mode=self.cfg.mode, dir=str(self.output_dir),
                config=replica_config(self.config, replica, self.config_hash),
                reinit="create_new", settings=settings, **self.grouping)
            axis = "tokens" if lm else "examples"
            run.define_metric("examples")
            if lm:
                run.define_metric("tokens")
            run.define_metric("*", step_metric=axis)
            for key, how in SUMMARIES.items():
                run.define_metric(key, step_metric=axis, summary=how)
            self.runs.append(run)

    def _save_ids(self, ids: list[str]) -> None:
        from bench.record import atomic_write_text

        atomic_write_text(self.output_dir / "wandb" / IDS_FILE, json.dumps({
            "config_hash": self.config_hash, "ids": ids, "project": self.cfg.project,
            "entity": self.cfg.entity, "mode": self.cfg.mode, **self.grouping}, indent=1) + "\n")

    def log_rows(self, rows: dict[int, dict[str, Any]], step: int) -> None:
        if not self.runs:
            self._start(resuming=step > 0, lm=any("tokens" in row for row in rows.values()))
        for k, row in rows.items():
            self.runs[k].log(wandb_values(row), step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.runs:  # nothing logged by this start: a resumed job with nothing left
            self._start(resuming=True, lm=False)
        for run, values in zip(self.runs, per_replica(summary, len(self.runs))):
            run.summary.update(values)
            run.finish()
