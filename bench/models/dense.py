"""The fully connected classifier shared by MLP and the CNN head:
[Linear (BatchNorm) ReLU (Dropout)] x len(hidden), Linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bench.models.norm import BatchNorm

# Hidden-layer nonlinearities by name (Cohen et al. 2021 use tanh and ELU networks besides ReLU).
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu}


class DenseClassifier(nnx.Module):
    def __init__(self, in_width: int, num_classes: int, *, hidden: tuple[int, ...], batch_norm: bool,
                 dropout: float, ghost_batch_size: int | None, rngs: nnx.Rngs,
                 activation: str = "relu"):
        layers, norms, width = [], [], in_width
        for h in hidden:
            layers.append(nnx.Linear(width, h, rngs=rngs))
            norms.append(BatchNorm(h, ghost_batch_size=ghost_batch_size) if batch_norm else None)
            width = h
        self.layers = nnx.List(layers)
        self.norms = nnx.List(norms)
        self.dropout = nnx.Dropout(dropout) if dropout else None
        self.head = nnx.Linear(width, num_classes, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jnp.ndarray, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        """``x`` of shape [N, ...] is flattened to [N, features] first."""
        x = x.reshape((x.shape[0], -1))
        for layer, norm in zip(self.layers, self.norms):
            x = layer(x)
            if norm is not None:
                x = norm(x, train=train)
            x = ACTIVATIONS[self.activation](x)
            if self.dropout is not None:
                x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.head(x)
