"""Compose the command-line config from overrides and train it in this process."""

from __future__ import annotations

from pathlib import Path


def run_overrides(overrides, output_dir: Path) -> list[dict]:
    from bench.hydra_conf import compose_config
    from bench.core.loop import run

    return run(compose_config(overrides), output_dir)
