"""Model registry: ``build_model(cfg.model, input_shape, num_classes, rngs)``.

Every model is called as ``model(x, train=..., rngs=...)``: the mode is an argument, not
state, so the functional core (bench.step) stays pure.
"""

from __future__ import annotations

from flax import nnx

from bench.config import ModelConfig


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                rngs: nnx.Rngs) -> nnx.Module:
    ghost = cfg.ghost_batch_size
    if cfg.name == "mlp":
        from bench.models.mlp import MLP
        return MLP(input_shape, num_classes, hidden=cfg.hidden, batch_norm=cfg.batch_norm,
                   dropout=cfg.dropout, ghost_batch_size=ghost, rngs=rngs)
    if cfg.name == "cnn":
        from bench.models.cnn import CNN
        return CNN(input_shape, num_classes, channels=cfg.channels, kernel_size=cfg.kernel_size,
                   conv_stride=cfg.conv_stride, pool_size=cfg.pool_size, pool_stride=cfg.pool_stride,
                   hidden=cfg.hidden, batch_norm=cfg.batch_norm, dropout=cfg.dropout,
                   ghost_batch_size=ghost, rngs=rngs)
    if cfg.name == "resnet":
        from bench.models.resnet import ResNet
        return ResNet(input_shape, num_classes, depth=cfg.depth, width=cfg.width,
                      ghost_batch_size=ghost, rngs=rngs)
    raise ValueError(f"unknown model {cfg.name!r}")
