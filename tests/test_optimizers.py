"""The optimizer contract and the optax.contrib optimizers, each against an independent
computation: the README's extension example run verbatim with the transformer's weight-decay
mask, weight decay honoured (and masked) by every registered optimizer, Muon and schedule-free
AdamW / SGD equal to optax's own, and evaluation at the schedule-free averaged parameters."""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bench.config import ConfigError, from_dict, validate
from bench.core.loop import run
from bench.models.transformer import Transformer
from bench.models.transformer import weight_decay_mask as transformer_mask
from bench.optim import OPTIMIZERS, OptimizerConfig, evaluation_params, make_optimizer
from bench.optim_contrib import muon_dimensions
from bench.schema import frozen, param
from bench.core.step import split_model
from conftest import REPO, small_config

LR = 0.01


def _readme_optimizer_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("Adding an optimizer is one registered section"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def rmsprop():
    """The README's example, executed verbatim, registered for the test only."""
    namespace = {"OPTIMIZERS": OPTIMIZERS, "OptimizerConfig": OptimizerConfig, "frozen": frozen,
                 "param": param, "optax": optax}
    exec(compile(_readme_optimizer_example(), "README.md", "exec"), namespace)
    try:
        yield namespace["RMSPropConfig"]
    finally:
        OPTIMIZERS._classes.pop("rmsprop")


def _tiny_transformer_params():
    """Random values in the transformer's parameter tree (its shapes, abstractly: fast)."""
    model = nnx.eval_shape(lambda: Transformer(vocab_size=16, context=8, num_layers=1, d_model=8,
                                               num_heads=2, rngs=nnx.Rngs(0)))
    return _grads_like(split_model(model)[1], seed=0)


@partial(jax.jit, static_argnums=0)
def _normals(shapes, key):
    keys = jax.random.split(key, len(shapes))
    return [jax.random.normal(k, shape, dtype) for k, (shape, dtype) in zip(keys, shapes)]


def _grads_like(params, seed=1):
    """A random tree with the structure and shapes of ``params`` (one compiled call)."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten(_normals(tuple((x.shape, x.dtype) for x in leaves), jax.random.key(seed)))


def _one_step(tx, params, grads, lr=LR):
    state = jax.jit(tx.init)(params)
    state.hyperparams["learning_rate"] = jnp.float32(lr)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    return updates


def test_readme_optimizer_example_decays_exactly_the_transformer_mask(rmsprop):
    cfg = rmsprop(name="rmsprop", weight_decay=0.1)
    params = _tiny_transformer_params()
    grads = _grads_like(params)
    updates = _one_step(make_optimizer(cfg, mask=transformer_mask), params, grads)
    plain = optax.rmsprop(LR, decay=cfg.decay, eps=cfg.eps)
    expected, _ = jax.jit(lambda g, p: plain.update(g, plain.init(p), p))(grads, params)
    mask = transformer_mask(params)
    decayed = jax.tree.map(lambda e, p, m: e - LR * 0.1 * p if m else e, expected, params, mask)
    assert any(jax.tree.leaves(mask)) and not all(jax.tree.leaves(mask))
    for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(decayed)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_readme_optimizer_example_trains_the_transformer(rmsprop, tmp_path):
    cfg = small_config(
        dataset={"name": "markov", "context": 16, "markov_train": 256, "markov_test": 64},
        model={"name": "transformer", "num_layers": 1, "d_model": 32, "num_heads": 2},
        optimizer={"name": "rmsprop", "lr": 0.003, "weight_decay": 0.1}, batch_size=8,
        budget="6steps", eval={"every_steps": 3, "batch_size": 64}, target={"test_accuracy": None})
    (record,) = run(cfg, tmp_path)
    assert record["status"] == "finished"
    losses = [row["train_loss"] for row in record["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def _decay_mask(params):
    """Decay the kernels, not the biases (an MLP's mask, by name)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: "kernel" in jax.tree_util.keystr(path), params)


@pytest.mark.parametrize("name", OPTIMIZERS.names)
def test_every_optimizer_honours_weight_decay_on_the_mask_only(name):
    model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    params = split_model(model)[1]
    grads = [_grads_like(params, s) for s in (1, 2, 3)]  # Adam's first step is sign-like
    (*_, without), _ = _steps(make_optimizer(OPTIMIZERS.create(name, weight_decay=0.0), mask=_decay_mask), params, grads)
    (*_, with_wd), _ = _steps(make_optimizer(OPTIMIZERS.create(name, weight_decay=0.5), mask=_decay_mask), params, grads)
    for path_mask, a, b in zip(jax.tree.leaves(_decay_mask(params)), jax.tree.leaves(without),
                               jax.tree.leaves(with_wd)):
        if path_mask:
            assert not np.allclose(a, b), f"{name}: weight_decay ignored"
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: decay leaked past the mask")


def _mixed_tree():
    keys = jax.random.split(jax.random.key(3), 4)
    return {"dense": {"kernel": jax.random.normal(keys[0], (5, 3)), "bias": jax.random.normal(keys[1], (3,))},
            "conv": {"kernel": jax.random.normal(keys[2], (3, 2, 4))},
            "embed": {"embedding": jax.random.normal(keys[3], (6, 5))}}


def _steps(tx, params, grads_seq, lr=LR, inject=True):
    """Params after each step (the LR set in the state, as the train step does); the state."""
    @jax.jit
    def step(params, state, g):
        if inject:
            state.hyperparams["learning_rate"] = jnp.float32(lr)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    state, outs = tx.init(params), []
    for g in grads_seq:
        params, state = step(params, state, g)
        outs.append(params)
    return outs, state


def test_muon_splits_kernels_from_the_rest_and_equals_optax_muon():
    params = _mixed_tree()
    grads = [_grads_like(params, s) for s in (1, 2, 3)]
    specs = muon_dimensions(params)
    assert specs["dense"]["bias"] is None and specs["embed"]["embedding"] is None
    assert specs["conv"]["kernel"] == optax.contrib.MuonDimensionNumbers((0, 1), 2)
    ours, _ = _steps(make_optimizer(OPTIMIZERS.create("muon", lr=LR)), params, grads)
    theirs, _ = _steps(optax.contrib.muon(LR, muon_weight_dimension_numbers=specs), params, grads, inject=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):  # to float32 round-off:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # the LR is injected, not constant
    # the conv kernel is orthogonalized as its [window x fan_in, fan_out] matrix
    flat = {"k": params["conv"]["kernel"].reshape(6, 4)}
    flat_grads = [{"k": g["conv"]["kernel"].reshape(6, 4)} for g in grads]
    matrix, _ = _steps(optax.contrib.muon(LR), flat, flat_grads, inject=False)
    np.testing.assert_allclose(ours[-1]["conv"]["kernel"].reshape(6, 4), matrix[-1]["k"], rtol=1e-5, atol=1e-6)


def test_muon_decoupled_decay_matches_optax_muon_with_decay():
    params = _mixed_tree()
    grads = [_grads_like(params, s) for s in (1, 2)]
    ours, _ = _steps(make_optimizer(OPTIMIZERS.create("muon", lr=LR, weight_decay=0.3)), params, grads)
    theirs, _ = _steps(optax.contrib.muon(LR, weight_decay=0.3, adam_weight_decay=0.3,
                                          muon_weight_dimension_numbers=muon_dimensions(params)),
                       params, grads, inject=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, reference", [
    ("schedule_free_adamw", lambda: optax.contrib.schedule_free_adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)),
    ("schedule_free_sgd", lambda: optax.contrib.schedule_free_sgd(LR, b1=0.9, weight_decay=0.01)),
])
def test_schedule_free_equals_optax_and_evaluates_optax_eval_params(name, reference):
    params = _mixed_tree()
    grads = [_grads_like(params, s) for s in (1, 2, 3)]
    cfg = OPTIMIZERS.create(name, lr=LR, weight_decay=0.01)
    ours, state = _steps(make_optimizer(cfg), params, grads)
    theirs, their_state = _steps(reference(), params, grads, inject=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(a, b)
    want = optax.contrib.schedule_free_eval_params(their_state, theirs[-1])
    got = cfg.eval_params(ours[-1], state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(ours[-1])[0])
    # stacked over replicas: each replica's own eval params
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), (ours[-1], state))
    both = evaluation_params(cfg, *stacked)
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a[1], b)


def test_schedule_free_run_evaluates_the_averaged_parameters(tmp_path):
    from bench.core.job import Job
    cfg = small_config(optimizer={"name": "schedule_free_adamw", "lr": 0.01}, budget="5steps",
                       replicas={"seeds": [0, 1]})
    job = Job(cfg)
    state, _ = job.train(job.init_state(), 0, 5)
    got = job.evaluate(state)["test_loss"]
    for k in range(2):
        one = jax.tree.map(lambda a: a[k], (state.params, state.opt_state, state.stats))
        x = optax.contrib.schedule_free_eval_params(one[1].inner_state, one[0])
        logits, _ = jax.jit(lambda p, s, xs: job.fns.apply(p, s, xs, train=False))(
            x, one[2], jnp.asarray(job.data.x_test))
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
        want = -np.mean(logp[np.arange(len(job.data.y_test)), job.data.y_test])
        assert got[k] == pytest.approx(want, rel=1e-5)


def test_schedule_free_refuses_a_second_weight_average():
    with pytest.raises(ConfigError, match="eval.ewa_decay averages the weights"):
        validate(from_dict({"optimizer": {"name": "schedule_free_sgd"}, "eval": {"ewa_decay": 0.99}}))
