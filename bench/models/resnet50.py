"""ResNet-50 v1.5 (He et al. 2016, "Deep Residual Learning"; v1.5: the stride of a
downsampling bottleneck is in its 3x3 convolution, as in torchvision and Goyal et al.'s
Caffe2 model) for ImageNet-size inputs, as trained by Goyal et al. 2017:

- stem: 7x7/2 convolution (64), BatchNorm, ReLU, 3x3/2 max-pool; four stages of bottleneck
  blocks (1x1, 3x3, 1x1 x4 channels; 3, 4, 6, 3 blocks; widths 64, 128, 256, 512), a
  projection shortcut (1x1 conv + BatchNorm) where the shape changes; global average pool and
  a fully connected layer. 25,557,032 parameters with 1000 classes.
- initialization (Goyal et al. sec. 5.1): convolutions He-normal (fan-out), the last
  BatchNorm scale (gamma) of every residual block zero ("each residual block starts as the
  identity"), the fully connected layer N(0, 0.01^2) with zero bias.
- BatchNorm (bench.models.norm) over the whole batch, or per ``ghost_batch_size`` examples
  (Goyal et al.: per GPU, 32 examples); always computed in float32.
- ``dtype=bfloat16``: convolutions and the classifier compute in bfloat16 while the
  parameters (the optimizer's master weights), BatchNorm and the logits stay float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bench.models.norm import BatchNorm

STAGES = (3, 4, 6, 3)
BN_NAMES = ("bn1", "bn2", "bn3", "stem_bn", "shortcut_bn")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (kernel - 1) // 2  # symmetric padding, as Caffe2 / torchvision (not TF's SAME)
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), rngs=rngs)


def _bn(x: jax.Array, bn: BatchNorm, train: bool) -> jax.Array:
    return bn(x.astype(jnp.float32), train=train).astype(x.dtype)


class Bottleneck(nnx.Module):
    def __init__(self, in_ch: int, width: int, stride: int, *, ghost: int | None, zero_init: bool,
                 dtype: Any, rngs: nnx.Rngs):
        out_ch = 4 * width
        self.conv1 = _conv(in_ch, width, 1, 1, dtype, rngs)
        self.bn1 = BatchNorm(width, ghost_batch_size=ghost)
        self.conv2 = _conv(width, width, 3, stride, dtype, rngs)   # v1.5: stride here
        self.bn2 = BatchNorm(width, ghost_batch_size=ghost)
        self.conv3 = _conv(width, out_ch, 1, 1, dtype, rngs)
        self.bn3 = BatchNorm(out_ch, ghost_batch_size=ghost)
        if zero_init:  # the residual branch starts at zero: the block is the identity
            self.bn3.scale[...] = jnp.zeros((out_ch,))
        project = stride != 1 or in_ch != out_ch
        self.shortcut = _conv(in_ch, out_ch, 1, stride, dtype, rngs) if project else None
        self.shortcut_bn = BatchNorm(out_ch, ghost_batch_size=ghost) if project else None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = jax.nn.relu(_bn(self.conv1(x), self.bn1, train))
        y = jax.nn.relu(_bn(self.conv2(y), self.bn2, train))
        y = _bn(self.conv3(y), self.bn3, train)
        shortcut = x if self.shortcut is None else _bn(self.shortcut(x), self.shortcut_bn, train)
        return jax.nn.relu(y + shortcut)


class ResNet50(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int = 64,
                 stages: tuple[int, ...] = STAGES, ghost_batch_size: int | None = None,
                 zero_init_residual: bool = True, dtype: str = "float32", rngs: nnx.Rngs):
        if len(input_shape) != 3:
            raise ValueError(f"ResNet-50 needs image inputs [H, W, C], got shape {input_shape}")
        self.dtype = jnp.dtype(dtype)
        self.stem = _conv(input_shape[-1], width, 7, 2, self.dtype, rngs)
        self.stem_bn = BatchNorm(width, ghost_batch_size=ghost_batch_size)
        blocks, in_ch = [], width
        for stage, count in enumerate(stages):
            planes = width * 2 ** stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Bottleneck(in_ch, planes, stride, ghost=ghost_batch_size,
                                         zero_init=zero_init_residual, dtype=self.dtype, rngs=rngs))
                in_ch = 4 * planes
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_ch, num_classes, kernel_init=nnx.initializers.normal(0.01),
                               bias_init=nnx.initializers.zeros, dtype=self.dtype,
                               param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        x = jax.nn.relu(_bn(self.stem(x), self.stem_bn, train))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x, train=train)
        x = x.astype(jnp.float32).mean(axis=(1, 2))
        return self.head(x.astype(self.dtype)).astype(jnp.float32)


def weight_decay_mask(params: Any) -> Any:
    """True for convolution and fully connected weights, False for BatchNorm's scale and bias
    (Goyal et al. sec. 5.1: no weight decay on the BN coefficients gamma and beta)."""
    def decide(path: tuple, _leaf: Any) -> bool:
        names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
        return not names & set(BN_NAMES)

    return jax.tree_util.tree_map_with_path(decide, params)
