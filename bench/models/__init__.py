"""Model registry: ``model=<name>`` picks a section below; ``cfg.model.build(...)`` makes it.

Each option is one registered section: its keys with defaults, types and ranges, and its
``build(input_shape, num_classes, rngs)``. Every model is called as
``model(x, train=..., rngs=...)``: the mode is an argument, not state, so the functional core
(bench.core.step) stays pure. Model code is imported only when a model is built.

Adding a model: a module with the ``nnx.Module``, one registered section here, and
``conf/model/<name>.yaml`` (see the README's "Extending").
"""

from __future__ import annotations

from typing import Any

from bench.schema import ConfigError, Registry, frozen, param

MODELS: Registry["ModelConfig"] = Registry("model", default="cnn")

_GHOST_HELP = "Hoffer et al. ghost batch norm: BatchNorm statistics per chunk of this size (null: whole batch)"


@frozen
class ModelConfig:
    name: str = param("cnn", help="model=<name> selects the option")

    def build(self, input_shape: tuple[int, ...], num_classes: int, rngs: Any) -> Any:
        raise NotImplementedError

    def weight_decay_mask(self) -> Any:
        """optax mask of the parameters weight decay applies to (None: all of them)."""
        return None

    # Whether the model computes attention (bench.core.execution.ExecutionPolicy.scan_unroll
    # keeps such models' scans rolled: unrolling gains them nothing and costs compile time).
    has_attention = False

    def batch_multiple(self) -> int:
        """Every (micro)batch must be a multiple of this (the ghost batch size, else 1)."""
        return getattr(self, "ghost_batch_size", None) or 1


@MODELS.register("mlp")
@frozen
class MLPConfig(ModelConfig):
    """Fully connected: [Linear (BatchNorm) ReLU (Dropout)] x len(hidden), Linear."""
    hidden: tuple[int, ...] = param((256, 256), ge=1, help="hidden layer widths")
    activation: str = param("relu", choices=("relu", "tanh", "elu"))
    batch_norm: bool = param(False)
    dropout: float = param(0.0, ge=0, lt=1)
    ghost_batch_size: int | None = param(None, ge=1, help=_GHOST_HELP)

    def build(self, input_shape, num_classes, rngs):
        from bench.models.mlp import MLP
        return MLP(input_shape, num_classes, hidden=self.hidden, batch_norm=self.batch_norm,
                   dropout=self.dropout, ghost_batch_size=self.ghost_batch_size, rngs=rngs,
                   activation=self.activation)


@MODELS.register("cnn")
@frozen
class CNNConfig(ModelConfig):
    """1-D or 2-D CNN. The default is Greydanus' MNIST-1D CNN (3 convs of 32 channels, kernel 5,
    stride 2, linear head), the network every committed MNIST-1D result uses."""
    channels: tuple[int, ...] = param((32, 32, 32), ge=1, help="conv layer widths")
    kernel_size: int = param(5, ge=1)
    conv_stride: int = param(2, ge=1)
    pool_size: int = param(0, ge=0, help="max-pool window after each conv (0: no pooling)")
    pool_stride: int = param(2, ge=1)
    hidden: tuple[int, ...] = param((), ge=1, help="dense layers of the head before the output")
    batch_norm: bool = param(False)
    dropout: float = param(0.0, ge=0, lt=1)
    ghost_batch_size: int | None = param(None, ge=1, help=_GHOST_HELP)

    def build(self, input_shape, num_classes, rngs):
        from bench.models.cnn import CNN
        return CNN(input_shape, num_classes, channels=self.channels, kernel_size=self.kernel_size,
                   conv_stride=self.conv_stride, pool_size=self.pool_size,
                   pool_stride=self.pool_stride, hidden=self.hidden, batch_norm=self.batch_norm,
                   dropout=self.dropout, ghost_batch_size=self.ghost_batch_size, rngs=rngs)


@MODELS.register("resnet")
@frozen
class ResNetConfig(ModelConfig):
    """CIFAR-style ResNet-(6n+2) with BatchNorm (He et al. 2016); depth 20 is ResNet-20."""
    depth: int = param(8, ge=8, help="6n+2: 8, 14, 20, 32, 44, 56, 110")
    width: int = param(16, ge=1, help="channels of the first stage (x2, x4 in the next two)")
    ghost_batch_size: int | None = param(None, ge=1, help=_GHOST_HELP)

    def check(self, where: str) -> None:
        if (self.depth - 2) % 6:
            raise ConfigError(f"{where}depth={self.depth} must be 6n+2 (8, 14, 20, 32, 44, 56, 110)")

    def build(self, input_shape, num_classes, rngs):
        from bench.models.resnet import ResNet
        return ResNet(input_shape, num_classes, depth=self.depth, width=self.width,
                      ghost_batch_size=self.ghost_batch_size, rngs=rngs)


