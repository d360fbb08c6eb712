"""Read W&B offline runs back with W&B's own reader of the transaction log (``wandb leet inspect
--json``, one JSON object per record): the run (id, name, group, job type, tags, config), the
history rows, the defined metrics and the final summary, as W&B would upload them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def records(log: Path) -> list[dict[str, Any]]:
    """The records of one ``run-<id>.wandb`` transaction log, in order."""
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], capture_output=True,
                         text=True, timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def read_run(run_dir: Path) -> dict[str, Any]:
    """One offline run directory (``offline-run-<time>-<id>``) as W&B sees it."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run: dict[str, Any] = {"history": [], "metrics": {}, "summary": {}, "config": {}, "exit": None}
    for rec in records(log):
        kind = rec.get("type")
        if kind == "run":
            meta = rec["run"]
            run.update(id=meta["run_id"], name=meta.get("display_name"), group=meta.get("run_group"),
                       job_type=meta.get("job_type"), tags=meta.get("tags", []),
                       project=meta.get("project"), resumed=meta.get("resume", False))
            run["config"].update((meta.get("config") or {}).get("update") or {})
        elif kind == "config":
            run["config"].update(rec["config"].get("update") or {})
        elif kind == "history":
            run["history"].append({**rec["history"]["item"], "_step": rec["history"]["step"]["num"]})
        elif kind == "metric":
            metric = rec["metric"]
            run["metrics"][metric.get("name") or metric.get("glob_name")] = metric
        elif kind == "summary":
            run["summary"].update(rec["summary"].get("update") or {})
        elif kind == "exit":
            run["exit"] = rec["exit"].get("exit_code", 0)
    run["config"].pop("_wandb", None)
    return run


def read_runs(output_dir: Path) -> list[dict[str, Any]]:
    """Every offline run under ``output_dir`` (recursively), in directory order."""
    return [read_run(d) for d in sorted(Path(output_dir).rglob("offline-run-*")) if d.is_dir()]
