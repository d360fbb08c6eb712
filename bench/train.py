"""Hydra entry point: ``python -m bench.train [overrides]`` (``-m`` for a sweep).

One job = one batch size and one dataset/model/optimizer choice, training K replicas.
A bad configuration stops with one ``error:`` line before anything is compiled (exit 2); in a
multirun the failing job writes a ``failed`` record instead, so the rest of the sweep goes on.
A diverged run is a result, not an error: its record says ``diverged`` and the exit code is 0.
A job whose output directory already holds finished records is skipped (re-submitting a sweep
runs only what is missing); an interrupted one resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench import record as rec
from bench.config import ConfigError, from_hydra
from bench.status import is_finished

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _write_failed(output_dir: Path, cfg: DictConfig, message: str) -> None:
    record = rec.empty_record()
    record.update(status="failed", error=message,
                  config=OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    record["run_id"] = "failed-" + rec.config_hash(record["config"])
    rec.write_record(output_dir / rec.record_filename(0), record)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(cfg.get("output_dir") or hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if is_finished(output_dir):
        print(f"skipped: {output_dir} already holds finished records", file=sys.stderr)
        return
    try:
        config = from_hydra(cfg)
        from bench.loop import run  # imports JAX; after the cheap checks

        records = run(config, output_dir)
    except ConfigError as err:
        if multirun:
            _write_failed(output_dir, cfg, str(err))
            print(f"error: {err} (job recorded as failed in {output_dir})", file=sys.stderr)
            return
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if any(r["status"] == "running" for r in records):
        print(f"interrupted: checkpoint and records in {output_dir}; rerun the same command "
              f"(with output_dir={output_dir}) to resume", file=sys.stderr)


if __name__ == "__main__":
    main()
