"""Shared fixtures: small, fast configurations (no network, W&B off unless a test opts in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def small_config(**overrides: Any):
    """A config dict for a quick run: synthetic data, small MLP, logger off, no progress bar."""
    from bench.config import from_dict

    base: dict[str, Any] = {
        "dataset": {"name": "synthetic", "synthetic_train": 512, "synthetic_test": 256, "input_dim": 16},
        "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "momentum", "lr": 0.05},
        "batch_size": 64, "budget": "40steps",
        "eval": {"every_steps": 10, "batch_size": 256},
        "logger": {"name": "none"}, "progress": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and (
                value.get("name", base[key].get("name")) == base[key].get("name")):
            base[key] = {**base[key], **value}  # same option: change some of its keys
        else:
            base[key] = value
    return from_dict(base)


def run_python(code: str, *, devices: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with ``devices`` simulated CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@pytest.fixture
def tiny():
    return small_config
