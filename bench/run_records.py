"""The K run records of a job while it trains: eval rows, statuses, divergence, curvature,
throttled atomic writes, and what a checkpoint must remember to resume them (:class:`RunRecords`).

Only process 0 writes (records, parameters); every process keeps the same bookkeeping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench import compile_cache
from bench import record as rec
from bench.config import as_dict, result_config
from bench.job import Job
from bench.data.text import bits_per_byte
from bench.metrics.convergence import convergence_summary
from bench.metrics.generalization import generalization_gap
from bench.record import EvalRow, RunRecord
from bench.reuse import StaleResults
from bench.step import TrainState

# What a checkpoint keeps of each record (the rest is rebuilt from the config).
CHECKPOINTED_KEYS = ("history", "final", "status", "diverged_at_step", "error", "curvature")


class RunRecords:
    def __init__(self, job: Job, output_dir: Path):
        self.job, self.output_dir = job, output_dir
        self.primary = jax.process_index() == 0
        config = as_dict(job.cfg)
        self.config_hash = rec.config_hash(result_config(job.cfg))
        self.data_sha256 = job.data.checksum()
        self.records: list[RunRecord] = [self._new(job, config, r) for r in job.replicas]
        self._last_write = -math.inf

    def _new(self, job: Job, config: dict[str, Any], replica: Any) -> RunRecord:
        cfg, plan = job.cfg, job.plan
        record = rec.empty_record()
        record.update(  # type: ignore[typeddict-item]
            run_id=f"{self.config_hash}-r{replica.index}", config=config,
            config_hash=self.config_hash, replica=replica.as_dict(len(job.replicas)),
            experiment={
                "dataset": cfg.dataset.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
                "scaling": cfg.scaling.name, "schedule": cfg.schedule.name,
                "batch_size": cfg.batch_size, "accumulate": cfg.accumulate,
                "num_train": job.data.num_train, "num_test": job.data.num_test,
                "tokens_per_example": job.data.tokens_per_example,
                "data_sha256": self.data_sha256, "data_provenance": job.data.provenance,
                "num_params": job.num_params, "steps_per_epoch": plan.steps_per_epoch,
                "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                "batch_schedule": cfg.batch_schedule.name, "batch_stages": plan.describe()},
            environment=rec.environment())
        return record

    @property
    def running(self) -> bool:
        return any(r["status"] == "running" for r in self.records)

    # ------------------------------------------------------------------ during training

    def add_evaluation(self, state: TrainState, step: int, lrs: np.ndarray) -> dict[int, EvalRow]:
        """Evaluate every live replica on the full sets; append its row, or mark it diverged."""
        ev = self.job.evaluate(state)
        alive = np.asarray(jax.device_get(state.alive))
        diverged_step = np.asarray(jax.device_get(state.diverged_step))
        rows: dict[int, EvalRow] = {}
        for k, record in enumerate(self.records):
            if record["status"] != "running":
                continue
            if not alive[k]:
                self._mark_diverged(record, int(diverged_step[k]))
                continue
            row = self._row(step, k, ev, float(lrs[k]))
            if not all(math.isfinite(row[key]) for key in ("train_loss", "test_loss")):
                self._mark_diverged(record, step)
                continue
            record["history"].append(row)
            record["final"] = row
            rows[k] = row
        return rows

    def _row(self, step: int, k: int, ev: dict[str, np.ndarray], lr: float) -> EvalRow:
        plan = self.job.plan
        row: dict[str, Any] = {
            "step": step, "epoch": plan.epoch(step), "examples": plan.examples(step),
            "train_seconds": self.job.timings.train_seconds, "lr": lr,
            "batch_size": plan.batch_size(max(step - 1, 0))}  # B of the last step taken
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            row[key] = float(ev[key][k])
        row.update(generalization_gap(row["train_loss"], row["train_accuracy"], row["test_loss"],
                                      row["test_accuracy"]))
        if plan.tokens_per_example is not None:  # language data
            per_byte = self.job.data.bytes_per_token
            row.update(tokens=plan.tokens(step),
                       train_bits_per_byte=bits_per_byte(row["train_loss"], per_byte),
                       test_bits_per_byte=bits_per_byte(row["test_loss"], per_byte))
        return row  # type: ignore[return-value]

    def add_curvature(self, state: TrainState, step: int, rows: dict[int, EvalRow],
                      lrs: np.ndarray) -> None:
        """Curvature of every replica evaluated at this step, merged into its eval row."""
        for k, row in rows.items():
            stats = self.job.measure(state, k, float(lrs[k]), batch_size=row["batch_size"])
            stats.update(self.job.cfg.optimizer.stability_thresholds(float(lrs[k])))
            row.update(stats)  # type: ignore[typeddict-item]
            if step == self.job.plan.total_steps:
                self.records[k]["curvature"] = stats

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
                >= self.job.cfg.eval.write_every_seconds):
            return
        cache = compile_cache.info()
        for k, record in enumerate(self.records):
            record["timings"] = self.job.timings.as_dict()  # type: ignore[typeddict-item]
            record["environment"]["compile_cache"] = cache
            rec.write_record(self.output_dir / rec.record_filename(k), record)
        self._last_write = time.monotonic()

    def statuses(self) -> list[str]:
        return [r["status"] for r in self.records]

    def checkpoint_extra(self, lrs: np.ndarray) -> dict[str, Any]:
        """What a checkpoint keeps beside the arrays to resume these records exactly."""
        probe = self.job.probe
        return {"records": [{k: r[k] for k in CHECKPOINTED_KEYS} for r in self.records],  # type: ignore[literal-required]
                "config_hash": self.config_hash, "last_lr": lrs, "timings": self.job.timings.as_dict(),
                "noise_ema": probe.state_dict() if probe is not None else None}

    def restore(self, extra: dict[str, Any], step: int) -> np.ndarray:
        """Put back a checkpoint's histories, statuses, clocks and noise-scale EMAs; returns the
        replicas' last LRs. A checkpoint of another configuration is refused."""
        if extra.get("config_hash", self.config_hash) != self.config_hash:
            raise StaleResults(f"{self.output_dir / 'checkpoints'} holds a checkpoint of a different "
                               f"configuration; use another output_dir, or delete it to start over")
        for record, saved in zip(self.records, extra["records"], strict=True):
            record.update(saved)  # type: ignore[typeddict-item]
        self.job.timings.restore(extra["timings"], step)
        if self.job.probe is not None:
            self.job.probe.load_state_dict(extra["noise_ema"])
        return np.asarray(extra["last_lr"])

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Final statuses and convergence (steps, examples, seconds to the targets)."""
        target = self.job.cfg.target
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
