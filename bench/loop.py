"""The training loop of one job: K vectorized replicas, eval cadence, records, honest timing.

Timing follows AlgoPerf: compilation is done ahead of time and counted apart; training time
is the wall time of the jitted training calls only (synchronized with the host before the
clock stops); evaluation time is counted apart as well.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import record as rec
from bench.checkpoint import Checkpointer
from bench.config import (Config, as_dict, scaled_lr, steps_per_epoch, validate,
                          validate_with_data)
from bench.data import ArrayDataset, load_dataset
from bench.data.batching import BatchPlan, plan_lr_shape
from bench.metrics.convergence import convergence_summary
from bench.metrics.generalization import generalization_gap
from bench.metrics.probe import CurvatureProbe
from bench.models import build_model
from bench.models.im2col import im2col_for_replicas, with_im2col_convs
from bench.optim import make_optimizer
from bench.preemption import PreemptionFlag, requeue_if_slurm
from bench.parallel import (batch_sharded, global_array, make_mesh, maybe_initialize_distributed,
                            put_replicated, replicated)
from bench.progress import Progress
from bench.step import ModelFns, TrainState, make_evaluate, make_train_chunk, split_model
from bench.tracking import make_tracker

# Independent random streams folded from each replica's root seed (data order: bench.data.batching).
STREAM_INIT, STREAM_DROPOUT, STREAM_PROBES = 0, 1, 3


@dataclass(frozen=True)
class Replica:
    index: int
    seed: int
    base_lr: float
    peak_lr: float

    def as_dict(self, count: int) -> dict[str, Any]:
        return {"index": self.index, "count": count, "seed": self.seed, "base_lr": self.base_lr,
                "peak_lr": self.peak_lr}


def replica_grid(cfg: Config) -> list[Replica]:
    """LR values x seeds, LR-major; LRs are base LRs, scaled by the batch-size rule."""
    lrs = cfg.replicas.lr if cfg.replicas.lr is not None else (cfg.optimizer.lr,)
    seeds = cfg.replicas.seeds if cfg.replicas.seeds is not None else (cfg.seed,)
    return [Replica(i, int(seed), float(lr), scaled_lr(lr, cfg.batch_size, cfg.scaling))
            for i, (lr, seed) in enumerate(itertools.product(lrs, seeds))]


def eval_indices(n: int, chunk: int, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunked indices over a whole set, padded to full chunks, with a validity mask."""
    chunk = min(chunk, n)
    chunk = int(math.ceil(chunk / num_devices) * num_devices)
    num_chunks = int(math.ceil(n / chunk))
    idx = np.zeros(num_chunks * chunk, np.int32)
    idx[:n] = np.arange(n)
    mask = np.zeros(num_chunks * chunk, np.float32)
    mask[:n] = 1.0
    return idx.reshape(num_chunks, chunk), mask.reshape(num_chunks, chunk)


@dataclass
class Timings:
    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics_seconds: float = 0.0
    resumed_at_steps: list[int] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        return {"compile_seconds": self.compile_seconds, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "metrics_seconds": self.metrics_seconds,
                "total_seconds": time.perf_counter() - self.start,
                "resumed_at_steps": list(self.resumed_at_steps)}


