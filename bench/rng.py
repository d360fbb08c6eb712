"""Every random stream of a replica, folded from its root seed: one table, so each piece
(init, dropout, data order, curvature probes) can be reproduced alone."""

from __future__ import annotations

from enum import IntEnum


class RngStream(IntEnum):
    INIT = 0      # parameter initialization: jax.random.fold_in(root, INIT)
    DROPOUT = 1   # dropout masks: fold_in(root, DROPOUT), then folded with the step
    DATA = 2      # data order: numpy default_rng([seed, DATA, epoch]) (bench.rules.plan)
    PROBES = 3    # curvature probe vectors and subsets: fold_in(root, PROBES)
    AUGMENT = 4   # image augmentation: numpy default_rng([seed, AUGMENT, epoch, example])
                  # (bench.data.augment), so it depends on neither the batch nor the process
