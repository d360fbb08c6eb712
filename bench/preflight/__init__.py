"""Pre-flight checks: every rule a job's configuration, data and output paths must satisfy,
checked before anything is compiled, each failure one :class:`~bench.schema.ConfigError` line
naming the key and the valid choice.

A check is a small function of a :class:`Context` with one job, listed in its module's
``CHECKS``: :mod:`~bench.preflight.keys` reads only the configuration (keys that do nothing,
numbers that cannot be meant); :mod:`~bench.preflight.data` also the data's metadata
(:meth:`bench.data.DatasetConfig.describe`: shapes, classes, split sizes, never the examples),
for models that cannot take the data and sizes the plan cannot meet; and
:mod:`~bench.preflight.paths` the file system (every output path writable).
``bench.config.validate`` calls :func:`run` once: the config checks always, the others before a
job runs (``run=True``: the command line's pre-flight, before Hydra writes anything, and
bench.core.job, before compiling).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bench.data.base import DataInfo
from bench.job_plan import job_plan

if TYPE_CHECKING:
    from bench.config import Config


@dataclass(frozen=True)
class Context:
    """What the checks read: the config, the device count, the data's metadata (None for
    config-only checks)."""

    cfg: "Config"
    num_devices: int = 1
    data: DataInfo | None = None

    @property
    def num_train(self) -> int | None:
        """Training examples the job uses (after dataset.num_train), None when unknown."""
        n, cut = self.data.num_train if self.data else None, self.cfg.dataset.num_train
        return n if cut is None else cut if n is None else min(n, cut)

    @functools.cached_property
    def plan(self) -> Any:
        """The job's BatchPlan (None when the training-set size is unknown before loading)."""
        if self.num_train is None:
            return None
        return job_plan(self.cfg, self.num_train, self.num_devices,
                         tokens_per_example=self.data.tokens_per_example)


Check = Callable[[Context], None]


def run(cfg: "Config", *, num_devices: int = 1, data: DataInfo | None = None) -> None:
    """Every config check, and with ``data`` every run check; the first failure raises."""
    from bench.preflight import data as data_checks, keys, paths

    ctx = Context(cfg, num_devices, data)
    run_checks = data_checks.CHECKS + paths.CHECKS if data is not None else []
    for check in keys.CHECKS + run_checks:
        check(ctx)


__all__ = ["Check", "Context", "run"]
