"""Constructed language-model run records (no training) for the analysis tests.

``lm_record`` builds one record (``bench.record`` schema via ``tests/record_factory.make_record``)
whose eval rows carry tokens and a test loss given by a function of the tokens seen;
``write_lm`` writes records under a directory. The curves are chosen by each test so the
answer is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from record_factory import make_record, write_records

CONTEXT = 32


def lm_rows(steps: Iterable[int], *, batch_size: int | Callable[[int], int], loss: Callable[[float, int], float],
            lr: float = 1e-3, context: int = CONTEXT) -> list[dict[str, Any]]:
    """Eval rows at ``steps``; ``loss(tokens, step)`` gives the test loss; ``batch_size`` may be
    a function of the step (a batch-size schedule: tokens are summed step by step)."""
    size = batch_size if callable(batch_size) else (lambda s, b=batch_size: b)
    rows, tokens, done = [], 0, 0
    for step in sorted(set(steps)):
        while done < step:
            tokens += size(done) * context
            done += 1
        test = loss(float(tokens), step)
        rows.append({"step": step, "epoch": tokens / (4000 * context), "examples": tokens // context,
                     "tokens": tokens, "train_seconds": 0.01 * step, "lr": lr,
                     "batch_size": size(max(step - 1, 0)), "train_loss": test - 0.05,
                     "train_accuracy": 0.5, "test_loss": test, "test_accuracy": 0.5, "gap_loss": 0.05,
                     "gap_accuracy": 0.0})
    return rows


def lm_record(*, name: str, batch_size: int, base_lr: float, seed: int, rows: Sequence[dict[str, Any]],
              peak_lr: float | None = None, status: str = "finished", num_params: int = 34000,
              index: int = 0) -> dict[str, Any]:
    rec = make_record(batch_size=batch_size, history=rows, seed=seed, base_lr=base_lr, peak_lr=peak_lr,
                      scaling="sqrt", status=status, dataset="pydoc", model="transformer",
                      optimizer="adamw", replica_index=index)
    rec["config"]["name"] = name
    rec["run_id"] = f"{name}-B{batch_size}-lr{base_lr:g}-r{index}"
    rec["experiment"].update(num_params=num_params, tokens_per_example=CONTEXT,
                             total_steps=int(rows[-1]["step"]) if rows else 0)
    return rec


def write_lm(root: Path | str, records: Iterable[dict[str, Any]]) -> list[Path]:
    return write_records(root, records)
