"""The K run records of a job, a ledger (:class:`RunRecords`): it receives the evaluator's rows
and the curvature meter's statistics, keeps statuses and divergence, writes atomically
(throttled), and says what a checkpoint must remember to resume them. It computes nothing.

Only process 0 writes (records, parameters); every process keeps the same bookkeeping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from bench.core import compile_cache
from bench import record as rec
from bench.config import as_dict, result_config
from bench.core.evaluator import Evaluation
from bench.metrics.convergence import convergence_summary
from bench.record import EvalRow, RunRecord
from bench.core.reuse import StaleResults
from bench.core.step import TrainState

if TYPE_CHECKING:
    from bench.core.job import Setup

# What a checkpoint keeps of each record (the rest is rebuilt from the config).
CHECKPOINTED_KEYS = ("history", "final", "status", "diverged_at_step", "error", "curvature")


class RunRecords:
    def __init__(self, setup: "Setup", output_dir: Path):
        self.setup, self.output_dir = setup, output_dir
        self.primary = jax.process_index() == 0
        config = as_dict(setup.cfg)
        self.config_hash = rec.config_hash(result_config(setup.cfg))
        self.data_sha256 = setup.data.checksum()
        self.records: list[RunRecord] = [self._new(setup, config, r) for r in setup.replicas]
        self._last_write = -math.inf

    def _new(self, setup: "Setup", config: dict[str, Any], replica: Any) -> RunRecord:
        cfg, plan = setup.cfg, setup.plan
        record = rec.empty_record()
        record.update(  # type: ignore[typeddict-item]
            run_id=f"{self.config_hash}-r{replica.index}", config=config,
            config_hash=self.config_hash, replica=replica.as_dict(len(setup.replicas)),
            experiment={
                "dataset": cfg.dataset.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
                "scaling": cfg.scaling.name, "schedule": cfg.schedule.name,
                "batch_size": cfg.batch_size, "accumulate": cfg.accumulate,
                "num_train": setup.data.num_train, "num_test": setup.data.num_test,
                "tokens_per_example": setup.data.tokens_per_example,
                "data_sha256": self.data_sha256, "data_provenance": setup.data.provenance,
                "num_params": setup.num_params, "steps_per_epoch": plan.steps_per_epoch,
                "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                "batch_schedule": cfg.batch_schedule.name, "batch_stages": plan.describe()},
            environment=rec.environment(),
            parent=None if setup.parent is None else setup.parent.block(
                int(setup.replica_sources[replica.index]), setup.start_step))
        return record

    @property
    def running(self) -> bool:
        return any(r["status"] == "running" for r in self.records)

    # ------------------------------------------------------------------ during training

    def add_evaluation(self, ev: Evaluation, step: int) -> dict[int, EvalRow]:
        """Append each running replica's row, or mark it diverged (it stopped, or its loss is
        not finite); returns the rows kept, by replica."""
        rows: dict[int, EvalRow] = {}
        for k, record in enumerate(self.records):
            if record["status"] != "running":
                continue
            if not ev.alive[k]:
                self._mark_diverged(record, int(ev.diverged_step[k]))
                continue
            row = ev.rows[k]
            if not all(math.isfinite(row[key]) for key in ("train_loss", "test_loss")):
                self._mark_diverged(record, step)
                continue
            record["history"].append(row)
            record["final"] = row
            rows[k] = row
        return rows

    def add_curvature(self, stats: dict[int, dict[str, Any]], rows: dict[int, EvalRow], step: int) -> None:
        """Curvature statistics of replicas evaluated at this step, merged into their eval rows
        (and kept as the record's ``curvature`` at the last step)."""
        for k, values in stats.items():
            rows[k].update(values)  # type: ignore[typeddict-item]
            if step == self.setup.plan.total_steps:
                self.records[k]["curvature"] = values  # type: ignore[typeddict-item]

    @staticmethod
    def _mark_diverged(record: RunRecord, step: int) -> None:
        record["status"] = "diverged"
        record["diverged_at_step"] = step
        record["error"] = f"non-finite loss at step {step}"

    # ------------------------------------------------------------------ files

    def write(self, *, force: bool = True, statuses_before: list[str] | None = None) -> None:
        """Write every record atomically (process 0). Unforced writes are throttled to one per
        ``eval.write_every_seconds`` unless a status changed: rewriting K full histories at
        every evaluation would cost O(evaluations^2)."""
        if not self.primary:
            return
        changed = statuses_before is not None and statuses_before != self.statuses()
        if not (force or changed or time.monotonic() - self._last_write
                >= self.setup.cfg.eval.write_every_seconds):
            return
        cache = compile_cache.info()
        for k, record in enumerate(self.records):
            record["timings"] = self.setup.timings.as_dict()  # type: ignore[typeddict-item]
            record["environment"]["compile_cache"] = cache
            rec.write_record(self.output_dir / rec.record_filename(k), record)
        self._last_write = time.monotonic()

    def statuses(self) -> list[str]:
        return [r["status"] for r in self.records]

    def checkpoint_extra(self, step: int, lrs: np.ndarray, noise_ema: Any) -> dict[str, Any]:
        """What a checkpoint of ``step`` keeps beside the arrays to resume these records exactly
        (and the curvature meter's noise-scale EMAs, ``noise_ema``); its ``position`` (counters,
        data epoch and offset) is what a branch from it starts at (bench.core.branch)."""
        plan, parent = self.setup.plan, self.setup.parent
        data_epoch, data_offset = plan.data_epoch(step)
        return {"records": [{k: r[k] for k in CHECKPOINTED_KEYS} for r in self.records],  # type: ignore[literal-required]
                "config_hash": self.config_hash, "last_lr": lrs, "timings": self.setup.timings.as_dict(),
                "noise_ema": noise_ema,
                "position": {"step": step, "examples": plan.examples(step), "tokens": plan.tokens(step),
                             "data_epoch": data_epoch, "data_offset": data_offset},
                "parent_sha256": None if parent is None else parent.seal}

    def restore(self, extra: dict[str, Any], step: int) -> tuple[np.ndarray, Any]:
        """Put back a checkpoint's histories, statuses and clocks; returns the replicas' last LRs
        and the saved noise-scale EMAs. A checkpoint of another configuration, or of a branch
        whose parent checkpoint changed since, is refused."""
        where = self.output_dir / "checkpoints"
        if extra.get("config_hash", self.config_hash) != self.config_hash:
            raise StaleResults(f"{where} holds a checkpoint of a different "
                               f"configuration; use another output_dir, or delete it to start over")
        parent = self.setup.parent
        if parent is not None and extra.get("parent_sha256") != parent.seal:
            raise StaleResults(f"{where} holds a branch of another checkpoint (the parent's step "
                               f"{parent.step} changed since); use another output_dir, or delete it to start over")
        for record, saved in zip(self.records, extra["records"], strict=True):
            record.update(saved)  # type: ignore[typeddict-item]
        self.setup.timings.restore(extra["timings"], step)
        return np.asarray(extra["last_lr"]), extra["noise_ema"]

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Final statuses and convergence (steps, examples, seconds to the targets)."""
        target = self.setup.cfg.target
        for record in self.records:
            if record["status"] == "running":
                record["status"] = "finished"
            record["convergence"] = convergence_summary(  # type: ignore[typeddict-item]
                record["history"], target_test_accuracy=target.test_accuracy,
                target_train_loss=target.train_loss, target_test_loss=target.test_loss)

    def save_params(self, state: TrainState) -> None:
        """Final parameters and BatchNorm statistics of each replica, as .npz keyed by tree path."""
        if not self.primary:
            return
        host = jax.device_get({"params": state.params, "stats": state.stats})
        flat = jax.tree_util.tree_flatten_with_path(host)[0]
        for k, record in enumerate(self.records):
            name = f"params_r{k}.npz"
            arrays = {jax.tree_util.keystr(path): np.asarray(leaf)[k] for path, leaf in flat}
            tmp = self.output_dir / f".{name}.tmp.npz"
            np.savez(tmp, **arrays)
            tmp.replace(self.output_dir / name)
            record["artifacts"]["params"] = name

    def summary(self) -> dict[str, Any]:
        """Final metrics and convergence of every replica, flat (``r<k>/`` prefix when K > 1)."""
        out: dict[str, Any] = {}
        for k, record in enumerate(self.records):
            p = f"r{k}/" if len(self.records) > 1 else ""
            out[f"{p}status"] = record["status"]
            out.update({f"{p}final_{key}": v for key, v in (record["final"] or {}).items()})
            out.update({f"{p}{key}": v for key, v in record["convergence"].items()})
        return out
