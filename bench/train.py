"""Hydra entry point: ``python -m bench.train [overrides]`` (``-m`` for a sweep).

One job = one batch size and one dataset/model/optimizer choice, training K replicas.
Before Hydra runs, the command line is composed and checked (:func:`bench.hydra_conf.preflight`):
a bad configuration stops with one ``error:`` line before anything is compiled (exit 2). In a
multirun a job whose values are invalid writes a ``failed`` record instead, so the rest of the
sweep goes on. A diverged run is a result, not an error: its record says ``diverged``, exit 0.

Output directories are reused only by the same configuration (bench.reuse): finished records
of it are skipped (re-running a sweep runs only what is missing), an interrupted run resumes
from its latest checkpoint, and records of another configuration stop the job with an
``error:`` line (in a multirun: a failed record under ``<job dir>/rejected/``), overwriting
nothing.
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
from bench.hydra_conf import CONF_DIR, preflight, register_schema
from bench.preemption import arm
from bench.reuse import StaleResults, check_reuse

register_schema()


def _write_failed(directory: Path, cfg: DictConfig, message: str) -> None:
    record = rec.empty_record()
    record.update(status="failed", error=message,
                  config=OmegaConf.to_container(cfg, resolve=False))  # type: ignore[typeddict-item]
    record["run_id"] = "failed-" + rec.config_hash(record["config"])
    rec.write_record(directory / rec.record_filename(0), record)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    arm()  # a preemption signal from here on only sets a flag (loading, compile, restore)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(cfg.get("output_dir") or hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        config = from_hydra(cfg)
        if check_reuse(output_dir, config) == "finished":
            print(f"skipped: {output_dir} already holds finished records of this configuration",
                  file=sys.stderr)
            return
        from bench.loop import run  # imports JAX and the model code; after the cheap checks

        records = run(config, output_dir)
    except ConfigError as err:
        if multirun:  # the sweep goes on; the old records (if any) stay untouched
            where = output_dir / "rejected" if isinstance(err, StaleResults) else output_dir
            _write_failed(where, cfg, str(err))
            print(f"error: {err} (job recorded as failed in {where})", file=sys.stderr)
            return
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if any(r["status"] == "running" for r in records):
        print(f"interrupted: checkpoint and records in {output_dir}; rerun the same command "
              f"(with output_dir={output_dir}) to resume", file=sys.stderr)


def cli() -> None:
    """Check the command line the way Hydra will compose it, then let Hydra run it."""
    args = sys.argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if not any(a.startswith("-") for a in overrides):  # Hydra's own flags: left to Hydra
        if (err := preflight(overrides, multirun=multirun)) is not None:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