class Job:
    """Everything one job needs, built once: data on device, model functions, compiled steps."""

    def __init__(self, cfg: Config, data: ArrayDataset | None = None, *, im2col: bool | None = None):
        """``im2col``: train with 1-D convolutions as im2col + matmul (default
        ``im2col_for_replicas(K)``: K > 1 replicas on CPU; see bench.models.im2col)."""
        maybe_initialize_distributed()
        self.mesh = make_mesh()
        self.cfg = validate(cfg, num_devices=self.mesh.size)
        self.data = data if data is not None else load_dataset(cfg.dataset)
        validate_with_data(cfg, self.data.num_train)
        self.replicas = replica_grid(cfg)
        self.spe = steps_per_epoch(cfg, self.data.num_train)
        # Per-step batch size, examples and data order (constant B unless cfg.batch_schedule).
        self.plan = BatchPlan.from_config(cfg, self.data.num_train, self.mesh.size,
                                          [r.seed for r in self.replicas])
        self.total_steps = self.plan.total_steps
        self.timings = Timings()

        abstract = nnx.eval_shape(lambda: self._build(jax.random.key(0)))
        self.graphdef, _, _ = split_model(abstract)
        self.fns = ModelFns(self.graphdef)
        # Training K > 1 replicas on CPU: 1-D convs as im2col + matmul (see bench.models.im2col);
        # evaluation and curvature keep the plain convolution.
        self.train_fns = self.fns
        if im2col is None:
            im2col = im2col_for_replicas(len(self.replicas))
        if im2col and with_im2col_convs(abstract):
            self.train_fns = ModelFns(split_model(abstract)[0])
        self.tx = make_optimizer(cfg.optimizer)
        peak_over_base = (cfg.batch_size / cfg.scaling.base_batch_size) ** cfg.scaling.alpha
        self.lr_shape = plan_lr_shape(cfg, self.plan, peak_over_base)

        rep = put_replicated
        self.x_train, self.y_train = rep(self.data.x_train, self.mesh), rep(self.data.y_train, self.mesh)
        self.x_test, self.y_test = rep(self.data.x_test, self.mesh), rep(self.data.y_test, self.mesh)
        self.indexer = self.plan
        self._train_chunk = jax.jit(
            make_train_chunk(self.train_fns, self.tx, self.lr_shape, cfg.accumulate, self.mesh),
            donate_argnums=(0,))
        self._evaluate = jax.jit(make_evaluate(self.fns, self.mesh))
        self._compiled: dict[Any, Callable] = {}
        self.probe = CurvatureProbe(
            cfg.metrics, self.fns, self.data.x_train, self.data.y_train,
            [jax.random.fold_in(jax.random.PRNGKey(r.seed), STREAM_PROBES) for r in self.replicas],
            self.mesh) if cfg.metrics.hessian else None
        self._eval_sets = {
            split: tuple(global_array(a, batch_sharded(self.mesh, 1, 2))
                         for a in eval_indices(n, cfg.eval.batch_size, self.mesh.size))
            for split, n in (("train", self.data.num_train), ("test", self.data.num_test))}

    def _build(self, key: jax.Array) -> nnx.Module:
        return build_model(self.cfg.model, self.data.input_shape, self.data.num_classes, nnx.Rngs(key))

    @property
    def num_params(self) -> int:
        abstract = nnx.eval_shape(lambda: self._build(jax.random.key(0)))
        _, params, _ = split_model(abstract)
        return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))

    def init_state(self) -> TrainState:
        """Replica k's init depends only on its own seed (identical alone or in a group)."""
        roots = jnp.stack([jax.random.PRNGKey(r.seed) for r in self.replicas])
        peak = jnp.asarray([r.peak_lr for r in self.replicas], jnp.float32)

        def init(roots, peak):
            def one(root, lr):
                model = self._build(jax.random.fold_in(root, STREAM_INIT))
                _, params, stats = split_model(model)
                return TrainState(
                    params=params, stats=stats, opt_state=self.tx.init(params), peak_lr=lr,
                    dropout_key=jax.random.fold_in(root, STREAM_DROPOUT),
                    alive=jnp.array(True), diverged_step=jnp.array(-1, jnp.int32),
                    step=jnp.array(0, jnp.int32))
            return jax.vmap(one)(roots, peak)

        return jax.jit(init, out_shardings=replicated(self.mesh))(roots, peak)

    def _compile(self, key: Any, fn: Callable, *args: Any) -> Callable:
        if key not in self._compiled:
            t = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile()
            self.timings.compile_seconds += time.perf_counter() - t
        return self._compiled[key]

    def train(self, state: TrainState, start: int, count: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Run steps [start, start + count) (one batch size); returns host metrics [count, K]."""
        idx = global_array(self.indexer.indices(start, count),
                           batch_sharded(self.mesh, 2, 3))
        key = ("train", count, idx.shape[2])  # each (steps per call, batch size) compiles once
        fn = self._compile(key, self._train_chunk, state, self.x_train, self.y_train, idx)
        t = time.perf_counter()
        state, metrics = fn(state, self.x_train, self.y_train, idx)
        metrics = jax.device_get(metrics)  # waits for the computation: honest wall time
        self.timings.train_seconds += time.perf_counter() - t
        return state, metrics

    def evaluate(self, state: TrainState) -> dict[str, np.ndarray]:
        """Loss and accuracy of every replica on the whole train and test sets."""
        out = {}
        for split, (x, y) in (("train", (self.x_train, self.y_train)), ("test", (self.x_test, self.y_test))):
            idx, mask = self._eval_sets[split]
            fn = self._compile(("eval", split), self._evaluate, state.params, state.stats, x, y, idx, mask)
            t = time.perf_counter()
            loss, acc = jax.device_get(fn(state.params, state.stats, x, y, idx, mask))
            self.timings.eval_seconds += time.perf_counter() - t
            out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
        return out


def eval_row(job: Job, step: int, k: int, ev: dict[str, np.ndarray], lr: float) -> dict[str, Any]:
    # examples: sum of the batch sizes of steps < step; batch_size: that of the last step taken
    b = job.plan.batch_size(max(step - 1, 0))
    row = {"step": step, "epoch": job.plan.epoch(step), "examples": job.plan.examples(step),
           "train_seconds": job.timings.train_seconds, "lr": lr, "batch_size": b}
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        row[key] = float(ev[key][k])
    row.update(generalization_gap(row["train_loss"], row["train_accuracy"], row["test_loss"],
                                  row["test_accuracy"]))
    return row


def is_finite_row(row: dict[str, Any]) -> bool:
    return all(math.isfinite(row[k]) for k in ("train_loss", "test_loss"))


def run(cfg: Config, output_dir: Path | str, *, data: ArrayDataset | None = None) -> list[dict[str, Any]]:
    """Train one job and write one record per replica into ``output_dir``; returns the records.

    Resumes from the latest checkpoint in ``output_dir/checkpoints`` when there is one (a
    requeued or restarted job), and on SIGTERM / SIGUSR1 / SIGUSR2 saves a checkpoint, writes
    the records (status ``running``) and returns early (requeueing itself under SLURM).
    """
    output_dir = Path(output_dir)
    job = Job(cfg, data)
    config_dict = as_dict(job.cfg)
    chash = rec.config_hash(config_dict)
    K = len(job.replicas)
    records = [_new_record(job, config_dict, chash, r) for r in job.replicas]
    primary = jax.process_index() == 0

    last_write = -math.inf

    def write_all() -> None:
        nonlocal last_write
        if not primary:
            return
        for k, record in enumerate(records):
            record["timings"] = job.timings.as_dict()
            rec.write_record(output_dir / rec.record_filename(k), record)
        last_write = time.monotonic()

    def write_if_due(statuses_before: list[str]) -> None:
        """Mid-run refresh, throttled: rewriting K full histories at every eval is O(evals^2)."""
        changed = statuses_before != [r["status"] for r in records]
        if changed or time.monotonic() - last_write >= cfg.eval.write_every_seconds:
            write_all()

    state = job.init_state()
    step = 0
    last_lr = np.asarray([r.peak_lr for r in job.replicas]) * float(job.lr_shape(0))
    ckpt = Checkpointer(output_dir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                        max_to_keep=cfg.checkpoint.max_to_keep)
    if (latest := ckpt.latest_step()) is not None:
        state, extra = ckpt.restore(latest, state)
        step, last_lr = latest, np.asarray(extra["last_lr"])
        _restore_progress(records, job.timings, extra, latest)
        if job.probe is not None:
            job.probe.load_state_dict(extra["noise_ema"])

    def loop_extra() -> dict[str, Any]:
        keep = ("history", "final", "status", "diverged_at_step", "error")
        keep += ("curvature",)
        return {"records": [{k: r[k] for k in keep} for r in records], "last_lr": last_lr,
                "timings": job.timings.as_dict(),
                "noise_ema": job.probe.state_dict() if job.probe is not None else None}

    tracker = make_tracker(cfg.logger, config=config_dict, run_id=chash,
                           name=cfg.name or f"B{cfg.batch_size}-{cfg.dataset.name}-{cfg.model.name}",
                           output_dir=output_dir,
                           replicas=[r.as_dict(K) for r in job.replicas]) if primary else None
    eval_every = cfg.eval.every_steps
    progress = Progress(job.total_steps, enabled=cfg.progress and primary, start=step)
    with PreemptionFlag() as flag, ckpt, progress:
        while True:
            measure_now = job.probe is not None and job.probe.due(step, job.total_steps)
            if step % eval_every == 0 or step == job.total_steps or measure_now:
                statuses = [r["status"] for r in records]
                rows = _evaluate_into_records(job, state, step, records, last_lr)
                if measure_now:
                    _measure_into_rows(job, state, step, records, rows, last_lr)
                if tracker is not None and rows:
                    tracker.log_rows(rows, step)
                progress.eval(step, rows)
                write_if_due(statuses)
            if step >= job.total_steps or all(r["status"] != "running" for r in records):
                break
            count = min(_next_event(step, eval_every, cfg.metrics.every if job.probe else None),
                        job.total_steps, step + cfg.steps_per_call,
                        job.plan.next_change(step) or job.total_steps) - step  # one B per call
            state, metrics = job.train(state, step, count)
            step += count
            last_lr = metrics["lr"][-1]
            progress.advance(count, metrics)
            if flag.any_process_requested():
                ckpt.save(step, state, loop_extra(), force=True)
                ckpt.wait_until_finished()
                write_all()
                progress.note(f"{flag.signal_name}: checkpoint saved at step {step}; "
                              "the same command resumes from it")
                requeue_if_slurm(flag)  # under SLURM: requeues this job and exits
                return records
            if ckpt.should_save(step):
                ckpt.save(step, state, loop_extra())
                write_all()

    for record in records:
        if record["status"] == "running":
            record["status"] = "finished"
        record["convergence"] = convergence_summary(
            record["history"], target_test_accuracy=cfg.target.test_accuracy,
            target_train_loss=cfg.target.train_loss)
    if cfg.save_params and primary:
        _save_params(job, state, records, output_dir)
    write_all()
    if tracker is not None:
        tracker.finish(_summary(records))
    progress.summary(records)
    return records


def _evaluate_into_records(job: Job, state: TrainState, step: int, records: list[dict[str, Any]],
                           last_lr: np.ndarray) -> dict[int, dict[str, Any]]:
    """Full-set evaluation of every live replica; appends eval rows, marks divergence."""
    ev = job.evaluate(state)
    alive = np.asarray(jax.device_get(state.alive))
    diverged_step = np.asarray(jax.device_get(state.diverged_step))
    rows = {}
    for k, record in enumerate(records):
        if record["status"] != "running":
            continue
        if not alive[k]:
            _mark_diverged(record, int(diverged_step[k]))
            continue
        row = eval_row(job, step, k, ev, float(last_lr[k]))
        if not is_finite_row(row):
            _mark_diverged(record, step)
            continue
        record["history"].append(row)
        record["final"] = row
        rows[k] = row
    return rows


def _next_event(step: int, eval_every: int, metrics_every: int | None) -> int:
    """The next step after ``step`` at which evaluation or curvature measurement is due."""
    nxt = (step // eval_every + 1) * eval_every
    if metrics_every:
        nxt = min(nxt, (step // metrics_every + 1) * metrics_every)
    return nxt


def _measure_into_rows(job: Job, state: TrainState, step: int, records: list[dict[str, Any]],
                       rows: dict[int, dict[str, Any]], last_lr: np.ndarray) -> None:
    """Curvature statistics of every live replica, merged into this step's eval rows."""
    t = time.perf_counter()
    for k, row in rows.items():
        stats = job.probe.measure(state, k, float(last_lr[k]))
        row.update(stats)
        if step == job.total_steps:
            records[k]["curvature"] = stats
    job.timings.metrics_seconds += time.perf_counter() - t


def _restore_progress(records: list[dict[str, Any]], timings: Timings, extra: dict[str, Any],
                      step: int) -> None:
    """Put back what a checkpoint remembers beyond the arrays: histories, statuses, timings."""
    for record, saved in zip(records, extra["records"], strict=True):
        record.update(saved)
    saved_t = extra["timings"]
    timings.compile_seconds += saved_t["compile_seconds"]
    timings.train_seconds = saved_t["train_seconds"]
    timings.eval_seconds = saved_t["eval_seconds"]
    timings.metrics_seconds = saved_t.get("metrics_seconds", 0.0)
    timings.start -= saved_t["total_seconds"]
    timings.resumed_at_steps = [*saved_t.get("resumed_at_steps", []), step]


def _new_record(job: Job, config: dict[str, Any], chash: str, r: Replica) -> dict[str, Any]:
    record = rec.empty_record()
    cfg = job.cfg
    record.update(
        run_id=f"{chash}-r{r.index}", config=config, replica=r.as_dict(len(job.replicas)),
        experiment={
            "dataset": cfg.dataset.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
            "scaling": cfg.scaling.rule, "schedule": cfg.schedule.name, "batch_size": cfg.batch_size,
            "accumulate": cfg.accumulate, "num_train": job.data.num_train,
            "num_test": job.data.num_test, "num_params": job.num_params,
            "steps_per_epoch": job.spe, "total_steps": job.total_steps,
            "batch_schedule": cfg.batch_schedule.name, "batch_stages": job.plan.describe()},
        environment=rec.environment())
    return record


def _mark_diverged(record: dict[str, Any], step: int) -> None:
    record["status"] = "diverged"
    record["diverged_at_step"] = step
    record["error"] = f"non-finite loss at step {step}"


def _save_params(job: Job, state: TrainState, records: list[dict[str, Any]], output_dir: Path) -> None:
    """Final parameters and BatchNorm statistics of each replica, as .npz keyed by tree path."""
    host = jax.device_get({"params": state.params, "stats": state.stats})
    flat = jax.tree_util.tree_flatten_with_path(host)[0]
    for k, record in enumerate(records):
        name = f"params_r{k}.npz"
        arrays = {jax.tree_util.keystr(path): np.asarray(leaf)[k] for path, leaf in flat}
        tmp = output_dir / f".{name}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(output_dir / name)
        record["artifacts"]["params"] = name


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    prefix = (lambda k: f"r{k}/") if len(records) > 1 else (lambda k: "")
    for k, record in enumerate(records):
        p = prefix(k)
        summary[f"{p}status"] = record["status"]
        for key, value in (record["final"] or {}).items():
            summary[f"{p}final_{key}"] = value
        for key, value in record["convergence"].items():
            summary[f"{p}{key}"] = value
    return summary
