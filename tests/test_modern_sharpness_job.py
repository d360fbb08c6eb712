"""The preconditioned sharpness and batch sharpness a job records: the replica's own Adam state
and minibatches of the run's batch size, checked against dense computations (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bench.core.job import Job
from bench.core.loop import run
from bench.metrics.batch_sharpness import minibatch_indices
from bench.metrics.batch_sharpness import KEY_BATCH_SHARPNESS
from bench.metrics.preconditioned import adam_state
from conftest import small_config

METRICS = {"hessian": True, "every": 10, "subset_size": 0, "chunk_size": 96, "lanczos_iters": 60,
           "top_k": 1, "power_iters": 0, "hutchinson_probes": 0, "density": False, "sharpness": False,
           "noise_scale": False, "preconditioned": True, "batch_sharpness_batches": 5}


def config(**extra):
    return small_config(dataset={"synthetic_train": 192, "synthetic_test": 64, "input_dim": 6},
                        model={"name": "mlp", "hidden": [5]}, batch_size=32,
                        optimizer={"name": "adam", "lr": 0.01, "b2": 0.99, "eps": 1e-4},
                        replicas={"lr": [0.003, 0.01]}, metrics={**METRICS, **extra},
                        eval={"every_steps": 10, "batch_size": 64}, budget="20steps")


@pytest.fixture(scope="module")
def measured():
    job = Job(config())
    state, _ = job.train(job.init_state(), 0, 20)
    return job, state, job.measure(state, 1, 0.01, batch_size=32)


def _replica(job, state, k):
    params, stats = jax.tree.map(lambda a: a[k], state.params), jax.tree.map(lambda a: a[k], state.stats)
    flat, unravel = ravel_pytree(params)
    loss = job.fns.eval_loss_fn(stats)
    data = {"x": jnp.asarray(job.data.x_train), "y": jnp.asarray(job.data.y_train)}
    return params, flat, unravel, loss, data


def test_preconditioned_sharpness_uses_the_replicas_own_adam_state(measured):
    job, state, out = measured
    params, flat, unravel, loss, data = _replica(job, state, 1)
    h = np.asarray(jax.hessian(lambda f: loss(unravel(f), data))(flat), np.float64)
    adam = adam_state(jax.tree.map(lambda a: a[1], state.opt_state))
    t = int(adam.count)
    nu = np.asarray(ravel_pytree(adam.nu)[0], np.float64)
    p = (1 - 0.9 ** t) * (np.sqrt(nu / (1 - 0.99 ** t)) + 1e-4)
    top = np.linalg.eigvalsh(h / np.sqrt(p)[:, None] / np.sqrt(p)[None, :])[-1]
    assert t == 20
    assert out["preconditioned_top_eigenvalue"] == pytest.approx(top, rel=2e-3)
    assert out["hessian_top_eigenvalue"] == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=2e-3)


def test_batch_sharpness_averages_minibatches_of_the_run_batch_size(measured):
    job, state, out = measured
    params, flat, unravel, loss, data = _replica(job, state, 1)
    key = jax.random.fold_in(job.probe.keys[1], KEY_BATCH_SHARPNESS)
    ratios = []
    for row in np.asarray(minibatch_indices(key, n=192, batch_size=32, num=5)):
        batch = jax.tree.map(lambda a: a[row], data)
        h = np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat), np.float64)
        g = np.asarray(jax.grad(lambda f: loss(unravel(f), batch))(flat), np.float64)
        ratios.append(g @ h @ g / (g @ g))
    assert (out["batch_sharpness_batches"], out["batch_sharpness_batch_size"]) == (5, 32)
    assert out["batch_sharpness"] == pytest.approx(np.mean(ratios), rel=2e-3)
    assert out["batch_sharpness_stderr"] == pytest.approx(np.std(ratios, ddof=1) / np.sqrt(5), rel=2e-2)


def test_records_carry_both_beside_the_thresholds_and_defaults_leave_them_out(tmp_path):
    records = run(config(), tmp_path / "on")
    row = records[1]["history"][-1]
    assert row["step"] == 20 and row["preconditioned_stability_threshold"] == pytest.approx(38 / 0.01)
    for key in ("preconditioned_top_eigenvalue", "batch_sharpness", "batch_sharpness_stderr"):
        assert np.isfinite(row[key]) and key in records[1]["curvature"]
    assert "preconditioned_top_eigenvalue" not in records[1]["history"][0]  # step 0: no Adam step yet
    plain = run(config(preconditioned=False, batch_sharpness_batches=0), tmp_path / "off")
    assert not {"preconditioned_top_eigenvalue", "batch_sharpness"} & set(plain[1]["history"][-1])


def test_dense_cadence_measures_often_up_to_dense_until_then_every():
    from types import SimpleNamespace

    from bench.core.loop import Cadence

    plan = SimpleNamespace(total_steps=130, next_change=lambda step: None)
    cadence = Cadence(plan, eval_every=100, measure_every=50, measures=True, steps_per_call=25,
                      dense_every=5, dense_until=20)
    step, visited = 0, [0]
    while step < plan.total_steps:
        step += cadence.steps_in_next_call(step)
        visited.append(step)
    assert [s for s in visited if cadence.measures_at(s)] == [0, 5, 10, 15, 20, 50, 100, 130]
    assert all(cadence.evaluates_at(s) for s in (5, 10, 15, 20))  # a measurement joins an eval row
