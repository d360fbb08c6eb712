"""Golden runs: Hydra overrides of runs whose records must not change under refactoring.

Captured before the issue-10 refactor (``python -m tests.golden.capture``), compared bit for bit
by ``tests/test_golden.py``. Each is composed from ``conf/`` exactly as the command line does.
"""

from __future__ import annotations

QUIET = ("logger=none", "progress=false")

GOLDEN: dict[str, tuple[str, ...]] = {
    # the README's default run (MNIST-1D, Greydanus CNN, momentum SGD, B = 128, 40 epochs)
    "default": QUIET,
    # two vmapped replicas (im2col training path on CPU) with BatchNorm and dropout
    "replicas_bn_dropout": (*QUIET, "model.batch_norm=true", "model.dropout=0.1",
                            "replicas.seeds=[0,1]", "budget=200steps", "eval.every_steps=50"),
    # Smith et al. batch-size increase instead of LR decay (B changes mid-run)
    "batch_schedule_increase": (*QUIET, "model=mlp", "schedule=step", "schedule.decay_epochs=[2,4]",
                                "batch_schedule=increase", "budget=6epochs", "eval.every_steps=20"),
    # gradient accumulation (4 microbatches of 64) with a warmup + cosine schedule
    "accumulation": (*QUIET, "batch_size=256", "accumulate=4", "budget=100steps",
                     "schedule=cosine", "schedule.warmup_steps=10", "eval.every_steps=25"),
    # curvature measured during training (Lanczos, power, Hutchinson, SLQ, sharpness, noise scale)
    "curvature_mlp": (*QUIET, "model=mlp", "budget=60steps", "eval.every_steps=30",
                      "metrics.hessian=true", "metrics.every=30", "metrics.subset_size=500",
                      "metrics.chunk_size=250", "metrics.lanczos_iters=10", "metrics.power_iters=5",
                      "metrics.hutchinson_probes=4", "metrics.sharpness_iters=2",
                      "metrics.sharpness_subspace_dim=10", "metrics.noise_num_small=4"),
}

# Record parts that are results (compared exactly); timings and environment are not.
RESULT_KEYS = ("status", "replica", "history", "final", "convergence", "curvature",
               "diverged_at_step", "error")
# Per-row keys that are wall-clock measurements, not results.
TIMING_ROW_KEYS = ("train_seconds", "curvature_seconds")
