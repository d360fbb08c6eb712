"""Constructed grids over (N, D, B, LR, seed) with known optima and power laws, for the laws tests.

The loss of a run is a convex quadratic in (ln B, ln LR) around the true optimum
B*(D) = KB * D^EB, LR*(N, D) = KL * N^EN * D^ED, plus Gaussian noise per run (``sigma``);
each cell's grid is 5 x 5 factors of 2 around the optimum rounded to a power of 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KB, EB = 0.5, 0.5
KL, EN, ED = 2.0, -0.7, 0.3
MODELS = (1e5, 4e5, 1.6e6)
DATA = (1e6, 4e6, 1.6e7, 6.4e7)


def true_b(d):
    return KB * np.asarray(d, float) ** EB


def true_lr(n, d):
    return KL * np.asarray(n, float) ** EN * np.asarray(d, float) ** ED


def loss_of(n, d, b, lr):
    """The noiseless landscape: a base that falls with N and D, and a tilted convex bowl."""
    x = np.log(b) - np.log(true_b(d))
    y = np.log(lr) - np.log(true_lr(n, d))
    return 1.0 + 10 * n ** -0.2 + 20 * d ** -0.2 + 0.02 * x * x + 0.01 * x * y + 0.03 * y * y


def grid_table(*, seeds=(0, 1, 2), sigma=0.002, models=MODELS, data=DATA, half_width=2,
               rng_seed=0) -> pd.DataFrame:
    """Rows ``num_params, tokens, batch_size, lr, seed, loss`` (one per run)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    steps = 2.0 ** np.arange(-half_width, half_width + 1)
    for n in models:
        for d in data:
            b0 = 2.0 ** np.round(np.log2(true_b(d)))
            lr0 = 2.0 ** np.round(np.log2(true_lr(n, d)))
            for s in seeds:
                for b in b0 * steps:
                    for lr in lr0 * steps:
                        rows.append({"num_params": n, "tokens": d, "batch_size": b, "lr": lr, "seed": s,
                                     "loss": float(loss_of(n, d, b, lr) + rng.normal(0, sigma))})
    return pd.DataFrame(rows)
