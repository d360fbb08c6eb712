"""Small CIFAR-style ResNet (He et al. 2016, depth 6n+2): 3 stages of basic blocks with BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bench.models.norm import BatchNorm


class BasicBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, ghost: int | None, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn1 = BatchNorm(out_ch, ghost_batch_size=ghost)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = BatchNorm(out_ch, ghost_batch_size=ghost)
        self.project = (nnx.Conv(in_ch, out_ch, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                        if stride != 1 or in_ch != out_ch else None)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
        y = self.bn2(self.conv2(y), train=train)
        shortcut = x if self.project is None else self.project(x)
        return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int, width: int,
                 ghost_batch_size: int | None, rngs: nnx.Rngs):
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if len(input_shape) != 3:
            raise ValueError(f"ResNet needs image inputs [H, W, C], got shape {input_shape}")
        n = (depth - 2) // 6
        self.stem = nnx.Conv(input_shape[-1], width, (3, 3), use_bias=False, rngs=rngs)
        self.stem_bn = BatchNorm(width, ghost_batch_size=ghost_batch_size)
        blocks, in_ch = [], width
        for stage, ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, ch, stride, ghost_batch_size, rngs))
                in_ch = ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_ch, num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        x = jax.nn.relu(self.stem_bn(self.stem(x), train=train))
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(x.mean(axis=(1, 2)))
