"""The figures and tables of a results directory as one W&B report run of its sweep.

    python -m analysis.wandb_report <results dir> [--project P] [--entity E] [--group G]
                                    [--mode offline|online]

``<results dir>`` is a reproduction's ``--out`` (``figures/*.png``, ``summary.csv``,
``report.md``, ``reproduce.json``) or any directory of run records (a Hydra multirun's sweep
directory): without ``figures/`` the figures are drawn from the records first
(``analysis.figures``, into a temporary directory), without ``summary.csv`` the run table is
``analysis.load.load_records``. Logged to one W&B run (``job_type=report``): each figure as an
image (``figures/<name>``), the run table (``summary``), every verdict table of ``report.md``
(``verdicts``) and ``report.md`` itself as a file. Project, entity, mode and group are those
the training runs under the directory used (``<job dir>/wandb/batch_bench.json``, written by
bench.core.tracking), so the report lands in their group; the options override them. Offline by
default like the runs: ``wandb sync <results dir>/wandb/offline-run-*`` uploads it. The run id
is stable per directory: logging the report again resumes the same W&B run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.core.tracking import IDS_FILE

_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}")


def markdown_tables(text: str) -> list[pd.DataFrame]:
    """The pipe tables of a markdown text (bold markers stripped), in order."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append(line.strip())
            continue
        if len(block) >= 2 and _SEPARATOR.match(block[1]):
            cells = [[c.strip().replace("**", "") for c in row.strip("|").split("|")] for row in block]
            header, rows = cells[0], [r for r in cells[2:] if len(r) == len(cells[0])]
            tables.append(pd.DataFrame(rows, columns=header))
        block = []
    return tables


def verdict_tables(report_md: Path) -> pd.DataFrame | None:
    """Every table of ``report.md`` with a ``verdict`` column, stacked (None: none)."""
    if not report_md.is_file():
        return None
    found = [t for t in markdown_tables(report_md.read_text()) if "verdict" in t.columns]
    return pd.concat(found, ignore_index=True) if found else None


def training_settings(results: Path) -> dict[str, Any]:
    """The W&B project, entity, mode, group and finding of the training runs under ``results``
    (the most common group when they differ)."""
    saved = [json.loads(p.read_text()) for p in sorted(results.rglob(f"wandb/{IDS_FILE}"))]
    meta = results / "reproduce.json"
    finding = json.loads(meta.read_text()).get("finding") if meta.is_file() else None
    groups = Counter(s.get("group") for s in saved if s.get("group"))
    first = saved[0] if saved else {}
    tags = [t for s in saved for t in s.get("tags", []) if t.startswith("finding:")]
    finding = finding or (tags[0].split(":", 1)[1] if tags else None)
    return {"project": first.get("project") or "batch-bench", "entity": first.get("entity"),
            "mode": first.get("mode") or "offline",
            "group": groups.most_common(1)[0][0] if groups else finding or results.resolve().name,
            "finding": finding}


def _figures(results: Path, scratch: Path) -> list[Path]:
    """The PNG figures of ``results/figures``, or drawn from its records into ``scratch``."""
    pngs = sorted((results / "figures").glob("*.png"))
    if pngs:
        return pngs
    from analysis.figures import make_figures

    made = make_figures(results, scratch, formats=("png",))
    return sorted(p for paths in made.values() if isinstance(paths, list) for p in paths)


def _run_table(results: Path) -> pd.DataFrame | None:
    if (results / "summary.csv").is_file():
        return pd.read_csv(results / "summary.csv")
    from analysis.load import load_records

    table = load_records(results)
    return table if len(table) else None


def finding_of(group: str | None) -> str | None:
    """The registered finding named ``group`` (reproductions group their runs by finding)."""
    from analysis.findings import names

    return group if group in names() else None


def log_report(results: Path | str, *, project: str | None = None, entity: str | None = None,
               group: str | None = None, mode: str | None = None) -> Path:
    """Log the figures and tables of ``results`` to its W&B report run; returns the run's
    directory (offline: ``<results>/wandb/offline-run-...``)."""
    import wandb

    results = Path(results)
    found = training_settings(results)
    group = group or found["group"]
    finding = found["finding"] or finding_of(group)
    run_id = "report-" + hashlib.sha256(str(results.resolve()).encode()).hexdigest()[:12]
    run = wandb.init(
        project=project or found["project"], entity=entity or found["entity"],
        mode=mode or found["mode"], id=run_id, resume="allow", reinit="create_new",
        name=f"report {group}", group=group, job_type="report", dir=str(results),
        tags=[f"finding:{finding}"] if finding else [], config={"results": str(results)},
        settings=wandb.Settings(silent=True, console="off", x_save_requirements=False))
    with tempfile.TemporaryDirectory() as scratch:
        values: dict[str, Any] = {f"figures/{p.stem}": wandb.Image(str(p), caption=p.stem)
                                  for p in _figures(results, Path(scratch))}
        for key, table in (("summary", _run_table(results)),
                           ("verdicts", verdict_tables(results / "report.md"))):
            if table is not None:
                values[key] = wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
        run.log(values)
    if (results / "report.md").is_file():
        run.save(str(results / "report.md"), base_path=str(results), policy="now")
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir


def maybe_log_report(results: Path | str) -> Path | None:
    """The report run of ``results`` when its training runs logged to W&B (a ``logger=none``
    reproduction has none to join): what ``analysis.reproduce`` calls after its analysis."""
    if not any(Path(results).rglob(f"wandb/{IDS_FILE}")):
        return None
    return log_report(results)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a reproduction's --out or a directory of records")
    ap.add_argument("--project")
    ap.add_argument("--entity")
    ap.add_argument("--group", help="default: the group of the training runs")
    ap.add_argument("--mode", choices=("offline", "online"))
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        ap.exit(2, f"error: {args.results} is not a directory\n")
    run_dir = log_report(args.results, project=args.project, entity=args.entity,
                         group=args.group, mode=args.mode)
    print(f"W&B report run: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
