"""Transformer LM: causality, shapes, parameter counts, init, weight-decay mask, positions,
determinism, dropout, replicas under vmap, forward-over-reverse HVPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bench.models.transformer import (PRESETS, Transformer, from_preset, num_params,
                                      rotary_embedding, weight_decay_mask)

V, T = 256, 16
SMALL = dict(vocab_size=V, context=T, d_model=32, num_layers=2, num_heads=4)


def make(seed: int = 0, **kw) -> Transformer:
    return Transformer(**{**SMALL, **kw}, rngs=nnx.Rngs(seed))


def jitted(model: Transformer):
    """``model(x)`` compiled once (eager NNX dispatches op by op: slow in tests)."""
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda x: apply(state, x)


def tokens(seed: int, batch: int = 2, length: int = T) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, V, dtype=jnp.int32)


def expected_params(vocab_size, context, d_model, num_layers, mlp_ratio, positions,
                    tied_embeddings, bias=True, **_) -> int:
    """Independent count: GPT-2's layout written out layer by layer."""
    d, f = d_model, int(mlp_ratio * d_model)
    b = 1 if bias else 0
    norm = d + b * d
    block = 2 * norm + (d * 3 * d + b * 3 * d) + (d * d + b * d) + (d * f + b * f) + (f * d + b * d)
    return (vocab_size * d + (context * d if positions == "learned" else 0) + num_layers * block
            + norm + (0 if tied_embeddings else d * vocab_size))


# ---------------------------------------------------------------- shapes, causality

@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_logits_shape_and_dtype(positions):
    model = jitted(make(positions=positions))
    logits = model(tokens(0, batch=3, length=T))
    assert logits.shape == (3, T, V) and logits.dtype == jnp.float32
    # shorter sequences work too (positions are 0..T'-1)
    assert model(tokens(0, length=5)).shape == (2, 5, V)


def test_sequence_longer_than_context_is_rejected():
    with pytest.raises(ValueError, match=r"expected tokens \[B, T\] with T <= 16, got shape \(2, 17\)"):
        make()(tokens(0, length=T + 1))


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_output_at_t_does_not_depend_on_later_tokens(positions):
    model = jitted(make(positions=positions))
    x = tokens(1)
    for t in (0, 5, T - 2):
        changed = x.at[:, t + 1:].set((x[:, t + 1:] + 7) % V)
        a, b = model(x), model(changed)
        np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6, rtol=0)
        assert float(jnp.abs(a[:, t + 1:] - b[:, t + 1:]).max()) > 1e-3   # later outputs do change


def test_loss_gradient_at_t_is_zero_for_later_positions_and_tokens():
    # Untied, learned positions: the loss at position t reaches position rows <= t and the
    # embedding rows of tokens at positions <= t only.
    model = make(positions="learned", tied_embeddings=False)
    graphdef, params = nnx.split(model, nnx.Param)
    t = 6
    x = jnp.concatenate([jnp.arange(t + 1), 100 + jnp.arange(T - t - 1)])[None].astype(jnp.int32)
    y = (x + 1) % V

    def loss_at_t(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)[0, t]

    g = jax.jit(jax.grad(loss_at_t))(params)
    pos, tok = np.asarray(g["position_embed"]["embedding"]), np.asarray(g["token_embed"]["embedding"])
    assert np.all(pos[t + 1:] == 0) and np.all(np.abs(pos[:t + 1]).sum(1) > 0)
    assert np.all(tok[100:100 + T - t - 1] == 0) and np.all(np.abs(tok[:t + 1]).sum(1) > 0)


# ---------------------------------------------------------------- positions

