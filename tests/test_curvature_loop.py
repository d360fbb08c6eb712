"""Curvature measured during training lands in the records, and matches a dense Hessian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bench.data import load_dataset
from bench.core.loop import run
from conftest import small_config

METRICS = {"hessian": True, "every": 20, "subset_size": 0, "chunk_size": 96, "lanczos_iters": 40,
           "top_k": 2, "hutchinson_probes": 16, "slq_probes": 2, "density_grid": 64,
           "sharpness_iters": 3, "sharpness_subspace_dim": 10, "noise_small_batch": 16,
           "noise_num_small": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("curv")
    cfg = small_config(dataset={"synthetic_train": 192, "synthetic_test": 64, "input_dim": 6},
                       model={"name": "mlp", "hidden": [8]}, batch_size=32, metrics=METRICS,
                       save_params=True, eval={"every_steps": 40, "batch_size": 64})
    (record,) = run(cfg, out)
    return cfg, record, out


def test_measured_at_the_configured_steps(trained):
    _, record, _ = trained
    measured = [row["step"] for row in record["history"] if "hessian_top_eigenvalue" in row]
    assert measured == [0, 20, 40]
    assert [row["step"] for row in record["history"]] == [0, 20, 40]  # eval joins measurements
    final = record["history"][-1]
    assert record["curvature"]["hessian_top_eigenvalue"] == final["hessian_top_eigenvalue"]
    assert final["two_over_lr"] == pytest.approx(2 / 0.05)
    for key in ("hessian_trace", "hessian_density", "sharpness_full_eps1e-03",
                "sharpness_subspace_eps5e-04", "noise_scale_simple_ema"):
        assert key in record["curvature"]
    assert record["timings"]["metrics_seconds"] > 0


def test_top_eigenvalues_match_dense_hessian_of_final_params(trained):
    cfg, record, out = trained
    from bench.core.job import Job

    job = Job(cfg)
    saved = np.load(out / "params_r0.npz")
    abstract = jax.device_get({"params": jax.tree.map(lambda a: a[0], job.init_state().params)})
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    params = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(saved[jax.tree_util.keystr(p)]) for p, _ in leaves])["params"]
    data = load_dataset(cfg.dataset)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    flat, unravel = ravel_pytree(params)
    empty = jax.tree.map(lambda a: a[0], job.init_state().stats)

    def loss(theta):
        logits, _ = job.fns.apply(unravel(theta), empty, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    eig = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    measured = record["curvature"]
    assert measured["hessian_top_eigenvalue"] == pytest.approx(eig[-1], rel=1e-3)
    np.testing.assert_allclose(measured["hessian_eigenvalues"], eig[::-1][:2], rtol=1e-3)
    trace = measured["hessian_trace"]
    assert abs(trace - eig.sum()) <= 4 * measured["hessian_trace_stderr"] + 1e-6


def test_fresh_loss_closures_share_one_program_with_and_without_batchnorm():
    """The probe builds a new eval loss per measurement; its compiled programs must be reused,
    including for models whose BatchNorm statistics are an empty State."""
    from flax import nnx

    from bench.metrics.hessian import lift_closure
    from bench.core.step import ModelFns

    fns = ModelFns(graphdef=None)
    for make_stats in (lambda: nnx.State({}), lambda: {"mean": jnp.zeros(3)}):
        a, b = lift_closure(fns.eval_loss_fn(make_stats())), lift_closure(fns.eval_loss_fn(make_stats()))
        assert a.func is b.func  # same static function: the jit cache hits


def test_matmul_curvature_of_a_cnn_measures_the_configured_loss():
    """With convolutions as matmuls (CPU curvature), the probe's loss is still the run's loss:
    with loss=mse its eval loss equals the lax-conv model's square loss on the same params."""
    from bench.core.job import Job

    cfg = small_config(dataset={"name": "mnist1d"}, model={"name": "cnn"}, loss="mse", batch_size=32,
                       metrics={**METRICS, "chunk_size": 32})
    job = Job(cfg)
    job.probe.convs = "matmul"
    state = job.init_state()
    params, stats = job.probe.replica(state, 0)
    fns = job.probe.curvature_fns(params, stats)
    assert fns is not job.fns and fns.loss == "mse"
    batch = jax.tree.map(lambda a: a[:32], job.probe.data)
    np.testing.assert_allclose(job.probe.loss_fn(params, stats)(params, batch),
                               job.fns.eval_loss_fn(stats)(params, batch), rtol=1e-5)