@MODELS.register("transformer")
@frozen
class TransformerConfig(ModelConfig):
    """Decoder-only transformer LM (pre-LayerNorm, causal jax.nn.dot_product_attention, GELU
    MLP, GPT-2 init); the context is the dataset's sequence length, the vocabulary its
    ``num_classes``. ``null`` architecture keys take the preset's value."""
    preset: str = param("tiny", choices=("tiny", "small", "medium", "gpt2_small"),
                        help="tiny ~1M params (CPU minutes) ... gpt2_small 124M (vocab 50257)")
    d_model: int | None = param(None, ge=1)
    num_layers: int | None = param(None, ge=1)
    num_heads: int | None = param(None, ge=1)
    mlp_ratio: int | None = param(None, ge=1)
    positions: str | None = param(None, choices=("rotary", "learned"))
    tied_embeddings: bool | None = param(None)
    dropout: float = param(0.0, ge=0, lt=1)
    bias: bool = param(True, help="biases in linear layers and LayerNorms (GPT-2: true)")
    rotary_base: float = param(10000.0, gt=0)
    dtype: str = param("float32", choices=("float32", "bfloat16"),
                       help="compute dtype; parameters and logits stay float32")
    has_attention = True

    def architecture(self) -> dict[str, Any]:
        from bench.models.transformer import PRESETS

        arch = dict(PRESETS[self.preset])
        for key in ("d_model", "num_layers", "num_heads", "mlp_ratio", "positions", "tied_embeddings"):
            if getattr(self, key) is not None:
                arch[key] = getattr(self, key)
        return arch

    def check(self, where: str) -> None:
        arch = self.architecture()
        if arch["d_model"] % arch["num_heads"] or (arch["d_model"] // arch["num_heads"]) % 2:
            raise ConfigError(f"{where}d_model={arch['d_model']} must be num_heads={arch['num_heads']}"
                              f" x an even head width")

    def build(self, input_shape, num_classes, rngs):
        from bench.models.transformer import Transformer

        if len(input_shape) != 1:
            raise ConfigError(f"model=transformer needs token sequences [N, T], got inputs {input_shape}"
                              f" (use a language dataset: pydoc, markov, lm1b, tokens)")
        arch = {**self.architecture(), "context": input_shape[0]}
        return Transformer(**arch, vocab_size=num_classes, dropout=self.dropout, bias=self.bias,
                           rotary_base=self.rotary_base, dtype=self.dtype, rngs=rngs)

    def weight_decay_mask(self) -> Any:
        """Decay matrices and embeddings, not norms and biases."""
        from bench.models.transformer import weight_decay_mask
        return weight_decay_mask


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, rngs: Any) -> Any:
    """The model of ``cfg`` (any registered section)."""
    return cfg.build(input_shape, num_classes, rngs)


@MODELS.register("resnet50")
@frozen
class ResNet50Config(ModelConfig):
    """ResNet-50 v1.5 for ImageNet-size images (Goyal et al. 2017's model): zero-initialised
    last BatchNorm scale per residual block, no weight decay on BatchNorm parameters."""
    width: int = param(64, ge=1, help="stem channels; bottleneck widths width x 1, 2, 4, 8")
    stages: tuple[int, ...] = param((3, 4, 6, 3), ge=1, help="bottleneck blocks per stage (101: 3,4,23,3)")
    ghost_batch_size: int | None = param(None, ge=1, help=_GHOST_HELP)
    zero_init_residual: bool = param(True, help="zero the last BatchNorm scale of each block")
    dtype: str = param("float32", choices=("float32", "bfloat16"),
                       help="compute dtype; parameters (master weights), BatchNorm and logits stay float32")

    def build(self, input_shape, num_classes, rngs):
        from bench.models.resnet50 import ResNet50
        return ResNet50(input_shape, num_classes, width=self.width, stages=self.stages,
                        ghost_batch_size=self.ghost_batch_size,
                        zero_init_residual=self.zero_init_residual, dtype=self.dtype, rngs=rngs)

    def weight_decay_mask(self) -> Any:
        from bench.models.resnet50 import weight_decay_mask
        return weight_decay_mask
