"""Checks of the output paths: the output directory, every file a run will write there, and the
compile cache, each writable (or creatable) before anything is computed, so a run never fails
at its end over a path."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from bench.preflight import Check, Context
from bench.schema import ConfigError

# What runs and sweeps write in an output directory (records, params, checkpoints, W&B, Hydra's
# and SLURM's files, a failed sweep job's records, logs, locks and temporary files).
RUN_FILES = re.compile(r"(record_r\d+\.json|params_r\d+\.npz|checkpoints|wandb|rejected|logs"
                       r"|\..*|.*\.(log|tmp|out|err|yaml|txt|json))$")


def _writable_dir(key: str, path: Path) -> None:
    """``path`` is (or can be created as) a directory this process can write in."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} exists and is not a directory; choose a directory path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path}: {existing} is not a directory; choose another path")
    try:  # os.access does not see read-only mounts (nor refuse root): try it
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"{key}={path}: {existing} is not writable ({err.strerror}); choose a "
                          f"writable path") from None


def output_dir_writable(ctx: Context) -> None:
    if ctx.cfg.output_dir is not None:
        _writable_dir("output_dir", Path(ctx.cfg.output_dir).expanduser())


def output_dir_holds_only_runs(ctx: Context) -> None:
    """A directory of other files (a home or source directory) is not a run's directory."""
    if ctx.cfg.output_dir is None:
        return
    path = Path(ctx.cfg.output_dir).expanduser()
    if not path.is_dir():
        return
    foreign = sorted(p.name for p in path.iterdir() if not RUN_FILES.match(p.name))
    if foreign:
        raise ConfigError(f"output_dir={path} holds files no run writes ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); use an empty or new directory")


def run_files_writable(ctx: Context) -> None:
    """Records (and params) are files, checkpoints/ and wandb/ directories."""
    if ctx.cfg.output_dir is None:
        return
    path = Path(ctx.cfg.output_dir).expanduser()
    k = len(ctx.cfg.replicas.lr or (None,)) * len(ctx.cfg.replicas.seeds or (None,))
    files = [f"record_r{i}.json" for i in range(k)]
    files += [f"params_r{i}.npz" for i in range(k)] if ctx.cfg.save_params else []
    for name in files:
        if (path / name).is_dir():
            raise ConfigError(f"output_dir={path}: {name} is a directory, where the run writes its "
                              f"record file; remove it or choose another output_dir")
    dirs = ["checkpoints"] + (["wandb"] if getattr(ctx.cfg.logger, "mode", "disabled") != "disabled"
                              and ctx.cfg.logger.name != "none" else [])
    for name in dirs:
        if (path / name).exists() and not (path / name).is_dir():
            raise ConfigError(f"output_dir={path}: {name} is a file, where the run keeps its "
                              f"{name} directory; remove it or choose another output_dir")
        if (path / name).is_dir() and not os.access(path / name, os.W_OK | os.X_OK):
            raise ConfigError(f"output_dir={path}: {name}/ is not writable; choose another output_dir")


def compile_cache_writable(ctx: Context) -> None:
    from bench.core.compile_cache import resolve

    directory = resolve(ctx.cfg.compile_cache_dir)
    if directory is not None:
        _writable_dir("compile_cache_dir", Path(directory))


CHECKS: list[Check] = [
    output_dir_writable, output_dir_holds_only_runs, run_files_writable, compile_cache_writable,
]
