"""Batch-size scaling rules for Adam / RMSprop hyperparameters beyond the learning rate, and
AdamW's weight-decay timescale.

Pure Python, no JAX: the values go into the config and the run record.

**Half-life rule** (Marek et al. 2025, "Small Batch Size Training for Language Models",
arXiv:2507.07101; as coded in their repository martin-marek/batch-size, utils/utils.py
``halflife_to_decay``): an exponential moving average with decay beta forgets half of its
weight after ``log(1/2) / log(beta)`` steps. Holding that half-life fixed in *tokens* (examples
for non-LM data) across batch sizes gives

    beta = 0.5 ** (tokens_per_step / half_life_tokens).

With context 1024, beta2 = 0.95 at B = 512 sequences is a half-life of about 7.1M tokens, which
at B = 1 is beta2 ~ 0.9999.

**Square-root (SDE) scaling rule** (Malladi, Lyu, Panigrahi, Arora 2022, "On the SDEs and
Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022, arXiv:2205.10287, Section 4,
the square root scaling rule for RMSprop and its Adam counterpart; the paper's body could not
be read where this was written, so the definition number is not cited: the form below is
re-derived from the SDE's invariants stated next and agrees with public re-implementations):
going from batch size B0 to B = kappa * B0,

    lr -> sqrt(kappa) * lr,   1 - beta1 -> kappa * (1 - beta1),
    1 - beta2 -> kappa * (1 - beta2),   eps -> eps / sqrt(kappa),

and the number of steps -> steps / kappa (same epochs). It keeps the drift, the gradient-noise
term and the moment time scales of the paper's SDE unchanged (noise std ~ 1 / sqrt(B) enters as
sigma * lr, the moment decay rates as (1 - beta) / lr^2, and eps as eps * lr). eps is the one
added to sqrt(v), as in the paper's Adam and optax's ``eps`` (not ``eps_root``). The SDE is an
approximation for small learning rates, and the rule cannot be applied once
kappa * (1 - beta) >= 1 (the scaled beta leaves (0, 1)): :func:`sde_scaling` raises there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def beta_from_half_life(half_life_tokens: float, tokens_per_step: float) -> float:
    """The EMA decay whose half-life is ``half_life_tokens`` at ``tokens_per_step`` per step."""
    if not half_life_tokens > 0:
        raise ValueError(f"half-life must be > 0 tokens, got {half_life_tokens}")
    if not tokens_per_step > 0:
        raise ValueError(f"tokens per step must be > 0, got {tokens_per_step}")
    return 0.5 ** (tokens_per_step / half_life_tokens)


def half_life_from_beta(beta: float, tokens_per_step: float) -> float:
    """The half-life in tokens of EMA decay ``beta`` at ``tokens_per_step`` per step."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if not tokens_per_step > 0:
        raise ValueError(f"tokens per step must be > 0, got {tokens_per_step}")
    return tokens_per_step * math.log(0.5) / math.log(beta)


@dataclass(frozen=True)
class AdamHyperparams:
    lr: float
    b1: float
    b2: float
    eps: float


def sde_scaling(batch_size: int, base_batch_size: int, base: AdamHyperparams) -> AdamHyperparams:
    """Malladi et al. 2022's square-root rule: ``base`` tuned at ``base_batch_size``, scaled to
    ``batch_size`` (see the module docstring). ``b1 = 0`` means no first moment (RMSprop, the
    paper's other algorithm) and stays 0.

    Raises ValueError when a scaled beta leaves (0, 1), i.e. kappa * (1 - beta) >= 1.
    """
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and base {base_batch_size}")
    if not base.lr > 0:
        raise ValueError(f"learning rate must be > 0, got {base.lr}")
    if not base.eps > 0:
        raise ValueError(f"sde scaling needs eps > 0 (it scales eps by 1/sqrt(kappa)), got {base.eps}")
    kappa = batch_size / base_batch_size
    scaled = {}
    for name in ("b1", "b2"):
        beta = getattr(base, name)
        if name == "b1" and beta == 0.0:
            scaled[name] = 0.0
            continue
        if not 0.0 < beta < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {beta}")
        new = 1.0 - kappa * (1.0 - beta)
        if new <= 0.0:
            limit = base_batch_size / (1.0 - beta)
            raise ValueError(
                f"sde scaling: {name} = {beta:g} at batch {base_batch_size} gives {name} = {new:g} at "
                f"batch {batch_size} (kappa = {kappa:g}); the rule needs batch < {limit:g}")
        scaled[name] = new
    return AdamHyperparams(lr=math.sqrt(kappa) * base.lr, b1=scaled["b1"], b2=scaled["b2"],
                           eps=base.eps / math.sqrt(kappa))


def timescale(batch: float, lr: float, weight_decay: float, dataset: float) -> float:
    """AdamW's EMA timescale tau = B / (lr * wd * D) (Wang & Aitchison 2024, arXiv:2405.13698;
    Bergsma et al. 2025, arXiv:2505.13738): decoupled decay makes the weights an EMA of the
    updates over 1 / (lr * wd) steps, each of B examples (or tokens); D in the same unit sets
    what tau counts (D = N examples: epochs)."""
    if not (batch > 0 and lr > 0 and weight_decay > 0 and dataset > 0):
        raise ValueError(f"timescale needs positive B, lr, wd, D; got {batch}, {lr}, {weight_decay}, {dataset}")
    return batch / (lr * weight_decay * dataset)


def weight_decay_for_timescale(tau: float, batch: float, lr: float, dataset: float) -> float:
    """The weight decay wd = B / (lr * tau * D) whose timescale is ``tau`` (see :func:`timescale`)."""
    if not (tau > 0 and batch > 0 and lr > 0 and dataset > 0):
        raise ValueError(f"weight decay needs positive tau, B, lr, D; got {tau}, {batch}, {lr}, {dataset}")
    return batch / (lr * tau * dataset)
