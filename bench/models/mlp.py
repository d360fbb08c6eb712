"""Fully connected network on flattened inputs: [Linear (BatchNorm) ReLU (Dropout)] x len(hidden), Linear."""

from __future__ import annotations

import math

from flax import nnx

from bench.models.dense import DenseClassifier


class MLP(DenseClassifier):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, hidden: tuple[int, ...],
                 batch_norm: bool, dropout: float, ghost_batch_size: int | None, rngs: nnx.Rngs,
                 activation: str = "relu"):
        super().__init__(math.prod(input_shape), num_classes, hidden=hidden, batch_norm=batch_norm,
                         dropout=dropout, ghost_batch_size=ghost_batch_size, rngs=rngs,
                         activation=activation)
