"""Online curvature measurements for the K replicas of a job (calls bench.metrics.curvature).

Each replica follows one fixed evaluation subset through training (its probe key folds the
replica's root seed with the probe stream), measured in eval mode (BatchNorm running
statistics, no dropout); bench.metrics lifts the statistics closed over by the loss into traced
arguments, so a new closure per measurement reuses the compiled programs. The noise-scale EMA of each replica lives here and is saved in
checkpoints with the loop's other metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from bench.config import MetricsConfig
from bench.metrics.curvature import measure
from bench.metrics.noise_scale import NoiseScaleEMA
from bench.parallel import batch_sharded, global_array, replicated
from bench.step import ModelFns, TrainState


class CurvatureProbe:
    def __init__(self, cfg: MetricsConfig, fns: ModelFns, x_train: np.ndarray, y_train: np.ndarray,
                 probe_keys: list[jax.Array], mesh):
        self.cfg, self.fns, self.keys = cfg, fns, probe_keys
        # Sharded over the data axis when it divides evenly (HVPs then run data-parallel).
        shard = len(x_train) % mesh.size == 0
        def place(a: np.ndarray) -> jax.Array:
            sharding = batch_sharded(mesh, 0, a.ndim) if shard else replicated(mesh)
            return global_array(a, sharding)
        self.data = {"x": place(x_train), "y": place(y_train)}
        self.ema: list[NoiseScaleEMA | None] = [None] * len(probe_keys)

    def due(self, step: int, total_steps: int) -> bool:
        if not self.cfg.hessian:
            return False
        return step == total_steps or (self.cfg.every is not None and step % self.cfg.every == 0)

    def measure(self, state: TrainState, k: int, lr: float) -> dict[str, Any]:
        """All enabled statistics of replica ``k`` at its current parameters."""
        params = jax.tree.map(lambda a: a[k], state.params)
        stats = jax.tree.map(lambda a: a[k], state.stats)
        out, self.ema[k] = measure(self.cfg, self.fns.eval_loss_fn(stats), params, self.data,
                                   self.keys[k], lr=lr, ema_state=self.ema[k])
        return out

    def state_dict(self) -> list[dict[str, float] | None]:
        return [None if e is None else dataclasses.asdict(e) for e in self.ema]

    def load_state_dict(self, saved: list[dict[str, float] | None]) -> None:
        self.ema = [None if e is None else NoiseScaleEMA(**e) for e in saved]
