"""Compose the command-line config from overrides and train it in this process."""

from __future__ import annotations

from pathlib import Path


def run_overrides(overrides, output_dir: Path) -> list[dict]:
    from hydra import compose, initialize_config_dir

    from bench.config import from_hydra
    from bench.loop import run

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return run(from_hydra(cfg), output_dir)
