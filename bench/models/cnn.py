"""Convolutional network for 1-D ([N, L, C]) or 2-D ([N, H, W, C]) inputs.

[Conv (BatchNorm) ReLU (MaxPool)] x len(channels), flatten, [Linear (BatchNorm) ReLU (Dropout)]
x len(hidden), Linear. Keskar's C1/C3 shallow net is channels=(64, 64), kernel 5, pool 3/2,
hidden=(384, 192), batch_norm, dropout 0.5.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bench.models.dense import DenseClassifier
from bench.models.norm import BatchNorm


class CNN(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, channels: tuple[int, ...],
                 kernel_size: int, conv_stride: int, pool_size: int, pool_stride: int,
                 hidden: tuple[int, ...], batch_norm: bool, dropout: float,
                 ghost_batch_size: int | None, rngs: nnx.Rngs):
        spatial, in_ch = list(input_shape[:-1]), input_shape[-1]
        ndim = len(spatial)
        convs, conv_norms = [], []
        for ch in channels:
            convs.append(nnx.Conv(in_ch, ch, (kernel_size,) * ndim, strides=conv_stride, rngs=rngs))
            conv_norms.append(BatchNorm(ch, ghost_batch_size=ghost_batch_size) if batch_norm else None)
            spatial = [math.ceil(s / conv_stride) for s in spatial]
            if pool_size:
                spatial = [math.ceil(s / pool_stride) for s in spatial]
            in_ch = ch
        self.convs = nnx.List(convs)
        self.conv_norms = nnx.List(conv_norms)
        self.ndim = ndim
        self.pool_size, self.pool_stride = pool_size, pool_stride
        self.classifier = DenseClassifier(
            in_ch * math.prod(spatial), num_classes, hidden=hidden, batch_norm=batch_norm,
            dropout=dropout, ghost_batch_size=ghost_batch_size, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        for conv, norm in zip(self.convs, self.conv_norms):
            x = conv(x)
            if norm is not None:
                x = norm(x, train=train)
            x = jax.nn.relu(x)
            if self.pool_size:
                x = nnx.max_pool(x, (self.pool_size,) * self.ndim, (self.pool_stride,) * self.ndim,
                                 padding="SAME")
        return self.classifier(x, train=train, rngs=rngs)
