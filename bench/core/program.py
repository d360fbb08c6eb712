"""The compiled training program of a job (:class:`TrainProgram`): the optimizer, the LR
schedule, the K replicas' initial state, and blocks of fused steps (bench.core.step) fed by the data
source, each (steps per call, batch size) compiled once and timed as training time."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.core.source import DataSource
from bench.models.matmul_conv import with_matmul_convs
from bench.optim import make_optimizer
from bench.core.parallel import reduction_for, replicated
from bench.rng import RngStream
from bench.rules.lr_schedules import lr_multiplier
from bench.core.step import ModelFns, TrainState, make_train_block, split_model

if TYPE_CHECKING:
    from bench.core.job import Setup


class TrainProgram:
    """``program(state, start, count)`` runs steps [start, start + count) of one batch size."""

    def __init__(self, setup: "Setup", source: DataSource, *, convs_as_matmul: bool | None = None):
        """``convs_as_matmul``: train with 1-D convolutions as im2col + matmul (default: the
        execution policy's choice for K replicas); evaluation and curvature keep the model's."""
        cfg = setup.cfg
        self.setup, self.source = setup, source
        if convs_as_matmul is None:
            convs_as_matmul = setup.policy.convs_as_matmul(len(setup.replicas))
        self.train_fns = setup.fns
        model = nnx.eval_shape(lambda: setup.build_model(jax.random.key(0)))
        if convs_as_matmul and with_matmul_convs(model, spatial_rank=1):
            self.train_fns = ModelFns(split_model(model)[0], cfg.loss)
        by_batch = setup.hyperparams_by_batch
        injected = dict(next(iter(by_batch.values()))) if by_batch else None
        self.tx = make_optimizer(cfg.optimizer, mask=cfg.model.weight_decay_mask(), injected=injected)
        self.lr_multiplier = lr_multiplier(cfg.schedule, setup.plan, cfg.scaling.peak_lr(1.0, cfg.batch_size))
        self.call = jax.jit(make_train_block(
            self.train_fns, self.tx, self.lr_multiplier, cfg.accumulate, source.take_train,
            unroll=setup.policy.scan_unroll(cfg.model.has_attention),
            hyperparams=by_batch or None, ewa_decay=cfg.eval.ewa_decay,
            reduction=reduction_for(cfg.parallel, setup.mesh)), donate_argnums=(0,))

    def init_state(self) -> TrainState:
        """Replica k's init depends only on its own seed (identical alone or in a group)."""
        setup = self.setup
        roots = jnp.stack([jax.random.PRNGKey(r.seed) for r in setup.replicas])
        peak = jnp.asarray([r.peak_lr for r in setup.replicas], jnp.float32)
        with_ewa = setup.cfg.eval.ewa_decay is not None

        def init(roots, peak):
            def one(root, lr):
                model = setup.build_model(jax.random.fold_in(root, RngStream.INIT))
                _, params, stats = split_model(model)
                return TrainState(
                    params=params, stats=stats, opt_state=self.tx.init(params), peak_lr=lr,
                    dropout_key=jax.random.fold_in(root, RngStream.DROPOUT),
                    alive=jnp.array(True), diverged_step=jnp.array(-1, jnp.int32),
                    step=jnp.array(0, jnp.int32), ewa=params if with_ewa else None)
            return jax.vmap(one)(roots, peak)

        return jax.jit(init, out_shardings=replicated(setup.mesh))(roots, peak)

    def initial_lrs(self) -> np.ndarray:
        """Every replica's LR at step 0 (what an evaluation before any step reports)."""
        return np.asarray([r.peak_lr for r in self.setup.replicas]) * float(self.lr_multiplier(0))

    def __call__(self, state: TrainState, start: int, count: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Steps [start, start + count) (one batch size); returns host metrics [count, K]."""
        inputs, wait = self.source.train_inputs(start, count)
        data = self.source.train_data()
        key = ("train", count, self.setup.plan.batch_size(start))  # compiled once per key
        fn = self.setup.programs.compile(key, self.call, state, data, inputs)
        t = time.perf_counter()
        state, metrics = fn(state, data, inputs)
        metrics: Any = jax.device_get(metrics)  # waits for the computation: honest wall time
        self.setup.timings.train_seconds += time.perf_counter() - t + wait
        return state, metrics
