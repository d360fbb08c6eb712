"""Decoder-only transformer language model (GPT-2 layout) in Flax NNX.

``Transformer(...)(x, train=..., rngs=...)``: int32 tokens [B, T] -> float32 logits [B, T, V].

Architecture: token embedding (+ learned positions, or rotary positions inside attention),
``num_layers`` pre-LayerNorm blocks ``h + Attn(LN(h))``, ``h + MLP(LN(h))``, a final LayerNorm
and the output projection (the transposed token embedding when ``tied_embeddings``). Causal
self-attention goes through ``jax.nn.dot_product_attention(..., is_causal=True)``; the MLP is
Linear(d, mlp_ratio * d), GELU (tanh approximation, as GPT-2), Linear back to d.

Initialization (GPT-2, Radford et al. 2019, as in nanoGPT): every weight matrix and embedding
~ N(0, 0.02^2); the two residual output projections of each block (attention out, MLP out)
~ N(0, (0.02 / sqrt(2 L))^2) so the residual stream's variance does not grow with depth;
biases 0; LayerNorm scale 1, bias 0 (epsilon 1e-5, GPT-2's).

Dropout (GPT-2's ``embd_pdrop`` / ``resid_pdrop``): after the embedding and on each residual
branch's output. ``jax.nn.dot_product_attention`` has no attention-probability dropout, so
there is none here.

Every variable is an ``nnx.Param`` (no BatchNorm): the harness splits state into Param and
BatchStat only.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02
LAYER_NORM_EPS = 1e-5
POSITIONS = ("rotary", "learned")

# name -> architecture kwargs (vocab_size comes from the dataset: 256 for byte-level data).
# Parameter counts (checked in tests/test_transformer.py): at vocab 256,
# tiny 1,024,384; small 10,745,856; medium 31,655,936; gpt2_small 86,039,040;
# gpt2_small at GPT-2's BPE vocabulary (50257) 124,439,808, GPT-2 small exactly.
PRESETS: dict[str, dict[str, Any]] = {
    # trains on 2 CPU cores in minutes
    "tiny": dict(context=128, d_model=128, num_layers=5, num_heads=4, mlp_ratio=4,
                 positions="rotary", tied_embeddings=True),
    "small": dict(context=256, d_model=384, num_layers=6, num_heads=6, mlp_ratio=4,
                  positions="rotary", tied_embeddings=True),
    # the scale of Marek et al.'s 30M-parameter batch-size sweeps
    "medium": dict(context=512, d_model=512, num_layers=10, num_heads=8, mlp_ratio=4,
                   positions="rotary", tied_embeddings=True),
    # GPT-2 small (Radford et al. 2019): learned positions, tied embeddings, biases
    "gpt2_small": dict(context=1024, d_model=768, num_layers=12, num_heads=12, mlp_ratio=4,
                       positions="learned", tied_embeddings=True),
}

DECAYED_NAMES = frozenset({"kernel", "embedding"})   # weight matrices, token/position embeddings
UNDECAYED_NAMES = frozenset({"bias", "scale"})       # biases, LayerNorm scales and biases


def rotary_embedding(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) of x [..., T, N, H], position t = index on T.

    Half-split layout (GPT-NeoX): channel i is paired with i + H/2 and the pair is rotated by
    t * base^(-2i/H). Scores q_t . k_s then depend on t and s only through t - s.
    """
    t, h = x.shape[-3], x.shape[-1]
    half = h // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]    # [T, H/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]       # [T, 1, H/2]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


class CausalSelfAttention(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, *, rotary: bool, rotary_base: float,
                 bias: bool, out_std: float, dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.rotary = rotary
        self.rotary_base = rotary_base
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=bias, kernel_init=_normal(INIT_STD),
                              dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, use_bias=bias, kernel_init=_normal(out_std),
                              dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                     # [B, T, N, H]
        if self.rotary:
            q, k = rotary_embedding(q, self.rotary_base), rotary_embedding(k, self.rotary_base)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.reshape(b, t, d))


class MLP(nnx.Module):
    def __init__(self, d_model: int, hidden: int, *, bias: bool, out_std: float, dtype: Any,
                 rngs: nnx.Rngs):
        self.up = nnx.Linear(d_model, hidden, use_bias=bias, kernel_init=_normal(INIT_STD),
                             dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(hidden, d_model, use_bias=bias, kernel_init=_normal(out_std),
                               dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x), approximate=True))


