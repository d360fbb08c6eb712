"""1-D convolutions as im2col + matmul (bench.models.im2col), used by K > 1 replicas on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.job import Job
from bench.loop import run
from bench.models.im2col import im2col_conv, im2col_for_replicas, with_im2col_convs
from conftest import small_config


@pytest.mark.parametrize("width,stride,padding", [(5, 1, "SAME"), (5, 2, "SAME"), (3, 2, "VALID"),
                                                  (4, 3, ((2, 1),))])
def test_im2col_conv_equals_lax_conv_and_its_gradient(width, stride, padding):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (6, 40, 3))
    w = jax.random.normal(kw, (width, 3, 7))
    dn = ("NWC", "WIO", "NWC")

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride,), padding, dimension_numbers=dn)

    def ours(x, w):
        return im2col_conv(x, w, (stride,), padding, dimension_numbers=dn)

    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
    g_plain = jax.grad(lambda x, w: jnp.sum(jnp.sin(plain(x, w))), argnums=(0, 1))(x, w)
    g_ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_only_1d_convs_are_switched():
    conv1 = nnx.Conv(3, 4, (5,), rngs=nnx.Rngs(0))
    conv2 = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    assert with_im2col_convs(nnx.Sequential(conv1, conv2)) == 1
    assert conv1.conv_general_dilated is im2col_conv
    assert conv2.conv_general_dilated is not im2col_conv


CNN = {"name": "cnn", "channels": [8, 8], "conv_stride": 2, "hidden": [16]}
DATA = {"name": "mnist1d", "num_train": 512}


def test_cnn_replicas_train_with_im2col_on_cpu_and_match_solo_runs(tmp_path):
    assert jax.default_backend() == "cpu" and im2col_for_replicas(2) and not im2col_for_replicas(1)
    grouped_cfg = small_config(model=CNN, dataset=DATA, replicas={"lr": [0.02, 0.1]})
    job = Job(grouped_cfg)
    assert job.train_fns is not job.fns  # training uses im2col; evaluation the plain conv
    grouped = run(grouped_cfg, tmp_path / "g")
    alone = run(small_config(model=CNN, dataset=DATA, optimizer={"lr": 0.1}), tmp_path / "a")[0]
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    curve = lambda r: np.array([[row[k] for k in keys] for row in r["history"]])  # noqa: E731
    np.testing.assert_allclose(curve(grouped[1]), curve(alone), rtol=1e-4, atol=1e-5)
