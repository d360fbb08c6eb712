"""Curvature metrics as a registry: the README's "add a metric" example runs, and the registry is
the one home of every metric's keys and record keys."""

from __future__ import annotations

import dataclasses
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.config import Config, from_dict
from bench.metrics.curvature import measure
from bench.metrics.registry import Metric, check_registry
from bench.metrics.suite import METRICS, MetricsConfig, metrics_config, record_keys, summary_columns
from bench.schema import ConfigError, build
from conftest import REPO
from tiny_mlp import loss_fn, make_problem


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def readme_metric_module(monkeypatch) -> types.ModuleType:
    """The README's example metric module, imported as bench.metrics.gradient_norm."""
    text = (REPO / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# bench/metrics/gradient_norm.py\n.*?)```", text, re.S)
    module = types.ModuleType("bench.metrics.gradient_norm")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "README.md:gradient_norm", "exec"), module.__dict__)
    return module


def test_readme_metric_is_one_module_and_one_registry_entry(monkeypatch):
    metric = readme_metric_module(monkeypatch).GRADIENT_NORM
    registry = (*METRICS, metric)
    section = metrics_config(registry)
    cfg = build(section, {"hessian": True, "gradient_norm": True, "density": False, "sharpness": False,
                          "noise_scale": False, "power_iters": 0, "hutchinson_probes": 0,
                          "lanczos_iters": 5, "subset_size": 0})
    with pytest.raises(ConfigError, match=r"^metrics.gradient_norm='yes' must be true or false$"):
        build(section, {"gradient_norm": "yes"}, "metrics.")
    params, data = make_problem()
    out, _ = measure(cfg, loss_fn, params, data, jax.random.PRNGKey(0), metrics=registry)
    # independent: the gradient of the whole-data mean loss, flattened by hand
    grad = jax.grad(loss_fn)(params, data)
    expected = np.sqrt(sum(float(jnp.sum(g.astype(jnp.float64) ** 2)) for g in jax.tree.leaves(grad)))
    assert out["gradient_norm"] == pytest.approx(expected, rel=1e-6)
    assert set(out) <= set(record_keys(cfg, registry))
    assert summary_columns(cfg, registry)[-1] == "curvature_gradient_norm"
    # the other metrics' numbers do not change when one is added (their own folded keys)
    alone, _ = measure(cfg, loss_fn, params, data, jax.random.PRNGKey(0))
    assert alone["hessian_eigenvalues"] == out["hessian_eigenvalues"]


def test_metrics_section_keeps_every_users_key_in_registry_order():
    names = [f.name for f in dataclasses.fields(MetricsConfig)]
    assert names[:6] == ["hessian", "every", "dense_every", "dense_until", "subset_size", "chunk_size"]
    per_metric = [f.name for m in METRICS for f in dataclasses.fields(m.keys)]
    assert names[6:] == per_metric and len(set(names)) == len(names)
    assert from_dict({"metrics": {"hessian": True, "every": 200}}).metrics.every == 200
    assert isinstance(Config().metrics, MetricsConfig)


def test_every_key_is_declared_once_across_the_registry():
    clash = Metric("clash", METRICS[0].keys, {"other": float}, METRICS[0].measure,
                   METRICS[0].enabled, METRICS[0].cost)
    with pytest.raises(ValueError, match=r"config key \['lanczos_iters', 'top_from_slq', 'top_k'\] declared twice"):
        check_registry((*METRICS, clash))


def test_summary_columns_follow_the_registry():
    assert summary_columns() == (
        "curvature_hessian_top_eigenvalue", "curvature_hessian_trace",
        "curvature_sharpness_full_eps1e-03", "curvature_sharpness_full_eps5e-04",
        "curvature_sharpness_subspace_eps1e-03", "curvature_sharpness_subspace_eps5e-04")
