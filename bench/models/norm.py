"""Batch normalization over the global batch or over ghost batches (Hoffer et al. 2017)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last.

    In training mode the statistics are those of the whole (global, sharded) batch, so the
    result does not depend on the device count; with ``ghost_batch_size=g`` the batch is split
    into chunks of g examples, each normalized by its own statistics (ghost batch norm). Running
    averages (used in eval mode) are updated with the mean of the chunk statistics.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 ghost_batch_size: int | None = None):
        self.scale = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.var = nnx.BatchStat(jnp.ones((num_features,)))
        self.momentum = momentum
        self.epsilon = epsilon
        self.ghost_batch_size = ghost_batch_size

    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if not train:
            mean, var = self.mean[...], self.var[...]
            return (x - mean) * (self.scale[...] / jnp.sqrt(var + self.epsilon)) + self.bias[...]
        batch = x.shape[0]
        g = self.ghost_batch_size or batch
        groups = x.reshape((batch // g, g) + x.shape[1:])
        axes = tuple(range(1, groups.ndim - 1))
        mean = groups.mean(axis=axes, keepdims=True)
        var = jnp.square(groups - mean).mean(axis=axes, keepdims=True)
        y = (groups - mean) / jnp.sqrt(var + self.epsilon)
        y = y.reshape(x.shape) * self.scale[...] + self.bias[...]
        m = self.momentum
        self.mean[...] = m * self.mean[...] + (1 - m) * mean.reshape(-1, x.shape[-1]).mean(0)
        self.var[...] = m * self.var[...] + (1 - m) * var.reshape(-1, x.shape[-1]).mean(0)
        return y
