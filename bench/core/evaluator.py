"""What the loop measures of the training state, handed to the records as rows:
:class:`Evaluator` (loss and accuracy of every replica on the whole train and test sets, as
eval rows) and :class:`CurvatureMeter` (curvature statistics of a replica, bench.metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from bench.config import PRECONDITIONED_OPTIMIZERS
from bench.core.source import SPLITS, DataSource
from bench.data.text import bits_per_byte
from bench.metrics.generalization import generalization_gap
from bench.metrics.probe import CurvatureProbe
from bench.optim import evaluation_params
from bench.core.parallel import global_array, replicated
from bench.record import EvalRow
from bench.rng import RngStream
from bench.core.parallel import reduction_for
from bench.core.step import TrainState, make_evaluate_sums

if TYPE_CHECKING:
    from bench.core.job import Setup


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the K replicas: a row for each (NaN where it diverged), and which are
    still alive with the step each diverged at (-1 while alive)."""

    rows: list[EvalRow]
    alive: np.ndarray
    diverged_step: np.ndarray


class Evaluator:
    """``evaluator(state, step, lrs) -> Evaluation``: exact means over the whole sets (of the
    weights :meth:`eval_params` picks), in the programs' chunks, timed as evaluation time."""

    def __init__(self, setup: "Setup", source: DataSource):
        self.setup, self.source = setup, source
        policy, cfg = setup.policy, setup.cfg
        self.program = jax.jit(make_evaluate_sums(
            setup.fns, source.take_eval, loop_replicas=policy.loop_over_replicas,
            unroll=policy.scan_unroll(cfg.model.has_attention),
            reduction=reduction_for(cfg.parallel, setup.mesh)), donate_argnums=(4,))

    def eval_params(self, state: TrainState) -> Any:
        """The weights evaluated: the exponentially weighted average with ``eval.ewa_decay``, else
        the trained ones; then the optimizer's own evaluation weights (schedule-free: x)."""
        params = state.params if state.ewa is None else state.ewa
        return evaluation_params(self.setup.cfg.optimizer, params, state.opt_state)

    def metrics(self, state: TrainState) -> dict[str, np.ndarray]:
        """``{split}_loss``, ``{split}_accuracy`` [K] on the train and test sets."""
        setup, params = self.setup, self.eval_params(state)
        out = {}
        for split in SPLITS:
            t, compiling = time.perf_counter(), setup.timings.compile_seconds
            sums = global_array(np.zeros((len(setup.replicas), 2), np.float32), replicated(setup.mesh))
            for data, inputs in self.source.eval_parts(split):
                fn = setup.programs.compile(("eval", split), self.program, params, state.stats, data, inputs, sums)
                sums = fn(params, state.stats, data, inputs, sums)
            sums = np.asarray(jax.device_get(sums))
            setup.timings.eval_seconds += time.perf_counter() - t - (setup.timings.compile_seconds - compiling)
            total = self.source.eval_total(split)
            out[f"{split}_loss"], out[f"{split}_accuracy"] = sums[:, 0] / total, sums[:, 1] / total
        return out

    def __call__(self, state: TrainState, step: int, lrs: np.ndarray) -> Evaluation:
        ev = self.metrics(state)
        rows = [self.row(step, ev, k, float(lr)) for k, lr in enumerate(lrs)]
        alive, diverged = jax.device_get((state.alive, state.diverged_step))
        return Evaluation(rows, np.asarray(alive), np.asarray(diverged))

    def row(self, step: int, ev: dict[str, np.ndarray], k: int, lr: float) -> EvalRow:
        plan = self.setup.plan
        row: dict[str, Any] = {
            "step": step, "epoch": plan.epoch(step), "examples": plan.examples(step),
            "train_seconds": self.setup.timings.train_seconds, "lr": lr,
            "batch_size": plan.batch_size(max(step - 1, 0))}  # B of the last step taken
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            row[key] = float(ev[key][k])
        row.update(generalization_gap(row["train_loss"], row["train_accuracy"], row["test_loss"],
                                      row["test_accuracy"]))
        if plan.tokens_per_example is not None:  # language data
            per_byte = self.setup.data.bytes_per_token
            row.update(tokens=plan.tokens(step),
                       train_bits_per_byte=bits_per_byte(row["train_loss"], per_byte),
                       test_bits_per_byte=bits_per_byte(row["test_loss"], per_byte))
        return row  # type: ignore[return-value]


class CurvatureMeter:
    """Curvature of replica k (bench.metrics.probe.CurvatureProbe on the source's probe
    examples), timed as metrics time; ``meter(state, k, lr, batch_size)`` adds the optimizer's
    stability thresholds at that LR (what an eval row records beside the statistics)."""

    def __init__(self, setup: "Setup", source: DataSource):
        self.setup = setup
        x, y = source.probe_examples(setup.cfg.metrics.subset_size, setup.replicas[0].seed)
        keys = [jax.random.fold_in(jax.random.PRNGKey(r.seed), RngStream.PROBES) for r in setup.replicas]
        self.probe = CurvatureProbe(setup.cfg.metrics, setup.fns, x, y, keys, setup.mesh,
                                    policy=setup.policy, plan=setup.plan)

    def measure(self, state: TrainState, k: int, lr: float, batch_size: int) -> dict[str, Any]:
        """The probe's statistics of replica k; ``batch_size``: the minibatch size of the last
        step (batch sharpness)."""
        setup, t = self.setup, time.perf_counter()
        adam = setup.replicas[k].hyperparams if setup.cfg.optimizer.name in PRECONDITIONED_OPTIMIZERS else None
        stats = self.probe.measure(state, k, lr, adam=adam, batch_size=batch_size)
        setup.timings.metrics_seconds += time.perf_counter() - t
        return stats

    def __call__(self, state: TrainState, k: int, lr: float, batch_size: int) -> dict[str, Any]:
        stats = self.measure(state, k, lr, batch_size)
        stats.update(self.setup.cfg.optimizer.stability_thresholds(lr))
        return stats

    def state_dict(self) -> Any:
        return self.probe.state_dict()

    def load_state_dict(self, saved: Any) -> None:
        self.probe.load_state_dict(saved)
