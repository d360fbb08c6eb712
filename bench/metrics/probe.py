"""Online curvature measurements for the K replicas of a job (calls bench.metrics.curvature).

Each replica follows one fixed evaluation subset through training (its probe key folds the
replica's root seed with the probe stream), measured in eval mode (BatchNorm running
statistics, no dropout); bench.metrics lifts the statistics closed over by the loss into traced
arguments, so a new closure per measurement reuses the compiled programs. The noise-scale EMA
of each replica lives here and is saved in checkpoints with the loop's other metadata.

Curvature uses the model's own convolutions (``convs="lax"``, the default): measured with
``python -m bench.perf.curvature --convs matmul``, computing them as im2col + matmul
(bench.models.matmul_conv) makes a 2-D CNN's gradient ~3.5x faster on XLA:CPU but its HVP only
~1.6x faster (the HVP then costs ~5 of those gradients: the im2col transposes are memory-bound
pads), a ResNet's no faster, and a 1-D CNN's HVP 2.3x slower. ``convs="matmul"`` selects it;
the numbers agree to float round-off.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from flax import nnx

from bench.core import execution
from bench.metrics.curvature import KEY_SUBSET, estimated_cost, measure, select_subset, suite_hvps
from bench.metrics.hessian import num_examples
from bench.metrics.registry import Cost, Measurement
from bench.metrics.sharpness import loss_and_grad_at
from bench.metrics.noise_tracking import NoiseScaleEMA
from bench.metrics.operator import HessianOperator, LossFn
from bench.metrics.suite import MetricsConfig
from bench.metrics.preconditioned import adam_preconditioner
from bench.models.matmul_conv import with_matmul_convs
from bench.core.parallel import batch_sharded, global_array, replicated
from bench.core.step import ModelFns, TrainState, split_model

Convs = Literal["lax", "matmul"]


class CostEstimate(NamedTuple):
    """What one measurement will cost, before it runs (``CurvatureProbe.estimate``)."""

    seconds: dict[str, float]  # per enabled metric
    work: dict[str, Cost]  # per enabled metric: HVP and gradient example passes
    hvp_seconds: float  # one HVP of the curvature subset
    grad_seconds: float  # one gradient of it
    subset_size: int

    def line(self) -> str:
        hvps = suite_hvps(self.work, self.subset_size)
        parts = ", ".join(f"{name} {sec:.1f} s" for name, sec in self.seconds.items())
        return (f"curvature: ~{sum(self.seconds.values()):.1f} s per measurement ({hvps:.0f} HVPs of "
                f"{self.subset_size} examples at {self.hvp_seconds * 1e3:.1f} ms, gradient "
                f"{self.grad_seconds * 1e3:.1f} ms; {parts})")


def _seconds(fn: Any) -> float:
    jax.block_until_ready(fn())  # compile (the measurement reuses the program)
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


class CurvatureProbe:
    def __init__(self, cfg: MetricsConfig, fns: ModelFns, x_train: np.ndarray, y_train: np.ndarray,
                 probe_keys: list[jax.Array], mesh, *, convs: Convs = "lax",
                 policy: execution.ExecutionPolicy | None = None, plan: Any = None):
        self.cfg, self.fns, self.keys = cfg, fns, probe_keys
        self.plan = plan  # the BatchPlan: training positions in examples and tokens (else steps only)
        # where progress lines go (e.g. bench.core.progress.Progress.note); None: silent. When set,
        # the first measurement is preceded by its cost estimate, and each metric reports its time.
        self.report: Any = None
        self._estimated = False
        self.convs = convs
        self.rolled = (policy or execution.current()).rolled_curvature_loops
        self._curvature_fns: ModelFns | None = None
        # Sharded over the data axis when it divides evenly (HVPs then run data-parallel).
        shard = len(x_train) % mesh.size == 0
        def place(a: np.ndarray) -> jax.Array:
            sharding = batch_sharded(mesh, 0, a.ndim) if shard else replicated(mesh)
            return global_array(a, sharding)
        self.data = {"x": place(x_train), "y": place(y_train)}
        # each replica's carried metric state (metric name -> value, e.g. the noise-scale EMA)
        self.states: list[dict[str, Any]] = [{} for _ in probe_keys]

    def curvature_fns(self, params: Any, stats: Any) -> ModelFns:
        """The model functions curvature is measured with (built once: the same object keeps the
        compiled programs' cache keys stable across measurements)."""
        if self._curvature_fns is None:
            model = nnx.merge(self.fns.graphdef, params, stats)
            matmul = self.convs == "matmul" and with_matmul_convs(model) > 0
            self._curvature_fns = dataclasses.replace(self.fns, graphdef=split_model(model)[0]) if matmul else self.fns
        return self._curvature_fns

    def replica(self, state: TrainState, k: int) -> tuple[Any, Any]:
        return jax.tree.map(lambda a: a[k], state.params), jax.tree.map(lambda a: a[k], state.stats)

    def loss_fn(self, params: Any, stats: Any) -> LossFn:
        """The eval-mode mean loss that curvature is measured on."""
        return self.curvature_fns(params, stats).eval_loss_fn(stats)

    def operator(self, state: TrainState, k: int, *, rolled: bool | None = None) -> HessianOperator:
        """The Hessian that ``measure`` probes for replica ``k`` (its fixed subset, its chunking)."""
        params, stats = self.replica(state, k)
        subset = select_subset(self.data, jax.random.fold_in(self.keys[k], KEY_SUBSET), self.cfg.subset_size)
        return HessianOperator.of(self.loss_fn(params, stats), params, subset, self.cfg.chunk_size or None,
                                  self.rolled if rolled is None else rolled)

    def measure(self, state: TrainState, k: int, lr: float, *, adam: dict[str, float] | None = None,
                batch_size: int | None = None, step: int | None = None, on_metric: Any = None) -> dict[str, Any]:
        """All enabled statistics of replica ``k`` at its current parameters. ``adam``: the b1, b2,
        eps of an Adam optimizer (values injected into its state take precedence), for the
        preconditioned sharpness; ``batch_size``: the run's minibatch size, for batch sharpness;
        ``step``: the training step (fresh noise-scale draws at each); ``on_metric``: progress."""
        params, stats = self.replica(state, k)
        step = self.step_of(state, k) if step is None else step
        if self.report is not None and not self._estimated:
            self._estimated = True
            self.report(self.estimate(state, k, batch_size=batch_size).line())
        if self.report is not None and on_metric is None:
            on_metric = lambda name, sec: self.report(f"curvature step {step}, replica {k}: {name} {sec:.1f} s")  # noqa: E731
        out, self.states[k] = measure(self.cfg, self.loss_fn(params, stats), params, self.data,
                                      self.keys[k], step=step, lr=lr, state=self.states[k],
                                      positions=self.positions(step),
                                      rolled=self.rolled, preconditioner=self.preconditioner(state, k, adam),
                                      batch_size=batch_size, on_metric=on_metric)
        return out

    def estimate(self, state: TrainState, k: int = 0, *, batch_size: int | None = None) -> CostEstimate:
        """Seconds one measurement of replica ``k`` will take: each enabled metric's HVP and
        gradient example passes (its ``cost``) x the measured seconds per example of one HVP and
        one gradient of the curvature subset (each timed once after its compile, which the
        measurement reuses: the same chunk programs)."""
        params, stats = self.replica(state, k)
        subset = select_subset(self.data, jax.random.fold_in(self.keys[k], KEY_SUBSET), self.cfg.subset_size)
        m = Measurement(self.loss_fn(params, stats), params, subset, self.data, self.keys[k],
                        self.cfg.chunk_size or None, self.rolled, batch_size=batch_size)
        costs = estimated_cost(self.cfg, m)
        op = self.operator(state, k)
        flat = ravel_pytree(params)[0]
        n = num_examples(subset)
        hvp = _seconds(lambda: op.matvec(op.place(jnp.ones_like(flat)))) / n
        zero = jnp.zeros_like(flat)
        grad = _seconds(lambda: loss_and_grad_at(m.loss_fn, params, subset, None, zero,
                                                 chunk_size=m.chunk_size, rolled=self.rolled)) / n
        return CostEstimate({name: c.hvp_examples * hvp + c.grad_examples * grad for name, c in costs.items()},
                            costs, hvp * n, grad * n, n)

    @staticmethod
    def step_of(state: TrainState, k: int) -> int:
        """Steps replica ``k`` has taken."""
        steps = np.asarray(jax.device_get(state.step)).reshape(-1)
        return int(steps[k] if steps.size > 1 else steps[0])

    def positions(self, step: int) -> dict[str, float]:
        if self.plan is None:
            return {}
        out = {"examples": float(self.plan.examples(step))}
        tokens = self.plan.tokens(step)
        out["tokens"] = float(out["examples"] if tokens is None else tokens)  # classifiers: examples
        return out

    def preconditioner(self, state: TrainState, k: int, adam: dict[str, float] | None) -> Any:
        """Adam's P of replica ``k`` (bench.metrics.preconditioned), or None."""
        if not (self.cfg.preconditioned and adam):
            return None
        opt = jax.tree.map(lambda a: a[k], state.opt_state)
        injected = getattr(opt, "hyperparams", {})  # b1, b2, eps a batch-size rule set, if any
        hyper = {name: float(injected[name]) if name in injected else float(adam[name])
                 for name in ("b1", "b2", "eps")}
        return adam_preconditioner(opt, **hyper)

    def state_dict(self) -> list[dict[str, float] | None]:
        """What a checkpoint keeps: each replica's noise-scale EMA (None before the first)."""
        return [None if "noise_scale" not in s else dataclasses.asdict(s["noise_scale"]) for s in self.states]

    def load_state_dict(self, saved: list[dict[str, float] | None]) -> None:
        # a checkpoint of an older smoothing state (other fields) restarts the smoothing
        fields = {f.name for f in dataclasses.fields(NoiseScaleEMA)}
        self.states = [{"noise_scale": NoiseScaleEMA(**e)} if e is not None and set(e) == fields else {}
                       for e in saved]
