"""ResNet-50 v1.5 (Goyal et al.'s model): size, zero-initialised residual branches, weight decay
mask, bfloat16 compute with float32 master weights."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.models import MODELS
from bench.models.resnet50 import Bottleneck
from bench.core.step import split_model


def _apply(model, x, train: bool):
    """One compiled forward pass (eager NNX dispatches op by op: slow on CPU)."""
    return nnx.jit(lambda m, x: m(x, train=train))(model, x)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_parameter_count_is_resnet50s():
    model = nnx.eval_shape(lambda: MODELS.create("resnet50").build((224, 224, 3), 1000, nnx.Rngs(0)))
    _, params, stats = split_model(model)
    assert _count(params) == 25_557_032          # torchvision's resnet50 has the same count
    # 53 BatchNorms (stem, 16 blocks x 3, 4 projections): 26,560 channels, scale and bias
    assert _count(stats) == 2 * 26_560


def test_weight_decay_mask_leaves_out_exactly_batchnorm():
    cfg = MODELS.create("resnet50")
    model = nnx.eval_shape(lambda: cfg.build((64, 64, 3), 10, nnx.Rngs(0)))
    _, params, _ = split_model(model)
    mask = cfg.weight_decay_mask()(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    undecayed = {jax.tree_util.keystr(p) for (p, _), d in zip(flat, jax.tree.leaves(mask)) if not d}
    assert len(undecayed) == 2 * 53 and all("bn" in k for k in undecayed)
    assert sum(math.prod(leaf.shape) for (p, leaf) in flat if jax.tree_util.keystr(p) in undecayed) == 2 * 26_560


def test_residual_blocks_start_as_the_identity():
    block = Bottleneck(32, 8, 1, ghost=None, zero_init=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert np.all(np.asarray(block.bn3.scale[...]) == 0)
    x = jnp.abs(jax.random.normal(jax.random.key(1), (4, 6, 6, 32)))   # relu(x) = x
    np.testing.assert_array_equal(_apply(block, x, True), x)
    plain = Bottleneck(32, 8, 1, ghost=None, zero_init=False, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert not np.allclose(_apply(plain, x, True), x)


def test_bfloat16_compute_keeps_float32_master_weights_and_logits():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    small = {"width": 8, "stages": (1, 1, 1, 1)}
    f32 = MODELS.create("resnet50", **small).build((32, 32, 3), 10, nnx.Rngs(0))
    bf16 = MODELS.create("resnet50", **small, dtype="bfloat16").build((32, 32, 3), 10, nnx.Rngs(0))
    _, params, _ = split_model(bf16)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(lambda x: bf16(x, train=False))(x))
    assert "conv_general_dilated" in jaxpr and "bf16[4,16,16,8]" in jaxpr  # the stem runs in bf16
    out32, out16 = _apply(f32, x, False), _apply(bf16, x, False)
    assert out16.dtype == jnp.float32 and out16.shape == (4, 10)
    np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.02)


def test_tiny_images_train_mode_with_ghost_batch_norm():
    cfg = MODELS.create("resnet50", width=8, stages=(1, 1, 1, 1), ghost_batch_size=2)
    model = cfg.build((16, 16, 3), 5, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    logits = _apply(model, x, True)
    assert logits.shape == (4, 5) and bool(jnp.isfinite(logits).all())
    assert cfg.batch_multiple() == 2
