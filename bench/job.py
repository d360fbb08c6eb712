"""Everything one job needs, built once: data on device (or its streamed input pipeline), the
batch plan, model functions, the optimizer, and its compiled programs (:class:`Job`).

Timing follows AlgoPerf: programs are compiled ahead of time (:meth:`Job.compile`) and that
time is counted apart; training time is the wall time of the jitted training calls only
(synchronized with the host before the clock stops); evaluation and curvature time are counted
apart as well. Streamed (``dataset.loader=stream``), the wait for the next batches counts as
training time: the device would be idle then. bench.loop drives a Job; bench.profile and
bench.perf use the same public API.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import compile_cache
from bench.config import PRECONDITIONED_OPTIMIZERS, Config, validate
from bench.data import ArrayDataset, open_dataset
from bench.data.batch_schedules import make_plan
from bench.data.stream import LocalSlice, StreamDataset, TrainStream, eval_chunks
from bench.metrics.probe import CurvatureProbe
from bench.models.im2col import im2col_for_replicas, with_im2col_convs
from bench.optim import adaptive_hyperparams, evaluation_params, make_optimizer
from bench.parallel import (batch_sharded, global_array, make_mesh, maybe_initialize_distributed,
                            process_local_array, put_replicated, replicated)
from bench.record import Replica as ReplicaDict
from bench.schedules import lr_multiplier
from bench.schema import ConfigError
from bench.step import (ModelFns, TrainState, make_evaluate, make_evaluate_chunk,
                         make_streamed_train_chunk, make_train_chunk, split_model)
from bench.streams import Stream


@dataclass(frozen=True)
class Replica:
    index: int
    seed: int
    base_lr: float
    peak_lr: float
    hyperparams: dict[str, float] = field(default_factory=dict)  # Adam's b1, b2, eps at batch_size

    def as_dict(self, count: int) -> ReplicaDict:
        return {"index": self.index, "count": count, "seed": self.seed, "base_lr": self.base_lr,
                "peak_lr": self.peak_lr, "hyperparams": dict(self.hyperparams)}


def replica_grid(cfg: Config, tokens_per_example: int | None = None,
                 num_train: int | None = None) -> list[Replica]:
    """LR values x seeds, LR-major; LRs are base LRs, scaled by the batch-size rule; the
    optimizer's other hyperparameters as the rules set them at ``batch_size``."""
    lrs = cfg.replicas.lr if cfg.replicas.lr is not None else (cfg.optimizer.lr,)
    seeds = cfg.replicas.seeds if cfg.replicas.seeds is not None else (cfg.seed,)
    peak = {lr: cfg.scaling.peak_lr(lr, cfg.batch_size) for lr in lrs}
    hyper = {lr: adaptive_hyperparams(cfg.optimizer, cfg.scaling, cfg.batch_size, tokens_per_example,
                                      base_lr=lr, peak_lr=peak[lr], num_train=num_train)[0] for lr in lrs}
    return [Replica(i, int(seed), float(lr), peak[lr], hyper[lr])
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

    def restore(self, saved: dict[str, Any], step: int) -> None:
        """Continue the clocks of a checkpointed run (compile time adds up over attempts)."""
        self.compile_seconds += saved["compile_seconds"]
        self.train_seconds = saved["train_seconds"]
        self.eval_seconds = saved["eval_seconds"]
        self.metrics_seconds = saved.get("metrics_seconds", 0.0)
        self.start -= saved["total_seconds"]
        self.resumed_at_steps = [*saved.get("resumed_at_steps", []), step]


class Job:
    """One job: K replicas of one config, with their data, plan and compiled programs.

    Public API: ``cfg``, ``data``, ``mesh``, ``plan``, ``replicas``, ``fns`` (the model as pure
    functions), ``tx``, ``lr_multiplier``, ``probe`` (curvature, or None), ``timings``,
    ``x_train``/``y_train``/``x_test``/``y_test`` (on device; None when streamed), ``eval_sets``,
    ``stream`` (the training input pipeline when streamed, else None);
    :meth:`build_model`, :meth:`init_state`, :meth:`train_inputs`, :meth:`compile` (+
    ``compiled_keys``), :meth:`train`, :meth:`evaluate`; ``train_call`` and ``evaluate_call``
    are the jitted (not yet compiled) programs.
    """

    def __init__(self, cfg: Config, data: ArrayDataset | StreamDataset | None = None, *,
                 im2col: bool | None = None):
        """``im2col``: train with 1-D convolutions as im2col + matmul (default
        ``im2col_for_replicas(K)``: K > 1 replicas on CPU; see bench.models.im2col)."""
        maybe_initialize_distributed(cfg.distributed)
        compile_cache.enable(cfg.compile_cache_dir)  # before anything compiles
        self.mesh = make_mesh()
        self.cfg = validate(cfg, num_devices=self.mesh.size, run=True, data=data)
        self.data = data if data is not None else open_dataset(cfg.dataset)
        self.streamed = isinstance(self.data, StreamDataset)
        tokens = self.data.tokens_per_example
        self.replicas = replica_grid(cfg, tokens, self.data.num_train)
        self.plan = make_plan(cfg, self.data.num_train, self.mesh.size, [r.seed for r in self.replicas],
                              tokens_per_example=tokens)
        # Adam's b1, b2, eps per batch size when a rule sets them (sde, half-lives); checked now,
        # for every B of the plan, so an impossible value fails before anything compiles
        first = self.replicas[0]  # rules that read the LR (timescale) allow one LR per job
        rules = {b: adaptive_hyperparams(cfg.optimizer, cfg.scaling, b, tokens, base_lr=first.base_lr,
                                         peak_lr=first.peak_lr, num_train=self.data.num_train)
                 for b in self.plan.sizes()}
        self.hyperparams_by_batch = {b: v for b, (v, changed) in rules.items() if changed}
        self.timings = Timings()
        self._compiled: dict[Any, Callable] = {}

        abstract = nnx.eval_shape(lambda: self.build_model(jax.random.key(0)))
        graphdef, params, _ = split_model(abstract)
        self.num_params = int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))
        self.fns = ModelFns(graphdef, cfg.loss)
        # Training K > 1 replicas on CPU: 1-D convs as im2col + matmul (see bench.models.im2col);
        # evaluation and curvature keep the plain convolution.
        self.train_fns = self.fns
        if im2col is None:
            im2col = im2col_for_replicas(len(self.replicas))
        if im2col and with_im2col_convs(abstract):
            self.train_fns = ModelFns(split_model(abstract)[0], cfg.loss)
        injected = dict(next(iter(self.hyperparams_by_batch.values()))) if self.hyperparams_by_batch else None
        self.tx = make_optimizer(cfg.optimizer, mask=cfg.model.weight_decay_mask(), injected=injected)
        peak_over_base = cfg.scaling.peak_lr(1.0, cfg.batch_size)
        self.lr_multiplier = lr_multiplier(cfg.schedule, self.plan, peak_over_base)

        step_options = {"ewa_decay": cfg.eval.ewa_decay}
        if self.hyperparams_by_batch:
            step_options["hyperparams"] = self.hyperparams_by_batch.__getitem__
        eval_idx = {split: eval_indices(n, cfg.eval.batch_size, self.mesh.size)
                    for split, n in (("train", min(self.data.num_train, cfg.eval.train_examples or self.data.num_train)),
                             ("test", self.data.num_test))}
        if self.streamed:
            self._init_streamed(eval_idx, step_options)
        else:
            self._init_in_memory(eval_idx, step_options)
        self.probe = CurvatureProbe(
            cfg.metrics, self.fns, *self._probe_data(),
            [jax.random.fold_in(jax.random.PRNGKey(r.seed), Stream.PROBES) for r in self.replicas],
            self.mesh, plan=self.plan) if cfg.metrics.hessian else None

    def _init_in_memory(self, eval_idx: dict[str, tuple[np.ndarray, np.ndarray]],
                        step_options: dict[str, Any]) -> None:
        """The dataset on every device; steps gather their batches there from indices."""
        cfg = self.cfg
        self.stream = None
        self.x_train, self.y_train = (put_replicated(a, self.mesh) for a in (self.data.x_train, self.data.y_train))
        self.x_test, self.y_test = (put_replicated(a, self.mesh) for a in (self.data.x_test, self.data.y_test))
        self.train_call = jax.jit(
            make_train_chunk(self.train_fns, self.tx, self.lr_multiplier, cfg.accumulate, self.mesh,
                             unroll_on_cpu=cfg.model.unroll_on_cpu, **step_options), donate_argnums=(0,))
        self.evaluate_call = jax.jit(make_evaluate(self.fns, self.mesh,
                                                   unroll_on_cpu=cfg.model.unroll_on_cpu))
        self.eval_sets = {split: tuple(global_array(a, batch_sharded(self.mesh, 1, 2)) for a in arrays)
                          for split, arrays in eval_idx.items()}

    def _init_streamed(self, eval_idx: dict[str, tuple[np.ndarray, np.ndarray]],
                       step_options: dict[str, Any]) -> None:
        """grain reads this process's rows of every batch (bench.data.stream)."""
        cfg = self.cfg
        self.x_train = self.y_train = self.x_test = self.y_test = None
        self.local = LocalSlice.of_mesh(self.mesh)
        self.stream_options = cfg.dataset.stream_options()
        self.stream = TrainStream(self.data, self.plan, self.local, self.stream_options)
        self.train_call = jax.jit(
            make_streamed_train_chunk(self.train_fns, self.tx, self.lr_multiplier, cfg.accumulate,
                                      unroll_on_cpu=cfg.model.unroll_on_cpu, **step_options),
            donate_argnums=(0,))
        self.evaluate_call = jax.jit(make_evaluate_chunk(self.fns), donate_argnums=(5,))
        self.eval_sets = eval_idx  # host indices and masks: each process reads its rows

    def _probe_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The training data curvature is measured on: all of it in memory; streamed, a fixed
        random subset of ``metrics.subset_size`` examples (replica 0's probe seed)."""
        if not self.streamed:
            return self.data.x_train, self.data.y_train
        n, size = self.data.num_train, self.cfg.metrics.subset_size
        if not 0 < size < n:
            raise ConfigError(f"metrics.subset_size={size} with dataset.loader=stream: curvature "
                              f"reads its subset into memory; use a size below {n}")
        rng = np.random.default_rng([self.replicas[0].seed, int(Stream.PROBES)])
        return self.data.examples("train", np.sort(rng.choice(n, size, replace=False)))

    def build_model(self, key: jax.Array) -> nnx.Module:
        return self.cfg.model.build(self.data.input_shape, self.data.num_classes, nnx.Rngs(key))

    def init_state(self) -> TrainState:
        """Replica k's init depends only on its own seed (identical alone or in a group)."""
        roots = jnp.stack([jax.random.PRNGKey(r.seed) for r in self.replicas])
        peak = jnp.asarray([r.peak_lr for r in self.replicas], jnp.float32)

        def init(roots, peak):
            def one(root, lr):
                model = self.build_model(jax.random.fold_in(root, Stream.INIT))
                _, params, stats = split_model(model)
                return TrainState(
                    params=params, stats=stats, opt_state=self.tx.init(params), peak_lr=lr,
                    dropout_key=jax.random.fold_in(root, Stream.DROPOUT),
                    alive=jnp.array(True), diverged_step=jnp.array(-1, jnp.int32),
                    step=jnp.array(0, jnp.int32),
                    ewa=params if self.cfg.eval.ewa_decay is not None else None)
            return jax.vmap(one)(roots, peak)

        return jax.jit(init, out_shardings=replicated(self.mesh))(roots, peak)

    def initial_lrs(self) -> np.ndarray:
        """Every replica's LR at step 0 (what an evaluation before any step reports)."""
        return np.asarray([r.peak_lr for r in self.replicas]) * float(self.lr_multiplier(0))

    def compile(self, key: Any, fn: Callable, *args: Any) -> Callable:
        """``fn`` compiled for ``args`` once per ``key`` (compile time counted apart)."""
        if key not in self._compiled:
            t = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile()
            self.timings.compile_seconds += time.perf_counter() - t
        return self._compiled[key]

    @property
    def compiled_keys(self) -> list[Any]:
        return list(self._compiled)

    def train_inputs(self, start: int, count: int) -> jax.Array:
        """Example indices [count, K, B] of steps [start, start + count), sharded over B."""
        return global_array(self.plan.indices(start, count), batch_sharded(self.mesh, 2, 3))

    def streamed_batches(self, start: int, count: int) -> tuple[jax.Array, jax.Array]:
        """Streamed: the global batches x, y [count, K, B, ...] of steps [start, start + count),
        assembled from every process's rows."""
        x, y = self.stream.take(start, count)
        b = self.plan.batch_size(start)
        return tuple(process_local_array(a, batch_sharded(self.mesh, 2, a.ndim), (*a.shape[:2], b, *a.shape[3:]))
                     for a in (x, y))

    def train(self, state: TrainState, start: int, count: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Run steps [start, start + count) (one batch size); returns host metrics [count, K]."""
        t = time.perf_counter()
        if self.streamed:
            inputs = self.streamed_batches(start, count)
            wait = time.perf_counter() - t
            b = inputs[0].shape[2]
        else:
            inputs, wait = (self.x_train, self.y_train, self.train_inputs(start, count)), 0.0
            b = inputs[2].shape[2]
        key = ("train", count, b)  # each (steps per call, batch size) compiles once
        fn = self.compile(key, self.train_call, state, *inputs)
        t = time.perf_counter()
        state, metrics = fn(state, *inputs)
        metrics = jax.device_get(metrics)  # waits for the computation: honest wall time
        self.timings.train_seconds += time.perf_counter() - t + wait
        return state, metrics

    def evaluate(self, state: TrainState) -> dict[str, np.ndarray]:
        """Loss and accuracy [K] of every replica on the whole train and test sets (of the
        weights' exponentially weighted average with ``eval.ewa_decay``)."""
        params = state.params if state.ewa is None else state.ewa
        params = evaluation_params(self.cfg.optimizer, params, state.opt_state)  # schedule-free: x
        if self.streamed:
            return self._evaluate_streamed(params, state.stats)
        out = {}
        for split, (x, y) in (("train", (self.x_train, self.y_train)), ("test", (self.x_test, self.y_test))):
            idx, mask = self.eval_sets[split]
            fn = self.compile(("eval", split), self.evaluate_call, params, state.stats, x, y, idx, mask)
            t = time.perf_counter()
            loss, acc = jax.device_get(fn(params, state.stats, x, y, idx, mask))
            self.timings.eval_seconds += time.perf_counter() - t
            out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
        return out

    def _evaluate_streamed(self, params: Any, stats: Any) -> dict[str, np.ndarray]:
        """Chunk by chunk, each process reading its rows; sums accumulate on device."""
        out = {}
        for split, (idx, mask) in self.eval_sets.items():
            t = time.perf_counter()
            sums = global_array(np.zeros((len(self.replicas), 2), np.float32), replicated(self.mesh))
            c = idx.shape[1]
            for x, y, m in eval_chunks(self.data, split, idx, mask, self.local, self.stream_options):
                x, y, m = (process_local_array(a, batch_sharded(self.mesh, 0, a.ndim), (c, *a.shape[1:]))
                           for a in (x, y, m))
                fn = self.compile(("eval", split), self.evaluate_call, params, stats, x, y, m, sums)
                sums = fn(params, stats, x, y, m, sums)
            total = np.float32(mask.sum())
            sums = np.asarray(jax.device_get(sums))
            self.timings.eval_seconds += time.perf_counter() - t
            out[f"{split}_loss"], out[f"{split}_accuracy"] = sums[:, 0] / total, sums[:, 1] / total
        return out

    def close(self) -> None:
        """Stop the input pipeline's readers (streamed)."""
        if self.stream is not None:
            self.stream.close()

    def measure(self, state: TrainState, k: int, lr: float, batch_size: int | None = None) -> dict[str, Any]:
        """Curvature statistics of replica k (time counted as metrics time); ``batch_size``: the
        minibatch size of the last step (batch sharpness; default the configured one)."""
        t = time.perf_counter()
        adam = self.replicas[k].hyperparams if self.cfg.optimizer.name in PRECONDITIONED_OPTIMIZERS else None
        stats = self.probe.measure(state, k, lr, adam=adam, batch_size=batch_size or self.cfg.batch_size)
        self.timings.metrics_seconds += time.perf_counter() - t
        return stats
