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


# ----------------------------------------------------------------------- constructed run records
CONTEXT = 32
RECORD_MODELS = (1e5, 1.6e6)
RECORD_DATA = (2.0 ** 18, 2.0 ** 20, 2.0 ** 22)  # tokens; B*(D) = 2^-7 D^0.5 sequences: 4, 8, 16
RECORD_KB = 2.0 ** -7


def record_loss(n, d, b, lr):
    """As ``loss_of`` but with the records' B*(D) = RECORD_KB D^0.5 (sequences per step)."""
    return loss_of(n, d, b * KB * np.asarray(d, float) ** EB / (RECORD_KB * np.asarray(d, float) ** EB), lr)


def write_grid_records(root, *, seeds=(0, 1), sigma=0.001, models=RECORD_MODELS, data=RECORD_DATA, rng_seed=0):
    """Finished LM records over the grid: each run trains D tokens (D / (B x CONTEXT) steps) and
    ends at ``record_loss`` + noise; three eval rows on a falling curve."""
    from lm_record_factory import lm_record, lm_rows, write_lm

    rng = np.random.default_rng(rng_seed)
    recs = []
    steps_grid = 2.0 ** np.arange(-2, 3)
    for n in models:
        for d in data:
            b0 = 2.0 ** np.round(np.log2(RECORD_KB * d ** EB))
            lr0 = 2.0 ** np.round(np.log2(true_lr(n, d)))
            for s in seeds:
                for b in b0 * steps_grid:
                    for lr in lr0 * steps_grid:
                        total = int(d // (b * CONTEXT))
                        final = float(record_loss(n, d, b, lr) + rng.normal(0, sigma))
                        rows = lm_rows([total // 4, total // 2, total], batch_size=int(b), lr=float(lr),
                                       loss=lambda tok, step, f=final, t=total: f + 0.5 * (1 - step / t))
                        recs.append(lm_record(name=f"N{n:g}-D{d:g}-s{s}", batch_size=int(b), base_lr=float(lr),
                                              seed=s, rows=rows, num_params=int(n), index=len(recs)))
    write_lm(root, recs)
    return len(recs)