class Block(nnx.Module):
    """Pre-LayerNorm residual block: h + Attn(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, d_model: int, num_heads: int, mlp_hidden: int, *, rotary: bool,
                 rotary_base: float, bias: bool, out_std: float, dropout: float, dtype: Any,
                 rngs: nnx.Rngs):
        self.attn_norm = nnx.LayerNorm(d_model, epsilon=LAYER_NORM_EPS, use_bias=bias, dtype=dtype,
                                       rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, rotary=rotary, rotary_base=rotary_base,
                                        bias=bias, out_std=out_std, dtype=dtype, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(d_model, epsilon=LAYER_NORM_EPS, use_bias=bias, dtype=dtype,
                                      rngs=rngs)
        self.mlp = MLP(d_model, mlp_hidden, bias=bias, out_std=out_std, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout else None

    def _drop(self, h: jax.Array, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        return h if self.dropout is None else self.dropout(h, deterministic=not train, rngs=rngs)

    def __call__(self, h: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        h = h + self._drop(self.attn(self.attn_norm(h)), train, rngs)
        return h + self._drop(self.mlp(self.mlp_norm(h)), train, rngs)


class Transformer(nnx.Module):
    """Decoder-only LM; see the module docstring.

    ``context``: the longest sequence (the learned position table's length; rotary positions
    work at any length up to it). ``bias``: biases in the linear layers and LayerNorms (GPT-2
    has them; many recent LMs drop them). ``rotary_base``: the rotary frequency base.
    ``dtype``: the computation dtype (``"bfloat16"`` on accelerators); parameters and logits
    stay float32.
    """

    def __init__(self, *, vocab_size: int, context: int, d_model: int, num_layers: int,
                 num_heads: int, mlp_ratio: float = 4, positions: Literal["rotary", "learned"] = "rotary",
                 tied_embeddings: bool = True, dropout: float = 0.0, bias: bool = True,
                 rotary_base: float = 10000.0, dtype: str = "float32", rngs: nnx.Rngs):
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if positions == "rotary" and (d_model // num_heads) % 2:
            raise ValueError(f"rotary positions need an even head dimension, got {d_model // num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        compute = jnp.dtype(dtype)
        self.context = context
        self.tied_embeddings = tied_embeddings
        self.token_embed = nnx.Embed(vocab_size, d_model, embedding_init=_normal(INIT_STD),
                                     dtype=compute, rngs=rngs)
        self.position_embed = (nnx.Embed(context, d_model, embedding_init=_normal(INIT_STD),
                                         dtype=compute, rngs=rngs)
                               if positions == "learned" else None)
        out_std = INIT_STD / math.sqrt(2 * num_layers)
        self.blocks = nnx.List([
            Block(d_model, num_heads, int(mlp_ratio * d_model), rotary=positions == "rotary",
                  rotary_base=rotary_base, bias=bias, out_std=out_std, dropout=dropout,
                  dtype=compute, rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = nnx.LayerNorm(d_model, epsilon=LAYER_NORM_EPS, use_bias=bias,
                                        dtype=compute, rngs=rngs)
        self.head = (None if tied_embeddings else
                     nnx.Linear(d_model, vocab_size, use_bias=False, kernel_init=_normal(INIT_STD),
                                dtype=compute, rngs=rngs))
        self.dropout = nnx.Dropout(dropout) if dropout else None

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        if x.ndim != 2 or x.shape[1] > self.context:
            raise ValueError(f"expected tokens [B, T] with T <= {self.context}, got shape {x.shape}")
        h = self.token_embed(x)
        if self.position_embed is not None:
            h = h + self.position_embed(jnp.arange(x.shape[1]))
        if self.dropout is not None:
            h = self.dropout(h, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            h = block(h, train=train, rngs=rngs)
        h = self.final_norm(h)
        logits = self.token_embed.attend(h) if self.tied_embeddings else self.head(h)
        return logits.astype(jnp.float32)


def from_preset(name: str, *, vocab_size: int, rngs: nnx.Rngs, **overrides: Any) -> Transformer:
    """``Transformer(**PRESETS[name], vocab_size=..., **overrides)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}; choose one of {sorted(PRESETS)}")
    return Transformer(**{**PRESETS[name], **overrides}, vocab_size=vocab_size, rngs=rngs)


def _leaf_name(path: tuple) -> str:
    """The variable's attribute name: the last key of the path that is not Variable.value."""
    for key in reversed(path):
        name = getattr(key, "key", None)
        if isinstance(name, str):
            return name
    raise ValueError(f"cannot name the parameter at {jax.tree_util.keystr(path)}")


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools with the structure of ``params``: True for weight matrices and
    embeddings (decayed), False for biases and LayerNorm parameters.

    Decided by name, not rank, so it also holds for params stacked over replicas. Usable as
    ``optax.add_decayed_weights(wd, mask=weight_decay_mask)`` or ``optax.adamw(..., mask=...)``.
    """
    def decide(path: tuple, _leaf: Any) -> bool:
        name = _leaf_name(path)
        if name in DECAYED_NAMES:
            return True
        if name in UNDECAYED_NAMES:
            return False
        raise ValueError(f"weight_decay_mask: unknown parameter {jax.tree_util.keystr(path)}")

    return jax.tree_util.tree_map_with_path(decide, params)


def num_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
