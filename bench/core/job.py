"""What one job is, decided once (:class:`Setup`): the validated config, the devices, the
dataset, the K replicas, the batch plan, the batch-size rules' optimizer hyperparameters, the
model as pure functions, the execution policy, and the clocks and compiled programs every part
of the build shares.

bench.core.loop builds the rest from a Setup, top to bottom: the data source (bench.core.source),
the train program (bench.core.program), the evaluator and the curvature meter (bench.core.evaluator),
the records (bench.core.run_records). :class:`Job` holds the same parts in one object for tools
that drive training themselves (bench.tools.profile, bench.perf, bench.tools.advise, tests).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from bench.core import compile_cache
from bench.config import Config, validate
from bench.data import ArrayDataset, open_dataset
from bench.job_plan import job_plan
from bench.core.source import DataSource, eval_indices, open_source
from bench.data.stream import StreamDataset
from bench.core.evaluator import CurvatureMeter, Evaluator
from bench.core.execution import ExecutionPolicy
from bench.rules.lr_scaling import adaptive_hyperparams
from bench.core.parallel import make_mesh, maybe_initialize_distributed
from bench.core.program import TrainProgram
from bench.record import Replica as ReplicaDict
from bench.core.step import ModelFns, TrainState, split_model
from bench.core.timings import Programs, Timings

__all__ = ["Job", "Replica", "Setup", "eval_indices", "replica_grid"]


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


def replica_grid(cfg: Config, hyperparams_at: Callable[[float], dict[str, float]]) -> list[Replica]:
    """LR values x seeds, LR-major; LRs are base LRs, scaled by the batch-size rule;
    ``hyperparams_at(base_lr)``: the optimizer's other hyperparameters as the rules set them at
    ``batch_size``."""
    lrs = cfg.replicas.lr if cfg.replicas.lr is not None else (cfg.optimizer.lr,)
    seeds = cfg.replicas.seeds if cfg.replicas.seeds is not None else (cfg.seed,)
    return [Replica(i, int(seed), float(lr), cfg.scaling.peak_lr(lr, cfg.batch_size), hyperparams_at(lr))
            for i, (lr, seed) in enumerate(itertools.product(lrs, seeds))]


class Setup:
    """The facts of one job. Bad input fails here, before anything compiles."""

    def __init__(self, cfg: Config, data: ArrayDataset | StreamDataset | None = None):
        maybe_initialize_distributed(cfg.distributed)
        compile_cache.enable(cfg.compile_cache_dir)  # before anything compiles
        self.mesh = make_mesh()
        self.cfg = cfg = validate(cfg, num_devices=self.mesh.size, run=True, data=data)
        self.policy = ExecutionPolicy.for_backend()
        self.data = data if data is not None else open_dataset(cfg.dataset)
        tokens, n = self.data.tokens_per_example, self.data.num_train
        # Adam's b1, b2, eps per (batch size, base LR) when a rule sets them (sde, half-lives,
        # timescales): computed once each, for every B of the plan, so an impossible value fails
        # before anything compiles
        rules: dict[tuple[int, float], tuple[dict[str, float], bool]] = {}

        def rule(b: int, lr: float) -> tuple[dict[str, float], bool]:
            if (b, lr) not in rules:
                rules[b, lr] = adaptive_hyperparams(cfg.optimizer, cfg.scaling, b, tokens, base_lr=lr,
                                                    peak_lr=cfg.scaling.peak_lr(lr, cfg.batch_size), num_train=n)
            return rules[b, lr]

        self.replicas = replica_grid(cfg, lambda lr: rule(cfg.batch_size, lr)[0])
        self.plan = job_plan(cfg, n, self.mesh.size, [r.seed for r in self.replicas], tokens_per_example=tokens)
        first = self.replicas[0].base_lr  # rules that read the LR (timescale) allow one LR per job
        self.hyperparams_by_batch = {b: rule(b, first)[0] for b in self.plan.sizes() if rule(b, first)[1]}
        self.timings = Timings()
        self.programs = Programs(self.timings)
        graphdef, params, _ = split_model(nnx.eval_shape(lambda: self.build_model(jax.random.key(0))))
        self.num_params = int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))
        self.fns = ModelFns(graphdef, cfg.loss)  # evaluation and curvature: the model's own convs

    def build_model(self, key: jax.Array) -> nnx.Module:
        return self.cfg.model.build(self.data.input_shape, self.data.num_classes, nnx.Rngs(key))

    @property
    def compiled_keys(self) -> list[Any]:
        return self.programs.keys()


class Job:
    """loop.run's build in one object: ``setup``, ``source``, ``program`` (bench.core.program),
    ``evaluator``, ``meter`` (bench.core.evaluator; None without ``metrics.hessian``), plus the names
    tools use: ``cfg``, ``data``, ``mesh``, ``plan``, ``replicas``, ``policy``, ``fns``,
    ``train_fns``, ``tx``, ``lr_multiplier``, ``probe``, ``timings``, ``num_params``,
    ``x_train``/``y_train``/``x_test``/``y_test`` (on device; None when streamed), ``stream``,
    :meth:`init_state`, :meth:`train`, :meth:`evaluate`, :meth:`measure`, :meth:`compile`.

    ``convs_as_matmul``: train with convolutions as im2col + matmul (default: the execution
    policy's choice for K replicas; see bench.models.matmul_conv)."""

    def __init__(self, cfg: Config, data: ArrayDataset | StreamDataset | None = None, *,
                 convs_as_matmul: bool | None = None):
        self.setup = setup = Setup(cfg, data)
        self.source: DataSource = open_source(setup.data, setup.plan, setup.mesh, setup.cfg.eval, setup.cfg.dataset)
        self.program = TrainProgram(setup, self.source, convs_as_matmul=convs_as_matmul)
        self.evaluator = Evaluator(setup, self.source)
        self.meter = CurvatureMeter(setup, self.source) if setup.cfg.metrics.hessian else None

    # names read through to the part that owns them
    _OWNERS = {"setup": ("cfg", "data", "mesh", "plan", "replicas", "policy", "fns", "timings",
                         "num_params", "compiled_keys", "build_model", "hyperparams_by_batch"),
               "program": ("train_fns", "tx", "lr_multiplier", "init_state", "initial_lrs")}

    def __getattr__(self, name: str) -> Any:
        for part, names in Job._OWNERS.items():
            if name in names:
                return getattr(self.__dict__[part], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def train_call(self) -> Any:
        return self.program.call

    @property
    def probe(self) -> Any:
        return self.meter.probe if self.meter is not None else None

    @property
    def stream(self) -> Any:
        return self.source.pipeline

    def _arrays(self, split: str) -> tuple[Any, Any]:
        arrays = getattr(self.source, "arrays", None)
        return arrays[split] if arrays is not None else (None, None)

    x_train = property(lambda self: self._arrays("train")[0])
    y_train = property(lambda self: self._arrays("train")[1])
    x_test = property(lambda self: self._arrays("test")[0])
    y_test = property(lambda self: self._arrays("test")[1])

    def compile(self, key: Any, fn: Any, *args: Any) -> Any:
        return self.setup.programs.compile(key, fn, *args)

    def train(self, state: TrainState, start: int, count: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        return self.program(state, start, count)

    def evaluate(self, state: TrainState) -> dict[str, np.ndarray]:
        return self.evaluator.metrics(state)

    def measure(self, state: TrainState, k: int, lr: float, batch_size: int | None = None) -> dict[str, Any]:
        return self.meter.measure(state, k, lr, batch_size or self.setup.cfg.batch_size)

    def close(self) -> None:
        self.source.close()
