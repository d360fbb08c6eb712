"""Exact gradient noise from per-example gradients (bench.metrics.noise_exact), checked against a
dense computation: per-example gradients by a python loop of jax.grad, sums in numpy, on a
2-layer float64 MLP with a LayerNorm; the subset estimator's mean over draws against the exact
value of the whole data set within its standard error; norm-layer detection against nnx's
module types on the harness's own models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.config import ConfigError, from_dict
from bench.metrics import noise_exact as ne
from bench.metrics.curvature import measure
from bench.metrics.suite import MetricsConfig, record_keys

N, D, H, C = 48, 5, 6, 3
OFF = dict(hessian=False, density=False, sharpness=False, noise_scale=False, subset_size=0)


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"dense1": {"kernel": jax.random.normal(k1, (D, H), jnp.float64) / np.sqrt(D),
                       "bias": jnp.full((H,), 0.1, jnp.float64)},
            "norm": {"scale": jnp.linspace(0.5, 1.5, H, dtype=jnp.float64),
                     "bias": jnp.linspace(-0.2, 0.2, H, dtype=jnp.float64)},
            "head": {"kernel": jax.random.normal(k2, (H, C), jnp.float64) / np.sqrt(H),
                     "bias": jnp.zeros((C,), jnp.float64)}}


def _loss(params, batch):
    h = batch["x"] @ params["dense1"]["kernel"] + params["dense1"]["bias"]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = jnp.tanh((h - mu) / jnp.sqrt(var + 1e-5) * params["norm"]["scale"] + params["norm"]["bias"])
    logp = jax.nn.log_softmax(h @ params["head"]["kernel"] + params["head"]["bias"])
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


_GRAD = jax.jit(jax.grad(_loss))  # one example's gradient (compiled once for the loop)


def _data():
    x = jax.random.normal(jax.random.PRNGKey(1), (N, D), jnp.float64)
    y = jnp.argmax(x[:, :C] + 0.7 * jax.random.normal(jax.random.PRNGKey(2), (N, C), jnp.float64), 1)
    return {"x": x, "y": y.astype(jnp.int32)}


def _dense(params, data, leaves_of):
    """|G|^2, tr Sigma ((N-1)-normalised) and their ratio over the leaves ``leaves_of(grad)``,
    from per-example gradients taken one example at a time."""
    g = []
    for i in range(N):
        grad = _GRAD(params, {"x": data["x"][i:i + 1], "y": data["y"][i:i + 1]})
        g.append(np.concatenate([np.ravel(np.asarray(a)) for a in leaves_of(grad)]))
    g = np.stack(g)
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum() / (N - 1))
    return float(mean @ mean), trace, trace / float(mean @ mean)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        params, data = _params(), _data()
        cfg = MetricsConfig(**OFF, noise_exact=True, noise_per_layer=True, noise_norm_layers=True,
                            noise_exact_chunk=7)  # 48 = 6 x 7 + 6: a leftover chunk
        out, _ = measure(cfg, _loss, params, data, jax.random.PRNGKey(3), step=5)
        yield params, data, out


def test_whole_data_statistics_match_a_dense_per_example_loop(problem):
    params, data, out = problem
    g2, tr, b = _dense(params, data, jax.tree.leaves)
    np.testing.assert_allclose([out["grad_norm_sq_exact"], out["trace_sigma_exact"],
                                out["noise_scale_simple_exact"]], [g2, tr, b], rtol=1e-10)
    assert out["noise_exact_examples"] == N and out["noise_exact_draws"] == 1
    assert out["noise_scale_simple_exact_stderr"] is None  # all the data once: exact, no interval


def test_per_layer_and_norm_layer_noise_match_the_dense_loop(problem):
    params, data, out = problem
    assert set(out["noise_scale_layers"]) == {"dense1", "norm", "head"}
    for layer in ("dense1", "norm", "head"):
        g2, tr, b = _dense(params, data, lambda g: jax.tree.leaves(g[layer]))
        np.testing.assert_allclose(out["grad_norm_sq_layers"][layer], g2, rtol=1e-10)
        np.testing.assert_allclose(out["trace_sigma_layers"][layer], tr, rtol=1e-10)
        np.testing.assert_allclose(out["noise_scale_layers"][layer], b, rtol=1e-10)
    g2, tr, b = _dense(params, data, lambda g: jax.tree.leaves(g["norm"]))
    assert out["noise_norm_layer_paths"] == ["norm"] and out["noise_norm_params"] == 2 * H
    np.testing.assert_allclose([out["grad_norm_sq_norm"], out["trace_sigma_norm"], out["noise_scale_norm"]],
                               [g2, tr, b], rtol=1e-10)
    # tr Sigma is additive over layers; |G|^2 too
    np.testing.assert_allclose(sum(out["trace_sigma_layers"].values()), out["trace_sigma_exact"], rtol=1e-10)
    np.testing.assert_allclose(sum(out["grad_norm_sq_layers"].values()), out["grad_norm_sq_exact"], rtol=1e-10)


def test_subset_estimates_average_to_the_whole_data_value_within_their_standard_error(problem):
    # Subsets of 6 without replacement from 48: with the finite-N term, the subset's tr Sigma and
    # |G|^2 are unbiased for the data set's. 8 disjoint subsets per measurement x 40 steps =
    # 320 draws; a 4-standard-error band fails by chance with probability ~6e-5 (keys fixed).
    params, data, exact = problem
    with jax.enable_x64(True):
        cfg = MetricsConfig(**OFF, noise_exact=True, noise_exact_size=6, noise_exact_subsets=8,
                            noise_norm_layers=True)
        rows = [measure(cfg, _loss, params, data, jax.random.PRNGKey(3), step=s)[0] for s in range(40)]
    assert rows[0]["grad_norm_sq_exact"] != rows[1]["grad_norm_sq_exact"]  # fresh subsets per step
    assert rows[0]["noise_exact_draws"] == 8 and rows[0]["noise_exact_examples"] == 6
    for key in ("grad_norm_sq_exact", "trace_sigma_exact", "grad_norm_sq_norm", "trace_sigma_norm"):
        v = np.array([r[key] for r in rows])
        se = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(v.mean() - exact[key]) <= 4 * se, key
        assert se < 0.2 * abs(exact[key]), key  # the band is informative
    covered = [r["noise_scale_simple_exact_interval"][0] < exact["noise_scale_simple_exact"]
               < r["noise_scale_simple_exact_interval"][1] for r in rows]
    assert np.mean(covered) >= 0.75  # nominal 95% (delta method on 8 subsets: approximate)


def test_norm_layers_are_the_models_layernorm_and_batchnorm_modules():
    from bench.models import MODELS
    from bench.models.norm import BatchNorm

    for name, shape, classes, kw in (("transformer", (16,), 32, {}), ("resnet", (8, 8, 3), 10, {}),
                                     ("cnn", (40, 1), 10, {"batch_norm": True}), ("mlp", (4,), 3, {})):
        model = nnx.eval_shape(lambda: MODELS.create(name, **kw).build(shape, classes, nnx.Rngs(0)))
        truth = sorted("/".join(map(str, path)) for path, m in nnx.iter_graph(model)
                       if isinstance(m, (nnx.LayerNorm, nnx.BatchNorm, nnx.RMSNorm, BatchNorm)))
        params = nnx.split(model, nnx.Param, ...)[1]
        assert sorted(ne.norm_layer_paths(params)) == truth, name
        assert bool(truth) == (name != "mlp"), name


def test_keys_are_refused_when_misused_and_the_record_keys_are_declared():
    for overrides, match in (({"noise_per_layer": True}, r"metrics.noise_per_layer=true needs metrics.noise_exact"),
                             ({"noise_exact": True, "noise_exact_subsets": 4}, r"noise_exact_subsets=4 needs"),
                             ({"noise_exact": True, "noise_exact_size": 1}, r"noise_exact_size")):
        with pytest.raises(ConfigError, match=match):
            from_dict({"metrics": overrides})
    keys = record_keys()
    assert keys["noise_scale_layers"] == dict[str, float | None] and keys["noise_norm_params"] is int
    with pytest.raises(ValueError, match="more than the 48 examples"):
        ne.draw_subsets(_data(), jax.random.PRNGKey(0), 10, 5)
