"""Convolutions as im2col + matmul (bench.models.matmul_conv) equal lax convolutions.

Float64 (scoped to this module): outputs, gradients and HVPs of the two formulations are
compared at 1e-12, so only round-off separates them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.flatten_util import ravel_pytree

from bench.metrics import hessian as hs
from bench.models.matmul_conv import matmul_conv, with_matmul_convs


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


CASES = [  # input shape (N, spatial..., C), kernel (spatial..., in, out), strides, padding
    ((3, 11, 2), (5, 2, 4), (2,), "SAME"),  # the MNIST-1D CNN's kind
    ((2, 10, 3), (2, 3, 4), (4,), "SAME"),  # stride above the kernel size
    ((2, 8, 8, 3), (5, 5, 3, 4), (2, 2), "SAME"),  # the 2-D CNN's kind
    ((2, 9, 7, 3), (1, 1, 3, 5), (2, 2), "SAME"),  # a ResNet shortcut
    ((2, 9, 7, 3), (3, 2, 3, 5), (2, 1), "VALID"),
    ((2, 7, 5, 2), (3, 3, 2, 3), (1, 2), ((1, 2), (0, 1))),  # explicit, asymmetric padding
]


@pytest.mark.parametrize("shape,kernel,strides,padding", CASES)
def test_matmul_conv_equals_lax_conv_and_its_derivatives(shape, kernel, strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(1), kernel, jnp.float64)
    spatial = "HWD"[: len(shape) - 2]
    dn = lax.conv_dimension_numbers(x.shape, w.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))

    def run(conv):
        return lambda x, w: conv(x, w, strides, padding, dimension_numbers=dn)

    ref, got = run(lax.conv_general_dilated), run(matmul_conv)
    np.testing.assert_allclose(jax.jit(got)(x, w), jax.jit(ref)(x, w), rtol=0, atol=1e-12)
    # Derivatives too (the HVP differentiates the convolution twice).
    loss = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))  # noqa: E731
    for a, b in zip(loss(got)(x, w), loss(ref)(x, w)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)


def test_groups_and_dilation_pass_through_to_lax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 4), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 6), jnp.float64)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHC", "HIO", "NHC"))
    for kw in ({"feature_group_count": 2}, {"rhs_dilation": (2,)}):
        w_ = w if "feature_group_count" in kw else jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6), jnp.float64)
        np.testing.assert_array_equal(matmul_conv(x, w_, (1,), "SAME", dimension_numbers=dn, **kw),
                                      lax.conv_general_dilated(x, w_, (1,), "SAME", dimension_numbers=dn, **kw))


class TinyCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 2, (3, 3), strides=2, rngs=rngs, param_dtype=jnp.float64)
        self.conv2 = nnx.Conv(2, 2, (3, 3), rngs=rngs, param_dtype=jnp.float64)
        self.head = nnx.Linear(2 * 3 * 3, 3, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        x = jnp.tanh(self.conv2(jnp.tanh(self.conv1(x))))
        return self.head(x.reshape(x.shape[0], -1))


def test_models_with_matmul_convs_have_the_same_hessian():
    # The formulation bench.metrics.probe offers with convs="matmul": same parameters, same
    # Hessian (dense, all 115 x 115 entries) and HVPs up to round-off.
    model = TinyCNN(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    switched = nnx.merge(graphdef, params)
    assert with_matmul_convs(switched) == 2
    graphdef_mm = nnx.split(switched, nnx.Param)[0]
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 6, 6, 1), jnp.float64)
    data = {"x": x, "y": jnp.arange(16) % 3}
    flat, unravel = ravel_pytree(params)

    def make_loss(g):
        def loss(p, batch):
            logp = jax.nn.log_softmax(nnx.merge(g, p)(batch["x"]))
            return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))
        return loss

    dense = [jax.jit(jax.hessian(lambda f, g=g: make_loss(g)(unravel(f), data)))(flat) for g in (graphdef, graphdef_mm)]
    np.testing.assert_allclose(dense[1], dense[0], rtol=0, atol=1e-12)
    v = jax.random.normal(jax.random.PRNGKey(3), flat.shape, jnp.float64)
    hv = hs.hvp(make_loss(graphdef_mm), params, data, unravel(v), chunk_size=8)
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense[0] @ np.asarray(v), rtol=0, atol=1e-12)