def test_rotary_scores_depend_only_on_relative_position():
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (8,)), (1, 12, 1, 8))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (8,)), (1, 12, 1, 8))
    rq, rk = rotary_embedding(q)[0, :, 0], rotary_embedding(k)[0, :, 0]
    scores = np.asarray(rq @ rk.T)                                     # [T, T]
    for offset in (-3, 0, 4):
        diagonal = np.diagonal(scores, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-5, atol=1e-5)
    assert abs(scores[0, 0] - scores[0, 3]) > 1e-3
    # a rotation: norms unchanged, position 0 untouched
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q[0, :, 0], axis=-1), rtol=1e-5)
    np.testing.assert_allclose(rq[0], q[0, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_both_position_schemes_learn_an_order_dependent_task(positions):
    # Target = the token two positions back: impossible without position information
    # (a bag of previous tokens cannot say which came two steps earlier).
    model = make(positions=positions)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.randint(jax.random.key(2), (32, T), 0, 8, dtype=jnp.int32)
    y = jnp.concatenate([x[:, :2], x[:, :-2]], axis=1)
    tx = optax.adam(1e-2)

    def loss(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, 2:], y[:, 2:]).mean()

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    state = tx.init(params)
    first = float(loss(params))
    for _ in range(150):
        params, state, _ = step(params, state)
    assert first > math.log(8)                        # chance over the 8 used tokens is ln 8
    assert float(loss(params)) < 0.1 * math.log(8)


# ---------------------------------------------------------------- parameters and init

@pytest.mark.parametrize("name, vocab, count", [
    ("tiny", 256, 1_024_384), ("small", 256, 10_745_856), ("medium", 256, 31_655_936),
    ("gpt2_small", 256, 86_039_040),
    ("gpt2_small", 50257, 124_439_808),   # GPT-2 small's published 124M (HF gpt2: 124,439,808)
])
def test_preset_parameter_counts(name, vocab, count):
    model = nnx.eval_shape(lambda: from_preset(name, vocab_size=vocab, rngs=nnx.Rngs(0)))
    assert num_params(nnx.state(model, nnx.Param)) == count
    assert expected_params(vocab, **PRESETS[name]) == count


def test_tiny_is_about_one_million_parameters():
    assert 0.9e6 < expected_params(256, **PRESETS["tiny"]) < 1.1e6


@pytest.mark.parametrize("kw", [dict(positions="learned", tied_embeddings=False),
                                dict(bias=False), dict(mlp_ratio=2)])
def test_parameter_count_of_variants(kw):
    assert num_params(nnx.state(make(**kw), nnx.Param)) == expected_params(**{**SMALL, "mlp_ratio": 4,
                                                                             "positions": "rotary",
                                                                             "tied_embeddings": True, **kw})


def test_only_params_no_other_state():
    model = make(dropout=0.1, positions="learned")
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert jax.tree.leaves(rest) == []


def test_gpt2_initialization():
    layers = 2
    model = Transformer(vocab_size=V, context=T, d_model=128, num_layers=layers, num_heads=4,
                        positions="learned", rngs=nnx.Rngs(0))
    block = model.blocks[0]
    residual_std = 0.02 / math.sqrt(2 * layers)
    for w, std in [(model.token_embed.embedding, 0.02), (model.position_embed.embedding, 0.02),
                   (block.attn.qkv.kernel, 0.02), (block.mlp.up.kernel, 0.02),
                   (block.attn.out.kernel, residual_std), (block.mlp.down.kernel, residual_std)]:
        assert abs(float(jnp.std(w[...])) / std - 1) < 0.05
    assert float(jnp.abs(block.attn.qkv.bias[...]).max()) == 0.0
    # small logits at init: the loss on random tokens is near ln V (uniform predictions)
    x = tokens(9, batch=8)
    loss = optax.softmax_cross_entropy_with_integer_labels(jitted(model)(x), jnp.roll(x, -1, 1)).mean()
    assert abs(float(loss) - math.log(V)) < 0.05
    np.testing.assert_array_equal(block.attn_norm.scale[...], 1.0)


def test_weight_decay_mask_decays_matrices_and_embeddings_only():
    model = make(positions="learned", tied_embeddings=False)
    params = nnx.state(model, nnx.Param)
    mask = weight_decay_mask(params)
    flat = {jax.tree_util.keystr(path): (bool(m), p.ndim) for (path, m), p in
            zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(params))}
    decayed = {k for k, (m, _) in flat.items() if m}
    assert decayed == {k for k, (_, ndim) in flat.items() if ndim == 2}   # here: 2-D <=> decayed
    assert sum(1 for k in decayed if "kernel" in k) == 2 * 4 + 1         # 4 per block + head
    assert any("position_embed" in k for k in decayed) and any("token_embed" in k for k in decayed)
    # as an optax mask: zero gradients -> the update is wd * p on decayed leaves, 0 elsewhere
    tx = optax.add_decayed_weights(0.1, mask=weight_decay_mask)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for (path, u), p, (_, m) in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params),
                                    jax.tree_util.tree_leaves_with_path(mask)):
        np.testing.assert_array_equal(u, 0.1 * p if m else jnp.zeros_like(p))


def test_weight_decay_mask_works_on_replica_stacked_params():
    params = nnx.state(make(), nnx.Param)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    assert jax.tree.leaves(weight_decay_mask(stacked)) == jax.tree.leaves(weight_decay_mask(params))


