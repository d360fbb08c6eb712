"""K > 1 replicas on CPU train with 1-D convolutions as im2col + matmul
(bench.models.matmul_conv, chosen by bench.core.execution.ExecutionPolicy.convs_as_matmul)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from bench.core.execution import ExecutionPolicy
from bench.core.job import Job
from bench.core.loop import run
from bench.models.matmul_conv import matmul_conv, with_matmul_convs
from conftest import small_config


def test_only_convs_of_the_asked_rank_are_switched():
    conv1 = nnx.Conv(3, 4, (5,), rngs=nnx.Rngs(0))
    conv2 = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    assert with_matmul_convs(nnx.Sequential(conv1, conv2), spatial_rank=1) == 1
    assert conv1.conv_general_dilated is matmul_conv
    assert conv2.conv_general_dilated is not matmul_conv


def test_the_policy_switches_convs_for_replicas_on_cpu_only():
    cpu, gpu = ExecutionPolicy.for_backend("cpu"), ExecutionPolicy.for_backend("gpu")
    assert cpu.convs_as_matmul(2) and not cpu.convs_as_matmul(1) and not gpu.convs_as_matmul(8)
    assert cpu.scan_unroll() is True and cpu.scan_unroll(attention=True) == 1 and gpu.scan_unroll() == 1
    assert cpu.loop_over_replicas and not cpu.rolled_curvature_loops
    assert not gpu.loop_over_replicas and gpu.rolled_curvature_loops


CNN = {"name": "cnn", "channels": [8, 8], "conv_stride": 2, "hidden": [16]}
DATA = {"name": "mnist1d", "num_train": 512}


def test_cnn_replicas_train_with_matmul_convs_on_cpu_and_match_solo_runs(tmp_path):
    assert jax.default_backend() == "cpu"
    grouped_cfg = small_config(model=CNN, dataset=DATA, replicas={"lr": [0.02, 0.1]})
    job = Job(grouped_cfg)
    assert job.policy.convs_as_matmul(2)
    assert job.train_fns is not job.fns  # training uses matmul convs; evaluation the plain conv
    grouped = run(grouped_cfg, tmp_path / "g")
    alone = run(small_config(model=CNN, dataset=DATA, optimizer={"lr": 0.1}), tmp_path / "a")[0]
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    curve = lambda r: np.array([[row[k] for k in keys] for row in r["history"]])  # noqa: E731
    np.testing.assert_allclose(curve(grouped[1]), curve(alone), rtol=1e-4, atol=1e-5)
