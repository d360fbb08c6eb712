"""Hydra entry point: ``python -m bench.train [overrides]`` (``-m`` for a sweep).

One job = one batch size and one dataset/model/optimizer choice, training K replicas.
Before Hydra runs, the command line is composed and checked (:func:`bench.hydra_conf.preflight`):
a bad configuration stops with one ``error:`` line before anything is compiled (exit 2). In a
multirun a job whose values are invalid writes a ``failed`` record instead, so the rest of the
sweep goes on. A diverged run is a result, not an error: its record says ``diverged``, exit 0.

Output directories are reused only by the same configuration (bench.core.reuse): finished records
of it are skipped (re-running a sweep runs only what is missing), an interrupted run resumes
from its latest checkpoint, and records of another configuration stop the job with an
``error:`` line (in a multirun: a failed record under ``<job dir>/rejected/``), overwriting
nothing.

Faults: one run per ``output_dir`` at a time (bench.core.lock: a second command stops with an
``error:`` line). A crash (any other exception) marks the job's records ``failed`` with the
error, prints one ``error:`` line and appends the traceback to ``<output_dir>/errors.log``
(exit 1; in a multirun the sweep goes on); the same command resumes from the latest
checkpoint. SIGINT is a stop like SIGTERM (bench.core.preemption).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench import record as rec
from bench.config import Config, ConfigError, as_dict, from_hydra, result_config
from bench.hydra_conf import CONF_DIR, preflight, register_schema
from bench.core.lock import OutputLock, OutputLocked
from bench.core.preemption import arm, at_stop
from bench.core.reuse import StaleResults, check_reuse
from bench.core.saved_records import load_records, record_files

ERROR_LOG = "errors.log"

register_schema()


def _write_failed(directory: Path, cfg: DictConfig, message: str) -> None:
    record = rec.empty_record()
    record.update(status="failed", error=message,
                  config=OmegaConf.to_container(cfg, resolve=False))  # type: ignore[typeddict-item]
    record["run_id"] = "failed-" + rec.config_hash(record["config"])
    rec.write_record(directory / rec.record_filename(0), record)


def _record_crash(directory: Path, config: Config, err: BaseException) -> str:
    """Mark this configuration's unfinished records failed with ``err`` (a fresh failed
    record when there is none) and append the traceback to the error log; returns the line
    to print. On a full disk the records stay as they were (each write is atomic)."""
    message = _one_line(err)
    log = directory / ERROR_LOG
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n"
                    + "".join(traceback.format_exception(err)))
        want = rec.config_hash(result_config(config))
        records, _ = load_records(record_files(directory, recursive=False))
        mine = [r for r in records if r.get("config_hash") == want]
        for record in mine:
            if record["status"] == "running":
                record.update(status="failed", error=message)
                rec.write_record(directory / rec.record_filename(int(record["replica"]["index"])),
                                 record)
        if not mine and not (directory / rec.record_filename(0)).exists():
            record = rec.empty_record()
            record.update(status="failed", error=message, config=as_dict(config),  # type: ignore[typeddict-item]
                          config_hash=want, run_id=f"{want}-r0")
            rec.write_record(directory / rec.record_filename(0), record)
    except Exception as write_err:  # noqa: BLE001 -- e.g. a full disk: say so, keep the old files
        return f"{message} (and the failure could not be recorded: {write_err})"
    return f"{message} (records marked failed; traceback in {log})"


def _no_background_tracebacks(record: logging.LogRecord) -> bool:
    """orbax logs the exception of each failed background write thread with its traceback
    (four on a full disk) before raising it in the main thread, where it is reported in one
    line and its traceback goes to the error log: drop those repeats from the console."""
    return record.exc_info is None


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= 400 else text[:400] + " ..."


def _primary_launch(config: Config) -> bool:
    """Whether this process is process 0 of its job (the one that holds the output lock)."""
    if config.distributed.coordinator is not None:
        return not config.distributed.process_id
    return int(os.environ.get("SLURM_PROCID", "0") or 0) == 0


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    arm()  # a preemption signal from here on only sets a flag (loading, compile, restore)
    logging.getLogger("absl").addFilter(_no_background_tracebacks)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(cfg.get("output_dir") or hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    config = None
    lock = OutputLock(output_dir)
    try:
        config = from_hydra(cfg)
        if _primary_launch(config):
            lock.acquire()
            at_stop(lock.release)
        if check_reuse(output_dir, config) == "finished":
            print(f"skipped: {output_dir} already holds finished records of this configuration",
                  file=sys.stderr)
            return
        from bench.core.loop import run  # imports JAX and the model code; after the cheap checks

        records = run(config, output_dir)
    except ConfigError as err:
        if multirun and not isinstance(err, OutputLocked):  # the sweep goes on; old records stay
            where = output_dir / "rejected" if isinstance(err, StaleResults) else output_dir
            _write_failed(where, cfg, str(err))
            print(f"error: {err} (job recorded as failed in {where})", file=sys.stderr)
            return
        print(f"error: {err}", file=sys.stderr)
        if multirun:   # another process owns that directory: write nothing there
            return
        sys.exit(2)
    except Exception as err:  # a crash: the records say so; the same command resumes
        line = (_record_crash(output_dir, config, err) if lock.held and config is not None
                else _one_line(err))
        print(f"error: {line}", file=sys.stderr)
        if multirun:
            return
        sys.exit(1)
    finally:
        lock.release()
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
