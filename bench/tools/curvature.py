"""Curvature of a saved checkpoint, without retraining: ``python -m bench.tools.curvature <run dir> [step]``.

    python -m bench.tools.curvature outputs/run1                 # the latest checkpoint
    python -m bench.tools.curvature outputs/run1 400 metrics.lanczos_iters=60 metrics.sharpness=false

Reads the run's config from its record (``<run dir>/record_r0.json``), rebuilds the job (data,
model, the curvature probe: same subsets and keys as during training), restores the orbax
checkpoint ``<run dir>/checkpoints/<step>`` and measures every replica with the run's
``metrics.*`` settings plus the given ``metrics.*`` overrides (``metrics.hessian`` is implied).
Prints the estimated cost first, a line per metric as it finishes, and writes
``<run dir>/curvature/step<step>.json`` atomically (one entry per replica). The noise-scale
smoothing starts afresh (one measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.config import PRECONDITIONED_OPTIMIZERS, ConfigError, from_dict
from bench.record import atomic_write_text, find_records, read_record
from bench.schema import build


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tools.curvature", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="output directory of a run (holds record_r*.json and checkpoints/)")
    p.add_argument("step", nargs="?", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("overrides", nargs="*", help="metrics.<key>=<value> (Hydra-style)")
    return p


def _metrics_overrides(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("metrics."):
            raise ConfigError(f"{item!r}: only metrics.<key>=<value> overrides apply to a saved run")
        out[key.removeprefix("metrics.")] = yaml.safe_load(value)
    return out


def _config(run_dir: Path, overrides: Sequence[str]):
    records = [p for p in find_records(run_dir) if p.parent == run_dir]
    if not records:
        raise ConfigError(f"{run_dir}: no run record (record_r*.json) here")
    cfg = from_dict(read_record(records[0])["config"])
    metrics = {**dataclasses.asdict(cfg.metrics), **_metrics_overrides(overrides), "hessian": True}
    return dataclasses.replace(cfg, metrics=build(type(cfg.metrics), metrics, "metrics."), progress=False)


def _restore(run_dir: Path, step: int | None, job: Any) -> tuple[Any, int]:
    from bench.core.checkpoint import Checkpointer

    ckpt = Checkpointer(run_dir / "checkpoints", every_steps=None)
    steps = ckpt.all_steps()
    if not steps:
        raise ConfigError(f"{run_dir / 'checkpoints'}: no checkpoint (train with checkpoint.every_steps=N)")
    if step is not None and step not in steps:
        raise ConfigError(f"no checkpoint at step {step}; saved steps: {', '.join(map(str, steps))}")
    step = steps[-1] if step is None else step
    state, _ = ckpt.restore(step, job.init_state())
    ckpt.close()
    return state, step


def measure_checkpoint(run_dir: Path | str, step: int | None = None, overrides: Sequence[str] = (),
                       report: Any = print) -> dict[str, Any]:
    """Curvature of every replica at a saved step; returns (and writes) ``{"step", "metrics",
    "estimate", "replicas": [measured dict per replica]}``."""
    from bench.core.job import Job

    run_dir = Path(run_dir)
    cfg = _config(run_dir, overrides)
    job = Job(cfg)
    state, step = _restore(run_dir, step, job)
    batch = job.plan.batch_size(max(step - 1, 0))
    estimate = job.probe.estimate(state, 0, batch_size=batch)
    report(estimate.line())
    lrs = [r.peak_lr * float(job.lr_multiplier(max(step - 1, 0))) for r in job.replicas]
    out = []
    for k, replica in enumerate(job.replicas):
        adam = replica.hyperparams if cfg.optimizer.name in PRECONDITIONED_OPTIMIZERS else None
        stats = job.probe.measure(state, k, lrs[k], adam=adam, batch_size=batch, step=step,
                                  on_metric=lambda name, sec, k=k: report(f"  replica {k}: {name} {sec:.1f} s"))
        stats.update(cfg.optimizer.stability_thresholds(lrs[k]))
        out.append(stats)
    result = {"step": step, "metrics": dataclasses.asdict(cfg.metrics), "estimate_seconds": estimate.seconds,
              "replicas": out}
    path = run_dir / "curvature" / f"step{step}.json"
    atomic_write_text(path, json.dumps(result, indent=1, default=float) + "\n")
    report(f"wrote {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: not a directory")
        result = measure_checkpoint(run_dir, args.step, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for k, stats in enumerate(result["replicas"]):
        shown = {key: stats[key] for key in ("hessian_top_eigenvalue", "hessian_trace", "noise_scale_simple",
                                             "curvature_seconds") if key in stats}
        print(f"replica {k} at step {result['step']}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
