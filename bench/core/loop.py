"""The training loop of one job, top to bottom: build, resume, train/evaluate/measure, finish.

The build, as :func:`run` reads: the job's facts (bench.core.job.Setup), the data source
(bench.core.source), the compiled train program (bench.core.program), the evaluator and the
curvature meter (bench.core.evaluator), the records' ledger (bench.core.run_records), checkpoints. The
loop calls the evaluator and the meter and hands their rows to the ledger.

K vectorized replicas train at once. The loop resumes from the latest checkpoint in
``output_dir/checkpoints`` when there is one (a requeued or restarted job), and on SIGTERM /
SIGUSR1 / SIGUSR2 saves a checkpoint, writes the records (status ``running``) and returns early
(requeueing itself under SLURM).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.branch import start_state
from bench.core.checkpoint import Checkpointer
from bench.config import Config
from bench.data import ArrayDataset
from bench.rules.plan import BatchPlan
from bench.core.source import DataSource, open_source
from bench.data.stream import StreamDataset
from bench.core.evaluator import CurvatureMeter, Evaluator
from bench.core.job import Setup
from bench.core.parallel import same_on_all_processes
from bench.core.preemption import PreemptionFlag, mark_saved, mark_unsaved, requeue_if_slurm
from bench.core.program import TrainProgram
from bench.core.progress import Progress
from bench.record import RunRecord
from bench.core.run_records import RunRecords
from bench.core.step import TrainState


@dataclass(frozen=True)
class Cadence:
    """When to evaluate and measure curvature, and how many steps each training call runs."""

    plan: BatchPlan
    eval_every: int
    measure_every: int | None   # None: curvature at the end only (when measured at all)
    measures: bool              # metrics.hessian
    steps_per_call: int
    dense_every: int | None = None  # also every dense_every steps up to dense_until
    dense_until: int = 0
    start: int = 0              # the first step (a branch's entry step): always evaluated

    @classmethod
    def of(cls, cfg: Config, plan: BatchPlan, start: int = 0) -> "Cadence":
        return cls(plan, cfg.eval.cadence(cfg.batch_size), cfg.metrics.every,
                   cfg.metrics.hessian, cfg.steps_per_call, cfg.metrics.dense_every, cfg.metrics.dense_until,
                   start)

    def measures_at(self, step: int) -> bool:
        return self.measures and (step == self.plan.total_steps or (
            self.measure_every is not None and step % self.measure_every == 0) or (
            self.dense_every is not None and step <= self.dense_until and step % self.dense_every == 0))

    def evaluates_at(self, step: int) -> bool:
        return (step % self.eval_every == 0 or step in (self.start, self.plan.total_steps)
                or self.measures_at(step))

    def steps_in_next_call(self, step: int) -> int:
        """Up to the next evaluation or measurement, at most ``steps_per_call``, and never past
        a batch-size change (each call compiles for one B) or the end of training."""
        end = self.plan.total_steps
        stops = [(step // self.eval_every + 1) * self.eval_every, end, step + self.steps_per_call,
                 self.plan.next_change(step) or end]
        if self.measures and self.measure_every:
            stops.append((step // self.measure_every + 1) * self.measure_every)
        if self.measures and self.dense_every and step < self.dense_until:
            stops.append((step // self.dense_every + 1) * self.dense_every)
        return min(stops) - step


def run(cfg: Config, output_dir: Path | str, *,
        data: ArrayDataset | StreamDataset | None = None) -> list[RunRecord]:
    """Train one job and write one record per replica into ``output_dir``; returns the records."""
    # Build: the job's facts (bad input fails here), then each part of the program.
    setup = Setup(cfg, data)  # validated config, mesh, dataset, replicas, plan, model, policy
    cfg, plan = setup.cfg, setup.plan
    source = open_source(setup.data, plan, setup.mesh, cfg.eval, cfg.dataset)  # in memory | streamed
    train = TrainProgram(setup, source)      # optimizer, schedule, init, fused steps
    evaluate = Evaluator(setup, source)      # -> eval rows
    meter = CurvatureMeter(setup, source) if cfg.metrics.hessian else None  # -> curvature stats
    # several processes write one job: all use process 0's directory (Hydra's default run dir
    # is a timestamp, which processes started a second apart would not share)
    output_dir = Path(same_on_all_processes(str(output_dir)))
    records = RunRecords(setup, output_dir)  # the ledger
    cadence = Cadence.of(cfg, plan, start=setup.start_step)
    ckpt = Checkpointer(output_dir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                        max_to_keep=cfg.checkpoint.max_to_keep)
    # Start: a requeued or restarted job resumes from its latest checkpoint; else a branch
    # starts from its parent's (bench.core.branch), a fresh run from its init.
    state, step, lrs = _start(setup, train, ckpt, records, meter, source)
    mark_saved()  # nothing to lose yet: a signal from here stops the process at once

    # Train, evaluating and measuring on the cadence; save on checkpoints and signals.
    tracker = _tracker(setup, records, output_dir) if records.primary else None
    progress = _progress(setup, records, meter, step)
    with PreemptionFlag() as flag, ckpt, progress, closing(source):
        while True:
            if cadence.evaluates_at(step):
                statuses = records.statuses()
                rows = records.add_evaluation(evaluate(state, step, lrs), step)
                if meter is not None and cadence.measures_at(step):
                    records.add_curvature({k: meter(state, k, float(lrs[k]), row["batch_size"])
                                           for k, row in rows.items()}, rows, step)
                if tracker is not None and rows:
                    tracker.log_rows(rows, step)
                progress.eval(step, rows)
                records.write(force=False, statuses_before=statuses)
            if step >= plan.total_steps or not records.running:
                break
            count = cadence.steps_in_next_call(step)
            state, metrics = train(state, step, count)
            mark_unsaved()  # from here a signal waits for the next poll (bench.core.preemption)
            step, lrs = step + count, metrics["lr"][-1]
            progress.advance(count, metrics)
            if flag.any_process_requested():  # preemption or time limit: save, then requeue
                _save(ckpt, step, state, records, lrs, meter, source, force=True)
                progress.note(f"{flag.signal_name}: checkpoint saved at step {step}; "
                              "the same command resumes from it")
                requeue_if_slurm(flag)  # under SLURM: requeues this job and exits
                return records.records
            if ckpt.should_save(step):
                _save(ckpt, step, state, records, lrs, meter, source)

    # Finish: statuses and convergence, final parameters, the records, the tracker's summary.
    records.finish()
    if cfg.save_params:
        records.save_params(state)
    records.write()
    if tracker is not None:
        tracker.finish(records.summary())
    progress.summary(records.records)
    return records.records


def _start(setup: Setup, train: TrainProgram, ckpt: Checkpointer, records: RunRecords,
           meter: CurvatureMeter | None, source: DataSource) -> tuple[TrainState, int, np.ndarray]:
    """The state, step and LRs training starts from: the job's own latest checkpoint, else the
    parent's (a branch), else the init."""
    if (latest := ckpt.latest_step()) is not None:
        return _resume(ckpt, latest, train.init_state(), records, meter, source)
    if setup.parent is not None:
        parent, step = setup.parent, setup.start_step
        state = start_state(setup.cfg, train, parent, setup.replica_sources, step)
        return state, step, np.asarray(parent.last_lr)[setup.replica_sources]
    return train.init_state(), 0, train.initial_lrs()


