"""Benchmark: what W&B costs a default run (offline W&B against ``logger=none``).

    python -m bench.perf.wandb_overhead [--replicas 1] [overrides ...]

Three ``python -m bench.train`` processes of the default experiment, each with its own output
directory and one shared, fresh persistent compilation cache: an untimed warm-up
(``logger=none``, fills the cache), then one timed run with ``logger=none`` and one with the
default logger (W&B offline). With the cache warm, neither timed side compiles much; the
compile seconds each record measured are printed apart. Printed: the CPU time of each process
tree (user + system of the process and of the children it waited for, W&B's service among
them) and its wall time, and the ratios W&B / none; the W&B run directories it wrote.
About 1 minute on 2 idle CPU cores.

``--replicas K`` trains K LRs in one job (one W&B run per replica) to see the per-run cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(args: list[str], out: Path, cache: Path) -> dict[str, Any]:
    """One bench.train process: its CPU time (waited-for children included) and wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WANDB_MODE", None)  # the logger's own mode (offline) decides
    cpu, start = _cpu_of_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.train", *args, "progress=false",
                           f"compile_cache_dir={cache}", f"output_dir={out}"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"bench.train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads((out / "record_r0.json").read_text())
    return {"cpu": cpu, "wall": wall, "compile": record["timings"]["compile_seconds"],
            "wandb_runs": len(list(out.glob("wandb/offline-run-*")))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=1, help="LRs trained in one job")
    parser.add_argument("overrides", nargs="*", help="bench.train overrides for both sides")
    opts = parser.parse_args(argv)
    overrides = list(opts.overrides)
    if opts.replicas > 1:
        lrs = ",".join(str(round(0.01 * 1.5 ** i, 6)) for i in range(opts.replicas))
        overrides.append(f"replicas.lr=[{lrs}]")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train([*overrides, "logger=none"], work / "warmup", work / "cache")
        none = train([*overrides, "logger=none"], work / "none", work / "cache")
        wandb = train(overrides, work / "wandb", work / "cache")
    print(f"default run{' ' + ' '.join(overrides) if overrides else ''}; compile cache warm")
    print(f"{'':<24}{'logger=none':>14}{'logger=wandb':>14}{'ratio':>8}")
    for key, label in (("cpu", "CPU seconds (tree)"), ("wall", "wall seconds")):
        print(f"{label:<24}{none[key]:>14.2f}{wandb[key]:>14.2f}{wandb[key] / none[key]:>8.3f}")
    print(f"{'compile seconds (apart)':<24}{none['compile']:>14.2f}{wandb['compile']:>14.2f}")
    print(f"W&B offline runs written: {wandb['wandb_runs']}")
    print(f"W&B CPU overhead: {100 * (wandb['cpu'] / none['cpu'] - 1):.1f}% of the run without it")


if __name__ == "__main__":
    main()
