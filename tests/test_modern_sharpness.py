"""Adam's preconditioned sharpness and batch sharpness against dense computations on a tiny MLP
(bench.metrics.preconditioned, bench.metrics.batch_sharpness).

Float64 throughout (as tests/test_hessian.py): the dense references are ``eigvals`` of P^-1 H
and ``jax.hessian`` per minibatch, and the iterative estimates must match them to 1e-6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bench.metrics.batch_sharpness import batch_rayleigh, batch_sharpness, minibatch_indices
from bench.metrics.preconditioned import adam_preconditioner, preconditioned_top_eigenvalues
from tiny_mlp import init_mlp, loss_fn


SIZES = (4, 6, 3)  # a smaller hidden layer than test_hessian's: dense P^-1 H per case


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 4), jnp.float64)
    y = jnp.argmax(x[:, :3] + 0.5 * jax.random.normal(jax.random.PRNGKey(2), (64, 3), jnp.float64), 1)
    return {"x": x, "y": y.astype(jnp.int32)}


def dense_hessian(params, batch):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat)), flat


def adam_run(data, steps, *, lr=0.05, b1=0.9, b2=0.99, eps=1e-3, wrap=True):
    """``steps`` full-batch Adam steps (as the harness builds it: inject_hyperparams around a
    chain) -> (params before the last step, params, optimizer state)."""
    tx = optax.inject_hyperparams(lambda learning_rate: optax.chain(
        optax.add_decayed_weights(0.0), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)))(learning_rate=lr) \
        if wrap else optax.adam(lr, b1=b1, b2=b2, eps=eps)
    params = init_mlp(jax.random.PRNGKey(0), SIZES)
    state, prev = tx.init(params), params
    for _ in range(steps):
        updates, state = tx.update(jax.grad(loss_fn)(params, data), state, params)
        prev, params = params, optax.apply_updates(params, updates)
    return prev, params, state


@pytest.mark.parametrize("steps", [1, 3, 40])
def test_adam_preconditioner_is_the_one_optax_divides_the_first_moment_by(data, steps):
    # theta_t - theta_{t-1} = -lr m_t / P_t with m_t the un-corrected EMA in the state
    lr, b1, b2, eps = 0.05, 0.9, 0.99, 1e-3
    prev, params, state = adam_run(data, steps, lr=lr, b1=b1, b2=b2, eps=eps)
    p = adam_preconditioner(state, b1=b1, b2=b2, eps=eps)
    mu = state.inner_state[1][0].mu
    step = ravel_pytree(jax.tree.map(jnp.subtract, params, prev))[0]
    predicted = ravel_pytree(jax.tree.map(lambda m, q: -lr * m / q, mu, p))[0]
    np.testing.assert_allclose(np.asarray(step), np.asarray(predicted), rtol=1e-10, atol=1e-14)


def test_adam_preconditioner_absent_before_the_first_step_and_without_adam(data):
    params = init_mlp(jax.random.PRNGKey(0), SIZES)
    assert adam_preconditioner(optax.adam(0.1).init(params), b1=0.9, b2=0.999, eps=1e-8) is None
    assert adam_preconditioner(optax.sgd(0.1, momentum=0.9).init(params), b1=0.9, b2=0.999, eps=1e-8) is None


@pytest.mark.parametrize("rolled", [False, True])
def test_preconditioned_top_eigenvalue_matches_dense_eigenvalues_of_p_inverse_h(data, rolled):
    b1, b2, eps = 0.9, 0.99, 1e-3
    _, params, state = adam_run(data, 20, b1=b1, b2=b2, eps=eps, wrap=False)
    p = adam_preconditioner(state, b1=b1, b2=b2, eps=eps)
    h, flat = dense_hessian(params, data)
    pinv = 1.0 / np.asarray(ravel_pytree(p)[0])
    top = np.max(np.linalg.eigvals(pinv[:, None] * h).real)  # P^-1 H, not symmetric
    sym = np.linalg.eigvalsh(np.sqrt(pinv)[:, None] * h * np.sqrt(pinv)[None, :])[-2:][::-1]
    assert top == pytest.approx(sym[0], rel=1e-9)
    res = preconditioned_top_eigenvalues(loss_fn, params, data, jax.random.PRNGKey(3), p, k=2,
                                         num_iters=flat.size, chunk_size=24, rolled=rolled)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), sym, rtol=1e-6)
    assert float(res.residuals[0]) < 1e-6 * abs(sym[0])
    # the plain Hessian's top eigenvalue is a different number (the preconditioner matters)
    assert abs(np.linalg.eigvalsh(h)[-1] - sym[0]) > 0.1 * sym[0]


def test_batch_rayleigh_and_batch_sharpness_match_dense_minibatch_hessians(data):
    params = init_mlp(jax.random.PRNGKey(0), SIZES)
    idx = np.asarray(minibatch_indices(jax.random.PRNGKey(5), n=64, batch_size=8, num=6))
    assert idx.shape == (6, 8) and all(len(set(row)) == 8 for row in idx)  # no repeats in a batch
    dense = []
    for row in idx:
        batch = jax.tree.map(lambda a: a[row], data)
        h, _ = dense_hessian(params, batch)
        g = np.asarray(ravel_pytree(jax.grad(loss_fn)(params, batch))[0])
        ghg, gg = batch_rayleigh(loss_fn, params, data, row)
        assert float(ghg) == pytest.approx(g @ h @ g, rel=1e-10) and float(gg) == pytest.approx(g @ g, rel=1e-12)
        dense.append(g @ h @ g / (g @ g))
    res = batch_sharpness(loss_fn, params, data, jax.random.PRNGKey(5), batch_size=8, num_batches=6)
    np.testing.assert_allclose(res.samples, dense, rtol=1e-10)
    assert res.mean == pytest.approx(np.mean(dense), rel=1e-10)
    assert res.stderr == pytest.approx(np.std(dense, ddof=1) / np.sqrt(6), rel=1e-10)


def test_batch_sharpness_of_the_full_batch_is_one_rayleigh_quotient(data):
    params = init_mlp(jax.random.PRNGKey(0), SIZES)
    h, _ = dense_hessian(params, data)
    g = np.asarray(ravel_pytree(jax.grad(loss_fn)(params, data))[0])
    res = batch_sharpness(loss_fn, params, data, jax.random.PRNGKey(0), batch_size=64, num_batches=10)
    assert len(res.samples) == 1 and np.isnan(res.stderr)
    assert res.mean == pytest.approx(g @ h @ g / (g @ g), rel=1e-10)
    assert res.mean <= np.linalg.eigvalsh(h)[-1] + 1e-12  # a Rayleigh quotient: never above lambda_max
