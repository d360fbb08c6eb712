"""Keskar epsilon-sharpness against the exact box maximum of separable quadratics.

For f(x) = 0.5 sum_i h_i x_i^2 + c with h > 0, f(x + y) is convex in y, so its
maximum over a box is attained at a corner; coordinate-wise (separable) the best
corner is y_i = sign(x_i) b_i (any sign when x_i = 0), giving

    max f = 0.5 sum_i h_i (|x_i| + b_i)^2 + c,   b_i = eps (|x_i| + 1).

Float64 (scoped to this module) so phi, a small difference of O(1) losses, is
compared at 1e-6 relative without float32 cancellation error.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bench.metrics.sharpness import keskar_sharpness, loss_and_grad_at, random_subspace

N = 20
C = 0.3
DUMMY = {"x": jnp.zeros((4, 1)), "y": jnp.zeros((4,), jnp.int32)}  # the quadratic ignores the batch


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def quadratic(h):
    h = jnp.asarray(h, jnp.float64)
    return lambda params, batch: 0.5 * jnp.sum(h * params["w"] ** 2) + C


def curvatures():
    return np.linspace(0.5, 10.0, N)


def away_from_minimum():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (N,), jnp.float64))
    return x + 0.1 * np.sign(x)  # |x_i| > 0.1 > b_i: the random start cannot pick the wrong corner


def phi_exact(h, x, eps):
    b = eps * (np.abs(x) + 1)
    f0 = 0.5 * np.sum(h * x**2) + C
    f_max = 0.5 * np.sum(h * (np.abs(x) + b) ** 2) + C
    return 100 * (f_max - f0) / (1 + f0)


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_full_space_at_minimum_matches_corner_maximum(eps):
    # At the minimum x = 0 the gradient vanishes; all corners tie at 0.5 eps^2 sum(h).
    h = curvatures()
    res = keskar_sharpness(quadratic(h), {"w": jnp.zeros(N)}, DUMMY, jax.random.PRNGKey(0), eps=eps)
    np.testing.assert_allclose(res.phi, phi_exact(h, np.zeros(N), eps), rtol=1e-6)
    np.testing.assert_allclose(res.phi, 100 * 0.5 * eps**2 * h.sum() / (1 + C), rtol=1e-6)
    assert res.iterations <= 10


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_full_space_away_from_minimum_matches_corner_maximum(eps):
    h, x = curvatures(), away_from_minimum()
    res = keskar_sharpness(quadratic(h), {"w": jnp.asarray(x)}, DUMMY, jax.random.PRNGKey(0), eps=eps)
    np.testing.assert_allclose(res.phi, phi_exact(h, x, eps), rtol=1e-6)
    np.testing.assert_allclose(res.loss, 0.5 * np.sum(h * x**2) + C, rtol=1e-12)


def test_subspace_matches_best_corner_of_the_subspace_box():
    # y = A z with |z_i| <= eps (|(A^+ x)_i| + 1); f(x + A z) is convex in z, so the
    # maximum is the best of the 2^p corners, enumerated exactly for p = 5.
    h, x, eps, p = curvatures(), away_from_minimum(), 1e-3, 5
    a = random_subspace(jax.random.PRNGKey(2), N, p, jnp.float64)
    res = keskar_sharpness(quadratic(h), {"w": jnp.asarray(x)}, DUMMY, jax.random.PRNGKey(0), eps=eps, subspace=a)
    a = np.asarray(a)
    b = eps * (np.abs(np.linalg.pinv(a) @ x) + 1)
    f = lambda z: 0.5 * np.sum(h * (x + a @ z) ** 2) + C  # noqa: E731
    # Precondition for a unique local maximum: the gradient in z keeps its sign over the box.
    grads = np.array([a.T @ (h * (x + a @ (np.array(s) * b))) for s in itertools.product([-1, 1], repeat=p)])
    assert np.all(np.sign(grads) == np.sign(grads[0]))
    f0, f_max = f(np.zeros(p)), max(f(np.array(s) * b) for s in itertools.product([-1, 1], repeat=p))
    np.testing.assert_allclose(res.phi, 100 * (f_max - f0) / (1 + f0), rtol=1e-6)


def test_larger_curvature_gives_larger_sharpness():
    h = curvatures()
    phis = [
        keskar_sharpness(quadratic(s * h), {"w": jnp.zeros(N)}, DUMMY, jax.random.PRNGKey(0), eps=1e-3).phi
        for s in (1.0, 2.0, 10.0)
    ]
    assert phis[0] < phis[1] < phis[2]
    np.testing.assert_allclose(np.array(phis) / phis[0], [1.0, 2.0, 10.0], rtol=1e-6)  # phi is linear in h at x = 0


@pytest.mark.parametrize("rolled", [True, False])
@pytest.mark.parametrize("chunk_size", [7, 32, None])
def test_chunked_loss_and_gradient_equal_full_batch(chunk_size, rolled):
    # The objective L-BFGS-B sees is the full-data mean loss whatever the chunking and the loop
    # style (rolled lax loops, or host-driven as on CPU; bench.metrics.operator).
    key = jax.random.PRNGKey(3)
    params = {"w": jax.random.normal(key, (5, 3), jnp.float64), "b": jnp.zeros(3, jnp.float64)}
    data = {"x": jax.random.normal(jax.random.PRNGKey(4), (50, 5), jnp.float64), "y": jnp.arange(50) % 3}

    def loss_fn(p, batch):
        logp = jax.nn.log_softmax(batch["x"] @ p["w"] + p["b"])
        return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

    flat, unravel = ravel_pytree(params)
    y = 0.01 * jax.random.normal(jax.random.PRNGKey(5), flat.shape, jnp.float64)
    a = random_subspace(jax.random.PRNGKey(6), flat.size, 4, jnp.float64)
    z = jnp.arange(4.0) / 10
    for mat, vec, delta in ((None, y, y), (a, z, a @ z)):
        value, grad = loss_and_grad_at(loss_fn, params, data, mat, vec, chunk_size=chunk_size, rolled=rolled)
        ref_v, ref_g = jax.value_and_grad(lambda f: loss_fn(unravel(f), data))(flat + delta)
        np.testing.assert_allclose(value, ref_v, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_g if mat is None else a.T @ ref_g, rtol=1e-10, atol=1e-14)
