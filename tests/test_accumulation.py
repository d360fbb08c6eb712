"""Gradient accumulation (bench.core.step.make_replica_step with accumulate=A).

Without batch statistics, A microbatches of B/A give exactly the B-batch update. With
BatchNorm, each microbatch is normalized by its own statistics, so the accumulated gradient is
the mean of per-microbatch gradients: ghost batch norm over the microbatches j, j+A, j+2A, ...
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.models import MODELS
from bench.optim import OPTIMIZERS
from bench.core.loop import run
from bench.models import build_model
from bench.optim import make_optimizer
from bench.core.step import ModelFns, TrainState, cross_entropy, make_replica_step, split_model
from conftest import small_config

B, A, DIM, CLASSES, LR = 32, 4, 12, 5, 0.3


def _setup(batch_norm: bool, ghost: int | None = None):
    model = build_model(MODELS.create("mlp", hidden=(24, 16), batch_norm=batch_norm,
                                    ghost_batch_size=ghost), (DIM,), CLASSES, nnx.Rngs(0))
    graphdef, params, stats = split_model(model)
    tx = make_optimizer(OPTIMIZERS.create("sgd"))  # plain SGD: new = old - lr * grad
    state = TrainState(params=params, stats=stats, opt_state=tx.init(params),
                       peak_lr=jnp.float32(LR), dropout_key=jax.random.PRNGKey(1),
                       alive=jnp.array(True), diverged_step=jnp.array(-1, jnp.int32),
                       step=jnp.array(0, jnp.int32))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, DIM)) * 2 + 0.5, jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, size=B), jnp.int32)
    return ModelFns(graphdef), tx, state, x, y


def _step(fns, tx, state, x, y, accumulate):
    step = jax.jit(make_replica_step(fns, tx, lambda s: jnp.float32(1.0), accumulate))
    return step(state, x, y)


def _grad(fns, params, stats, x, y):
    def loss(p):
        logits, _ = fns.apply(p, stats, x, train=True)
        return cross_entropy(logits, y).mean()
    return jax.jit(jax.grad(loss))(params)


def _close(a, b, **tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_accumulated_update_equals_large_batch_update_without_batchnorm():
    fns, tx, state, x, y = _setup(batch_norm=False)
    full, m1 = _step(fns, tx, state, x, y, 1)
    for accumulate in (2, A, 8):
        acc, m = _step(fns, tx, state, x, y, accumulate)
        _close(acc.params, full.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
        np.testing.assert_allclose(m["grad_norm"], m1["grad_norm"], rtol=1e-5)
    # and it really is one SGD step on the B-batch gradient
    g = _grad(fns, state.params, state.stats, x, y)
    _close(full.params, jax.tree.map(lambda p, d: p - LR * d, state.params, g), rtol=1e-5, atol=1e-6)
    assert _max_diff(full.params, state.params) > 1e-3  # the step moved the parameters


def test_accumulated_gradient_with_batchnorm_is_mean_of_microbatch_gradients():
    fns, tx, state, x, y = _setup(batch_norm=True)
    acc, _ = _step(fns, tx, state, x, y, A)
    # microbatch j = examples j, j+A, j+2A, ... each normalized by its own statistics
    grads = [_grad(fns, state.params, state.stats, x[j::A], y[j::A]) for j in range(A)]
    mean = jax.tree.map(lambda *g: sum(g) / A, *grads)
    expected = jax.tree.map(lambda p, d: p - LR * d, state.params, mean)
    _close(acc.params, expected, rtol=1e-5, atol=1e-6)
    # running statistics: the microbatches update them one after another
    stats = state.stats
    for j in range(A):
        _, stats = fns.apply(state.params, stats, x[j::A], train=True)
    _close(acc.stats, stats, rtol=1e-5, atol=1e-6)
    # ... which is not the full-batch BatchNorm update (the property is not vacuous)
    full, _ = _step(fns, tx, state, x, y, 1)
    assert _max_diff(full.params, acc.params) > 1e-4


def test_accumulation_with_batchnorm_equals_ghost_batchnorm_on_regrouped_batch():
    """accumulate=A == ghost_batch_size=B/A when ghost batch j holds the microbatch j examples."""
    fns, tx, state, x, y = _setup(batch_norm=True)
    acc, _ = _step(fns, tx, state, x, y, A)
    order = np.concatenate([np.arange(j, B, A) for j in range(A)])
    ghost_fns, _, ghost_state, _, _ = _setup(batch_norm=True, ghost=B // A)
    _close(ghost_state.params, state.params, rtol=0, atol=0)  # same init
    ghost, _ = _step(ghost_fns, tx, ghost_state, x[order], y[order], 1)
    _close(acc.params, ghost.params, rtol=1e-5, atol=1e-6)


def test_accumulated_training_run_matches_large_batch_run(tmp_path):
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    curves = []
    for accumulate in (1, 4):
        cfg = small_config(accumulate=accumulate, budget="20steps")
        (record,) = run(cfg, tmp_path / f"a{accumulate}")
        curves.append(np.array([[row[k] for k in keys] for row in record["history"]]))
        assert record["experiment"]["accumulate"] == accumulate
    assert curves[0].shape == (3, 4)
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4, atol=1e-5)