def test_weight_decay_mask_rejects_unknown_parameters():
    with pytest.raises(ValueError, match=r"weight_decay_mask: unknown parameter \['gate'\]"):
        weight_decay_mask({"gate": jnp.ones(3)})


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="d_model 30 is not divisible by num_heads 4"):
        make(d_model=30)
    with pytest.raises(ValueError, match=r"positions must be one of \('rotary', 'learned'\), got 'alibi'"):
        make(positions="alibi")
    with pytest.raises(ValueError, match="rotary positions need an even head dimension, got 3"):
        make(d_model=12, num_heads=4)
    with pytest.raises(ValueError, match="unknown transformer preset 'huge'"):
        from_preset("huge", vocab_size=V, rngs=nnx.Rngs(0))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    x = tokens(10)
    fast, exact = make(seed=0, dtype="bfloat16"), make(seed=0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(fast, nnx.Param)))
    a, b = jitted(fast)(x), jitted(exact)(x)
    assert a.dtype == jnp.float32
    assert 0 < float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(b).max())   # rounded, not broken


# ---------------------------------------------------------------- determinism and dropout

def test_same_seed_same_model_and_outputs():
    x = tokens(3)
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    pa, pb, pc = (nnx.state(m, nnx.Param) for m in (a, b, c))
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
    assert not np.array_equal(pa["token_embed"]["embedding"], pc["token_embed"]["embedding"])
    np.testing.assert_array_equal(jitted(a)(x), jitted(b)(x))


def test_dropout_is_keyed_and_off_in_eval_mode():
    x = tokens(4)
    model, plain = make(seed=0, dropout=0.2), make(seed=0)
    np.testing.assert_array_equal(model(x, train=False), plain(x))       # same params, no dropout
    one = model(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    again = model(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    other = model(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(2)))
    np.testing.assert_array_equal(one, again)
    assert float(jnp.abs(one - other).max()) > 1e-3
    assert float(jnp.abs(one - plain(x)).max()) > 1e-3


# ---------------------------------------------------------------- replicas and curvature

def test_vmap_over_two_parameter_replicas_equals_separate_calls():
    graphdef, p0 = nnx.split(make(seed=0), nnx.Param)
    _, p1 = nnx.split(make(seed=1), nnx.Param)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    x = jnp.stack([tokens(5), tokens(6)])                                  # [K, B, T]
    out = jax.jit(jax.vmap(lambda p, xb: nnx.merge(graphdef, p)(xb)))(stacked, x)
    np.testing.assert_allclose(out[0], nnx.merge(graphdef, p0)(x[0]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[1], nnx.merge(graphdef, p1)(x[1]), atol=1e-5, rtol=1e-5)


def test_forward_over_reverse_hvp_matches_reverse_over_reverse_and_chunks_over_sequences():
    graphdef, params = nnx.split(make(num_layers=1), nnx.Param)   # one block: faster compiles
    x = tokens(7, batch=4)
    y = jnp.roll(x, -1, axis=1)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xb), yb).mean()

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(8), 2 * len(leaves))
    u = jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape) for k, l in zip(keys[::2], leaves)])
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape) for k, l in zip(keys[1::2], leaves)])

    def hvp(p, w, xb, yb):  # the harness's form: jvp of grad
        return jax.jvp(lambda q: jax.grad(loss)(q, xb, yb), (p,), (w,))[1]

    def vdot(a, b):
        return sum(float(jnp.vdot(s, t)) for s, t in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    hvp = jax.jit(hvp)
    hv = hvp(params, v, x, y)
    rr = jax.jit(jax.grad(lambda p: vdot_jax(jax.grad(loss)(p, x, y), v)))(params)
    for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(rr)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)
    hu = hvp(params, u, x, y)
    assert abs(vdot(u, hv) - vdot(v, hu)) < 1e-3 * max(abs(vdot(u, hv)), 1e-3)   # symmetric
    # chunked over sequences: the mean of chunk HVPs is the HVP of the mean loss
    chunks = [hvp(params, v, x[i:i + 2], y[i:i + 2]) for i in (0, 2)]
    for a, b, c in zip(jax.tree.leaves(hv), *(jax.tree.leaves(h) for h in chunks)):
        np.testing.assert_allclose(a, (b + c) / 2, atol=1e-5, rtol=1e-3)


def vdot_jax(a, b):
    return sum(jnp.vdot(s, t) for s, t in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
