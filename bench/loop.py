"""The training loop of one job, top to bottom: build, resume, train/evaluate/measure, finish.

K vectorized replicas train at once (bench.job); their records are kept by bench.run_records.
The loop resumes from the latest checkpoint in ``output_dir/checkpoints`` when there is one (a
requeued or restarted job), and on SIGTERM / SIGUSR1 / SIGUSR2 saves a checkpoint, writes the
records (status ``running``) and returns early (requeueing itself under SLURM).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bench.checkpoint import Checkpointer
from bench.config import Config
from bench.data import ArrayDataset
from bench.data.plan import BatchPlan
from bench.data.stream import StreamDataset
from bench.job import Job
from bench.parallel import same_on_all_processes
from bench.preemption import PreemptionFlag, mark_saved, mark_unsaved, requeue_if_slurm
from bench.progress import Progress
from bench.record import RunRecord
from bench.run_records import RunRecords


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

    @classmethod
    def of(cls, job: Job) -> "Cadence":
        cfg = job.cfg
        return cls(job.plan, cfg.eval.cadence(cfg.batch_size), cfg.metrics.every,
                   cfg.metrics.hessian, cfg.steps_per_call, cfg.metrics.dense_every, cfg.metrics.dense_until)

    def measures_at(self, step: int) -> bool:
        return self.measures and (step == self.plan.total_steps or (
            self.measure_every is not None and step % self.measure_every == 0) or (
            self.dense_every is not None and step <= self.dense_until and step % self.dense_every == 0))

    def evaluates_at(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.plan.total_steps or self.measures_at(step)

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
    # Build: data, plan, model, optimizer, compiled programs; the K records; checkpoints.
    job = Job(cfg, data)
    # several processes write one job: all use process 0's directory (Hydra's default run dir
    # is a timestamp, which processes started a second apart would not share)
    output_dir = Path(same_on_all_processes(str(output_dir)))
    records = RunRecords(job, output_dir)
    cadence = Cadence.of(job)
    ckpt = Checkpointer(output_dir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                        max_to_keep=cfg.checkpoint.max_to_keep)
    state, step, lrs = job.init_state(), 0, job.initial_lrs()

    # Resume: a requeued or restarted job continues from its latest checkpoint.
    if (latest := ckpt.latest_step()) is not None:
        state, extra = ckpt.restore(latest, state, data=job.stream)  # + input position
        step, lrs = latest, records.restore(extra, latest)
    mark_saved()  # nothing to lose yet: a signal from here stops the process at once

    # Train, evaluating and measuring on the cadence; save on checkpoints and signals.
    tracker = _tracker(job, records, output_dir) if records.primary else None
    progress = Progress(job.plan.total_steps, enabled=cfg.progress and records.primary, start=step)
    if job.probe is not None and progress.enabled:  # curvature: cost estimate first, a line per metric
        job.probe.report = progress.note
    with PreemptionFlag() as flag, ckpt, progress, closing(job):
        while True:
            if cadence.evaluates_at(step):
                statuses = records.statuses()
                rows = records.add_evaluation(state, step, lrs)
                if cadence.measures_at(step):
                    records.add_curvature(state, step, rows, lrs)
                if tracker is not None and rows:
                    tracker.log_rows(rows, step)
                progress.eval(step, rows)
                records.write(force=False, statuses_before=statuses)
            if step >= job.plan.total_steps or not records.running:
                break
            count = cadence.steps_in_next_call(step)
            state, metrics = job.train(state, step, count)
            mark_unsaved()  # from here a signal waits for the next poll (bench.preemption)
            step, lrs = step + count, metrics["lr"][-1]
            progress.advance(count, metrics)
            if flag.any_process_requested():  # preemption or time limit: save, then requeue
                ckpt.save(step, state, records.checkpoint_extra(lrs), force=True, data=job.stream)
                ckpt.wait_until_finished()
                records.write()
                progress.note(f"{flag.signal_name}: checkpoint saved at step {step}; "
                              "the same command resumes from it")
                requeue_if_slurm(flag)  # under SLURM: requeues this job and exits
                return records.records
            if ckpt.should_save(step):
                ckpt.save(step, state, records.checkpoint_extra(lrs), data=job.stream)
                mark_saved(ckpt.wait_until_finished)
                records.write()

    # Finish: statuses and convergence, final parameters, the records, the tracker's summary.
    records.finish()
    if cfg.save_params:
        records.save_params(state)
    records.write()
    if tracker is not None:
        tracker.finish(records.summary())
    progress.summary(records.records)
    return records.records


def _tracker(job: Job, records: RunRecords, output_dir: Path):
    cfg = job.cfg
    return cfg.logger.make(config=records.records[0]["config"], run_id=records.config_hash,
                           name=cfg.name or f"B{cfg.batch_size}-{cfg.dataset.name}-{cfg.model.name}",
                           output_dir=output_dir,
                           replicas=[r.as_dict(len(job.replicas)) for r in job.replicas])

