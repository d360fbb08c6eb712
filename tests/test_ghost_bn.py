"""Ghost batch norm (Hoffer et al. 2017): bench.models.norm.BatchNorm(ghost_batch_size=g)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.models import MODELS
from bench.models import build_model
from bench.models.norm import BatchNorm

EPS, MOMENTUM = 1e-5, 0.9


def _reference(x: np.ndarray, g: int, scale: np.ndarray, bias: np.ndarray):
    """Normalize each chunk of g consecutive examples by its own statistics (numpy)."""
    out, means, variances = [], [], []
    axes = tuple(range(x.ndim - 1))  # every axis but the features
    for i in range(0, x.shape[0], g):
        chunk = x[i:i + g].astype(np.float64)
        mean, var = chunk.mean(axis=axes), chunk.var(axis=axes)  # biased variance
        out.append((chunk - mean) / np.sqrt(var + EPS) * scale + bias)
        means.append(mean)
        variances.append(var)
    return np.concatenate(out), np.mean(means, 0), np.mean(variances, 0)


def _input(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * rng.uniform(0.5, 3, size=shape[-1]) + rng.normal(size=shape[-1])
            ).astype(np.float32)


@pytest.mark.parametrize("shape", [(32, 6), (32, 10, 6)])   # dense [N, C] and 1-D conv [N, L, C]
@pytest.mark.parametrize("g", [4, 8, 32, None])
def test_ghost_batchnorm_normalizes_each_chunk_and_averages_running_stats(shape, g):
    x = _input(shape)
    bn = BatchNorm(shape[-1], momentum=MOMENTUM, epsilon=EPS, ghost_batch_size=g)
    scale = np.linspace(0.5, 2.0, shape[-1]).astype(np.float32)
    bias = np.linspace(-1.0, 1.0, shape[-1]).astype(np.float32)
    bn.scale[...], bn.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    y = bn(jnp.asarray(x), train=True)
    expected, chunk_mean, chunk_var = _reference(x, g or shape[0], scale, bias)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
    # running stats (init mean 0, var 1): one EMA step towards the mean of the chunk statistics
    np.testing.assert_allclose(np.asarray(bn.mean[...]), (1 - MOMENTUM) * chunk_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), MOMENTUM + (1 - MOMENTUM) * chunk_var,
                               rtol=1e-5, atol=1e-6)
    # eval mode uses the running statistics, not the batch
    z = bn(jnp.asarray(x), train=False)
    ref = (x - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + EPS) * scale + bias
    np.testing.assert_allclose(np.asarray(z), ref, rtol=1e-4, atol=1e-4)


def test_ghost_chunks_do_not_see_each_other():
    x = _input((32, 6))
    bn = BatchNorm(6, ghost_batch_size=8)
    y = np.asarray(bn(jnp.asarray(x), train=True))
    x2 = x.copy()
    x2[8:] = x2[8:] * 5 + 3                       # change every chunk but the first
    y2 = np.asarray(BatchNorm(6, ghost_batch_size=8)(jnp.asarray(x2), train=True))
    np.testing.assert_allclose(y2[:8], y[:8], rtol=1e-5, atol=1e-6)
    # whereas full-batch norm couples every example
    y3 = np.asarray(BatchNorm(6)(jnp.asarray(x2), train=True))
    y4 = np.asarray(BatchNorm(6)(jnp.asarray(x), train=True))
    assert np.abs(y3[:8] - y4[:8]).max() > 1e-2


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ghost_model_equals_model_applied_to_each_chunk(name):
    """A whole network with ghost BN (g) on 4g examples == the plain network on each chunk."""
    g = 8
    kwargs = dict(hidden=(16,), batch_norm=True)
    if name == "cnn":
        kwargs.update(channels=(8, 8), kernel_size=3, conv_stride=1)
    shape = (20, 1) if name == "cnn" else (12,)
    ghost = build_model(MODELS.create(name, **kwargs, ghost_batch_size=g), shape, 5, nnx.Rngs(0))
    plain = build_model(MODELS.create(name, **kwargs), shape, 5, nnx.Rngs(0))
    x = jnp.asarray(_input((4 * g,) + shape))
    out = ghost(x, train=True)
    expected = jnp.concatenate([plain(x[i:i + g], train=True) for i in range(0, 4 * g, g)])
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-4, atol=1e-5)
    full = build_model(MODELS.create(name, **kwargs), shape, 5, nnx.Rngs(0))(x, train=True)
    assert float(jnp.abs(full - out).max()) > 1e-3   # global-batch BN differs
