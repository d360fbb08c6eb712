"""Exact gradient noise from per-example gradients: the curvature suite's ``noise_exact`` entry.

At each measurement, ``metrics.noise_exact_subsets`` disjoint subsets of
``metrics.noise_exact_size`` examples are drawn afresh from the probe's data (the key folds in
the step; null size: all of it, once). On each subset S of n examples every per-example gradient
g_i is computed (vmapped, ``metrics.noise_exact_chunk`` at a time: memory chunk x P), so

    tr(Sigma_S) = (sum |g_i|^2 - n |G_S|^2) / (n - 1)          (exact on S)
    |G|^2 ~ |G_S|^2 - tr(Sigma_S) (1/n - 1/N)                    (finite-N corrected)

are both unbiased for the whole data set's values (a without-replacement sample of N;
bench.metrics.noise_scale). Across subsets: their means, standard errors and a delta-method 95%
interval on B_simple = tr(Sigma) / |G|^2 (``summarize``, Student-t with subsets - 1 dof). This is
McCandlish's two-batch estimator in its per-example limit (B_small = 1, B_big = n).

From the same per-example moments, no further pass:

- ``metrics.noise_per_layer``: tr(Sigma_l) / |G_l|^2 per parameter group l (a layer: the
  parameters sharing a module path, e.g. ``blocks/0/attn/qkv``), keyed by that path.
- ``metrics.noise_norm_layers``: the noise scale of the normalization layers' parameters alone
  (LayerNorm / BatchNorm / RMSNorm scale and bias), Gray et al. 2024 (arXiv 2411.00999). Their
  text (arxiv.org/html/2411.00999v1, abstract; Figure 1 caption): "We find that the total GNS
  of contemporary transformer models is predicted well by the GNS of only the normalization
  layers", and "We estimate GNS with lower variance by making each minibatch a single example,
  and maintain per-layer GNS estimates." Their estimator is McCandlish's with B_small = 1 (their
  code, nanoGNS exact/gnstracking.py: small_batch_size=1, big batch = the minibatch), which is
  what is computed here, restricted to the norm-layer parameters. Their Section 2.1 (the
  estimator's variance) and any correction it applies were not retrieved; none is applied
  beyond the finite-N term above. A group is a norm layer when its parameters are 1-D and named
  ``scale`` (and ``bias``), the shape of every normalization module in bench.models.

BatchNorm: measured in eval mode (running statistics), where each example's gradient is its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bench.metrics.hessian import Batch, PyTree, num_examples
from bench.metrics.noise_scale import per_example_moments, summarize
from bench.metrics.registry import Cost, Float, Measurement, Metric, num
from bench.schema import ConfigError, frozen, param

__all__ = ["KEY_NOISE_EXACT", "NOISE_EXACT", "draw_subsets", "group_statistics", "layer_groups",
           "norm_layer_paths"]

KEY_NOISE_EXACT = 10
NORM_NAMES = frozenset({"scale", "bias"})


@frozen
class NoiseExactKeys:
    noise_exact: bool = param(False, help="B_simple from every per-example gradient of subsets of the "
                                          "probe's data (bench.metrics.noise_exact)")
    noise_exact_size: int | None = param(None, ge=2, help="examples per subset; null: all the probe's "
                                                           "data, once (exact, no interval)")
    noise_exact_subsets: int = param(1, ge=1, help="disjoint subsets drawn afresh per measurement "
                                                   "(>= 2 for an interval)")
    noise_exact_chunk: int = param(64, ge=1, help="per-example gradients held at once (memory "
                                                  "chunk x parameters)")
    noise_per_layer: bool = param(False, help="also the noise scale of each layer (needs noise_exact)")
    noise_norm_layers: bool = param(False, help="also the noise scale of the normalization layers' "
                                                "parameters alone, Gray et al. 2024 (needs noise_exact)")

    def check(self, where: str) -> None:
        for key in ("noise_per_layer", "noise_norm_layers"):
            if getattr(self, key) and not self.noise_exact:
                raise ConfigError(f"{where}{key}=true needs {where}noise_exact=true (it uses its "
                                  f"per-example gradients)")
        if self.noise_exact_size is None and self.noise_exact_subsets > 1:
            raise ConfigError(f"{where}noise_exact_subsets={self.noise_exact_subsets} needs "
                              f"{where}noise_exact_size (null: all the data, one subset)")


def _name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_paths(params: PyTree) -> list[tuple[str, ...]]:
    """Each leaf's path as names, without nnx's trailing ``value`` attribute."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(_name(k) for k in path)
        if len(names) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
            names = names[:-1]
        out.append(names)
    return out


def layer_groups(params: PyTree) -> dict[str, list[int]]:
    """Layer path ("a/b/c": a leaf's path less its own name) -> indices of its leaves."""
    groups: dict[str, list[int]] = {}
    for i, names in enumerate(leaf_paths(params)):
        groups.setdefault("/".join(names[:-1]) or names[-1], []).append(i)
    return groups


def norm_layer_paths(params: PyTree) -> list[str]:
    """The layers whose parameters are 1-D and named ``scale`` (and ``bias``): norm layers."""
    leaves, names = jax.tree.leaves(params), leaf_paths(params)
    return [layer for layer, idx in layer_groups(params).items()
            if {names[i][-1] for i in idx} <= NORM_NAMES and "scale" in {names[i][-1] for i in idx}
            and all(np.ndim(leaves[i]) == 1 for i in idx)]


