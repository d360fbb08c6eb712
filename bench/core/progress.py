"""Console output: a live progress bar (loss, accuracy) and the final summary table (rich)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


class Progress:
    """Progress bar on a terminal; plain eval lines otherwise (SLURM logs stay readable)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self.live = enabled and self.console.is_terminal
        self._bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False,
        ) if self.live else None
        self._task = (self._bar.add_task("train", total=total_steps, completed=start, info="")
                      if self._bar else None)
        self._test = ""

    def __enter__(self) -> "Progress":
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar:
            self._bar.stop()

    def advance(self, count: int, metrics: dict[str, np.ndarray]) -> None:
        if self._bar:
            loss, acc = float(np.nanmean(metrics["loss"][-1])), float(np.nanmean(metrics["accuracy"][-1]))
            self._bar.update(self._task, advance=count,
                             info=f"loss {loss:.4f} acc {acc:.3f}{self._test}")

    def eval(self, step: int, rows: dict[int, dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        row = rows[min(rows)]
        self._test = f" | test acc {row['test_accuracy']:.3f}"
        if not self.live:
            self.console.print(
                f"step {step:>7d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f"  test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}"
                + (f"  ({len(rows)} replicas, first shown)" if len(rows) > 1 else ""))

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def summary(self, records: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        table = Table(title="batch-bench run summary")
        table.add_column("metric")
        for r in records:
            table.add_column(f"replica {r['replica']['index']}", justify="right")
        lines = [
            ("status", lambda r, f, c: r["status"]),
            ("batch size", lambda r, f, c: str(r["experiment"]["batch_size"])),
            ("peak lr", lambda r, f, c: _fmt(r["replica"]["peak_lr"], "{:.4g}")),
            ("seed", lambda r, f, c: str(r["replica"]["seed"])),
            ("train loss / acc", lambda r, f, c: f"{_fmt(f.get('train_loss'))} / {_fmt(f.get('train_accuracy'))}"),
            ("test loss / acc", lambda r, f, c: f"{_fmt(f.get('test_loss'))} / {_fmt(f.get('test_accuracy'))}"),
            ("gap loss / acc", lambda r, f, c: f"{_fmt(f.get('gap_loss'))} / {_fmt(f.get('gap_accuracy'))}"),
            (f"to test acc {_fmt(records[0]['convergence'].get('target_test_accuracy'), '{}')}: steps",
             lambda r, f, c: _fmt(c.get("steps_to_target"), "{}")),
            ("  examples", lambda r, f, c: _fmt(c.get("examples_to_target"), "{}")),
            ("  train seconds", lambda r, f, c: _fmt(c.get("seconds_to_target"), "{:.2f}")),
        ]
        for label, cell in lines:
            table.add_row(label, *(cell(r, r["final"] or {}, r["convergence"]) for r in records))
        Console().print(table)
        Console().print(time_line(records[0]["timings"]))


def time_line(t: dict[str, Any]) -> str:
    """Where the process's wall time went: start-up (imports, composition, checks), then the
    job's clocks; "other" is the job's time no clock names (placing data, tracking, writing)."""
    parts = ("data", "compile", "train", "eval", "metrics")
    other = t["total_seconds"] - sum(t.get(f"{p}_seconds", 0.0) for p in parts)
    wall = t.get("startup_seconds", 0.0) + t["total_seconds"]
    share = lambda x: f"{100 * x / wall:.0f}%" if wall > 0 else "-"  # noqa: E731
    named = ", ".join(f"{p} {t.get(f'{p}_seconds', 0.0):.1f}s" for p in parts)
    return (f"time: start-up {t.get('startup_seconds', 0.0):.1f}s, {named}, other {other:.1f}s; "
            f"wall {wall:.1f}s (train {share(t['train_seconds'])}, eval {share(t['eval_seconds'])})")
