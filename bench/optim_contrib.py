"""Optimizers from optax.contrib: Muon and schedule-free AdamW / SGD (registered sections).

- ``muon`` (Jordan et al. 2024; ``optax.contrib.muon``): the momentum of every weight matrix
  (dense and convolution kernels, flattened to [fan_in, fan_out]) is orthogonalized by
  Newton-Schulz iterations; everything else (embeddings, biases, norm scales, BatchNorm)
  goes to AdamW, the split optax's muon takes as ``muon_weight_dimension_numbers``.
  Embeddings are matrices but are looked up, not multiplied: AdamW, as in Muon's reference.
- ``schedule_free_adamw`` / ``schedule_free_sgd`` (Defazio et al. 2024;
  ``optax.contrib.schedule_free``): no LR decay needed; training steps at y, the model is
  evaluated at the averaged x (``eval_params``, optax's ``schedule_free_eval_params``).
  The harness's schedule and warmup still multiply the LR (``schedule=constant`` plus
  ``schedule.warmup_steps`` is the method's own setting).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax.contrib import (MuonDimensionNumbers, ScheduleFreeState, muon, schedule_free,
                           schedule_free_eval_params)

from bench.optim import _BETA, OPTIMIZERS, OptimizerConfig
from bench.schema import ConfigError, frozen, param


def _param_name(path: tuple) -> str:
    """The parameter's attribute name (nnx: ``kernel``, ``bias``, ``embedding``, ``scale``)."""
    for key in reversed(path):
        name = getattr(key, "key", None)
        if isinstance(name, str):
            return name
    return ""


def muon_dimensions(params: Any) -> Any:
    """Muon's split: a kernel [..., fan_in, fan_out] -> MuonDimensionNumbers (every axis but
    the last reduces; conv windows fold into fan_in); anything else -> None (AdamW)."""
    def spec(path: tuple, leaf: Any) -> MuonDimensionNumbers | None:
        if _param_name(path) != "kernel" or leaf.ndim < 2:
            return None
        return MuonDimensionNumbers(reduction_axis=tuple(range(leaf.ndim - 1)),
                                    output_axis=leaf.ndim - 1)
    return jax.tree_util.tree_map_with_path(spec, params)


@OPTIMIZERS.register("muon")
@frozen
class MuonConfig(OptimizerConfig):
    """Muon on weight matrices, AdamW on the rest (optax.contrib.muon), decoupled decay."""
    lr: float = param(0.02, gt=0, help="base LR of both parts, defined at scaling.base_batch_size")
    weight_decay: float = param(0.0, ge=0, help="decoupled, on the model's decayed parameters")
    beta: float = param(0.95, **_BETA, help="Muon's momentum")
    nesterov: bool = param(True)
    ns_steps: int = param(5, ge=1, help="Newton-Schulz iterations")
    eps: float = param(1e-8, gt=0)
    adam_b1: float = param(0.9, **_BETA)
    adam_b2: float = param(0.999, **_BETA)
    adam_lr_ratio: float = param(1.0, gt=0, help="AdamW part's LR / Muon's LR")

    def undecayed(self, learning_rate):
        return muon(learning_rate, ns_steps=self.ns_steps, beta=self.beta, eps=self.eps,
                    nesterov=self.nesterov, adam_b1=self.adam_b1, adam_b2=self.adam_b2,
                    adam_learning_rate=learning_rate * self.adam_lr_ratio,
                    muon_weight_dimension_numbers=muon_dimensions)


def _schedule_free_state(opt_state: Any) -> ScheduleFreeState:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ScheduleFreeState))
             if isinstance(s, ScheduleFreeState)]
    if len(found) != 1:
        raise ValueError(f"expected one ScheduleFreeState in the optimizer state, found {len(found)}")
    return found[0]


@frozen
class ScheduleFree(OptimizerConfig):
    """Schedule-free wrappers: evaluation at x = (y - (1 - b1) z) / b1 (optax's)."""
    b1: float = param(0.9, gt=0, lt=1, help="interpolation between z and the average x")
    weight_lr_power: float = param(2.0, ge=0, help="iterates averaged with weight lr ** power")

    def wrap(self, base: optax.GradientTransformation, learning_rate: Any) -> optax.GradientTransformation:
        return schedule_free(base, learning_rate=learning_rate, b1=self.b1,
                             weight_lr_power=self.weight_lr_power)

    def eval_params(self, params, opt_state):
        return schedule_free_eval_params(_schedule_free_state(opt_state), params)

    def check_with(self, cfg):
        if cfg.eval.ewa_decay is not None:
            raise ConfigError(f"eval.ewa_decay averages the weights, and optimizer={self.name} "
                              f"evaluates its own average; remove eval.ewa_decay")


@OPTIMIZERS.register("schedule_free_adamw")
@frozen
class ScheduleFreeAdamW(ScheduleFree):
    """Schedule-free AdamW: optax.contrib.schedule_free_adamw, with the model's decay mask."""
    lr: float = param(0.0025, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(0.0, ge=0, help="decoupled, on the model's decayed parameters")
    b2: float = param(0.999, **_BETA)
    eps: float = param(1e-8, gt=0)

    def transform(self, learning_rate, mask=None, weight_decay=None):
        # optax's schedule_free_adamw, rebuilt because it takes no weight-decay mask
        base = optax.chain(
            optax.scale_by_rms(decay=self.b2, eps=self.eps, eps_in_sqrt=False, bias_correction=True),
            optax.add_decayed_weights(self.weight_decay if weight_decay is None else weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate))
        return self.wrap(base, learning_rate)


@OPTIMIZERS.register("schedule_free_sgd")
@frozen
class ScheduleFreeSGD(ScheduleFree):
    """Schedule-free SGD: optax.contrib.schedule_free_sgd, L2 decay on the model's mask."""
    lr: float = param(1.0, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay_kind = "coupled"

    def transform(self, learning_rate, mask=None, weight_decay=None):
        # optax's schedule_free_sgd, rebuilt because it takes no weight-decay mask
        base = optax.chain(
            optax.add_decayed_weights(self.weight_decay if weight_decay is None else weight_decay, mask),
            optax.sgd(learning_rate))
        return self.wrap(base, learning_rate)