def draw_subsets(data: Batch, key: jax.Array, size: int | None, count: int) -> list[Batch]:
    """``count`` disjoint subsets of ``size`` examples (one permutation); all of ``data`` if None."""
    n = num_examples(data)
    if size is None:
        return [data]
    if size * count > n:
        raise ValueError(f"metrics.noise_exact_size={size} x metrics.noise_exact_subsets={count} is more "
                         f"than the {n} examples drawn from")
    idx = np.asarray(jax.random.permutation(key, n)[: size * count]).reshape(count, size)
    return [jax.tree.map(lambda a: a[np.sort(i)], data) for i in idx]


def group_statistics(total: list[Any], sq: list[Any], n: int, population: float,
                     groups: dict[str, Sequence[int]]) -> dict[str, tuple[float, float]]:
    """Per group of leaves: (|G|^2, tr Sigma) unbiased for a data set of ``population`` examples
    from one subset's per-leaf summed gradients ``total`` and squared norms ``sq`` (n examples)."""
    g2_leaf = [float(np.sum((np.asarray(t, np.float64) / n) ** 2)) for t in total]
    sq_leaf = [float(s) for s in sq]
    out = {}
    for name, idx in groups.items():
        g2_s = sum(g2_leaf[i] for i in idx)
        trace = (sum(sq_leaf[i] for i in idx) - n * g2_s) / (n - 1)
        out[name] = (g2_s - trace * (1.0 / n - 1.0 / population), trace)
    return out


def _summaries(cfg: Any, m: Measurement, groups: dict[str, Sequence[int]]) -> dict[str, Any]:
    key = jax.random.fold_in(m.key(KEY_NOISE_EXACT), m.step or 0)  # fresh subsets at every step
    population = num_examples(m.data)
    per_subset = []
    for subset in draw_subsets(m.data, key, cfg.noise_exact_size, cfg.noise_exact_subsets):
        total, sq = per_example_moments(m.loss_fn, m.params, subset, chunk_size=cfg.noise_exact_chunk)
        per_subset.append(group_statistics(jax.tree.leaves(total), jax.tree.leaves(sq),
                                           num_examples(subset), population, groups))
    return {name: summarize([s[name][0] for s in per_subset], [s[name][1] for s in per_subset])
            for name in groups}


def _interval(s) -> list[Float]:
    return [num(v) for v in s.interval()]


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    layers = layer_groups(m.params)
    groups: dict[str, Sequence[int]] = {"": range(len(jax.tree.leaves(m.params)))}
    if cfg.noise_per_layer:
        groups.update(layers)
    norms = norm_layer_paths(m.params) if cfg.noise_norm_layers else []
    if cfg.noise_norm_layers:
        groups[" norm"] = [i for layer in norms for i in layers[layer]]
    s = _summaries(cfg, m, groups)
    whole = s[""]
    out = {"grad_norm_sq_exact": num(whole.grad_norm_sq), "trace_sigma_exact": num(whole.trace_sigma),
           "noise_scale_simple_exact": num(whole.b_simple),
           "noise_scale_simple_exact_stderr": num(whole.b_simple_stderr),
           "noise_scale_simple_exact_interval": _interval(whole),
           "noise_exact_examples": num_examples(m.data) if cfg.noise_exact_size is None else cfg.noise_exact_size,
           "noise_exact_draws": whole.draws}
    if cfg.noise_per_layer:
        out.update(noise_scale_layers={k: num(s[k].b_simple) for k in layers},
                   noise_scale_layers_interval={k: _interval(s[k]) for k in layers},
                   grad_norm_sq_layers={k: num(s[k].grad_norm_sq) for k in layers},
                   trace_sigma_layers={k: num(s[k].trace_sigma) for k in layers})
    if cfg.noise_norm_layers:
        leaves = jax.tree.leaves(m.params)
        count = sum(int(np.size(leaves[i])) for i in groups[" norm"])
        norm = s[" norm"] if count else None
        out.update(noise_norm_params=count, noise_norm_layer_paths=norms,
                   noise_scale_norm=num(norm.b_simple) if norm else None,
                   noise_scale_norm_stderr=num(norm.b_simple_stderr) if norm else None,
                   noise_scale_norm_interval=_interval(norm) if norm else [None, None],
                   grad_norm_sq_norm=num(norm.grad_norm_sq) if norm else None,
                   trace_sigma_norm=num(norm.trace_sigma) if norm else None)
    return out


def _cost(cfg: Any, m: Measurement) -> Cost:
    examples = num_examples(m.data) if cfg.noise_exact_size is None else cfg.noise_exact_size * cfg.noise_exact_subsets
    return Cost(grad_examples=examples)  # one per-example gradient each (vmapped batches of one)


NOISE_EXACT = Metric(
    "noise_exact", NoiseExactKeys,
    record={"grad_norm_sq_exact": Float, "trace_sigma_exact": Float,  # means over subsets
            "noise_scale_simple_exact": Float,  # their ratio (exact when the subset is all the data)
            "noise_scale_simple_exact_stderr": Float,  # delta method over subsets (None: one)
            "noise_scale_simple_exact_interval": list[Float],  # 95%, Student-t, subsets - 1 dof
            "noise_exact_examples": int, "noise_exact_draws": int,  # examples per subset, subsets
            # noise_per_layer: keyed by layer path
            "noise_scale_layers": dict[str, Float], "noise_scale_layers_interval": dict[str, list[Float]],
            "grad_norm_sq_layers": dict[str, Float], "trace_sigma_layers": dict[str, Float],
            # noise_norm_layers: the norm layers' parameters together (None when there are none)
            "noise_norm_params": int, "noise_norm_layer_paths": list[str],
            "noise_scale_norm": Float, "noise_scale_norm_stderr": Float,
            "noise_scale_norm_interval": list[Float], "grad_norm_sq_norm": Float, "trace_sigma_norm": Float},
    measure=_measure, enabled=lambda cfg: cfg.noise_exact, cost=_cost, folds=(KEY_NOISE_EXACT,))
