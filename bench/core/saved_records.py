"""The run records saved in a job directory, as the training core and the tools read them:
which files are records, which of them can be read, and whether every replica is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.record import STATUSES, read_record

#: record statuses of a replica that is done: a rerun skips it
DONE = frozenset({"finished", "diverged"})
RECORD_GLOB = "record_r*.json"


def field_of(record: dict[str, Any], key: str) -> dict[str, Any]:
    """``record[key]`` when it is a dict, else ``{}`` (a damaged record must not crash us)."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def load_records(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[Path, str]]:
    """``(records, unreadable)``: the run records among ``paths``, and for every other path
    why it is not one (truncated or invalid JSON, another schema, no or an unknown status)."""
    records, unreadable = [], {}
    for p in paths:
        try:
            record = read_record(p)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if record.get("status") not in STATUSES:
                raise ValueError(f"status {record.get('status')!r} is not one of "
                                 f"{', '.join(STATUSES)}")
            records.append(record)
        except (OSError, ValueError, AttributeError) as err:
            unreadable[p] = str(err) or type(err).__name__
    return records, unreadable


def record_files(directory: Path, *, recursive: bool = True) -> list[Path]:
    """Every file named like a run record under ``directory`` (readable or not)."""
    found = directory.rglob(RECORD_GLOB) if recursive else directory.glob(RECORD_GLOB)
    return sorted(found)


def expected_count(records: list[dict[str, Any]]) -> int | None:
    counts = [field_of(r, "replica").get("count") for r in records]
    counts = [c for c in counts if isinstance(c, int) and c > 0]
    return max(counts) if counts else None


def replicas_done(records: list[dict[str, Any]], unreadable: dict[Path, str] | None = None) -> bool:
    """True if ``records`` cover every replica of the job (``replica.count``), each one
    done (``DONE``), and no record file was unreadable."""
    if not records or unreadable:
        return False
    expected = expected_count(records)
    if expected is not None and len(records) < expected:
        return False
    return all(r["status"] in DONE for r in records)


def is_finished(output_dir: Path | str) -> bool:
    """True if ``output_dir`` holds records for all replicas and each says finished or
    diverged: the job is done and a re-submitted sweep skips it. Failed or interrupted
    ("running") jobs, and directories without records, are not finished. Only records
    directly in ``output_dir`` count (a sweep root is not a job)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    return replicas_done(*load_records(record_files(output_dir, recursive=False)))