def _progress(setup: Setup, records: RunRecords, meter: CurvatureMeter | None, step: int) -> Progress:
    """The progress bar and eval lines (process 0); curvature: its cost estimate, a line per metric."""
    progress = Progress(setup.plan.total_steps, enabled=setup.cfg.progress and records.primary, start=step)
    if meter is not None and progress.enabled:
        meter.probe.report = progress.note
    return progress


def _resume(ckpt: Checkpointer, step: int, state: TrainState, records: RunRecords,
            meter: CurvatureMeter | None, source: DataSource) -> tuple[TrainState, int, np.ndarray]:
    """The state, step and LRs of checkpoint ``step``; the records, clocks, input position and
    noise-scale EMAs put back as they were."""
    state, extra = ckpt.restore(step, state, data=source.pipeline)
    lrs, noise_ema = records.restore(extra, step)
    if meter is not None:
        meter.load_state_dict(noise_ema)
    return state, step, lrs


def _save(ckpt: Checkpointer, step: int, state: TrainState, records: RunRecords, lrs: np.ndarray,
          meter: CurvatureMeter | None, source: DataSource, *, force: bool = False) -> None:
    """A checkpoint (arrays, what the records need to resume, the input position); then the
    records written as they are. ``force`` (a signal): save now and wait until it is on disk."""
    extra = records.checkpoint_extra(step, lrs, meter.state_dict() if meter is not None else None)
    ckpt.save(step, state, extra, force=force, data=source.pipeline)
    if force:
        ckpt.wait_until_finished()
    else:
        mark_saved(ckpt.wait_until_finished)
    records.write()


def _tracker(setup: Setup, records: RunRecords, output_dir: Path):
    cfg = setup.cfg
    return cfg.logger.make(config=records.records[0]["config"], run_id=records.config_hash,
                           name=cfg.name or f"B{cfg.batch_size}-{cfg.dataset.name}-{cfg.model.name}",
                           output_dir=output_dir,
                           replicas=[r.as_dict(len(setup.replicas)) for r in setup.replicas])
