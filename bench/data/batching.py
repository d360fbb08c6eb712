"""Which examples each step sees: per-replica epoch permutations, drop-last batches."""

from __future__ import annotations

import numpy as np

STREAM_DATA = 2  # the data-order stream folded from each replica's root seed


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch of one replica: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, STREAM_DATA, epoch]).permutation(n).astype(np.int32)


class BatchIndexer:
    """Global batch indices [n, K, B] for steps [start, start + n), drop-last epochs."""

    def __init__(self, seeds: list[int], num_train: int, batch_size: int):
        self.seeds, self.n, self.b = seeds, num_train, batch_size
        self.spe = max(num_train // batch_size, 1)
        self._cache: dict[int, np.ndarray] = {}

    def _perms(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.stack([epoch_permutation(s, epoch, self.n) for s in self.seeds])}
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, len(self.seeds), self.b), np.int32)
        for t in range(count):
            epoch, pos = divmod(start + t, self.spe)
            out[t] = self._perms(epoch)[:, pos * self.b:(pos + 1) * self.b]
        return out
