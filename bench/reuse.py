"""Whether a job may reuse what its output directory already holds.

Re-running a command (or re-submitting a sweep) skips jobs whose records say finished and
resumes interrupted ones from their checkpoints, but only when those records were made by the
same configuration: the same hash of every key that can change results
(``bench.config.result_config``; logging, progress and output paths do not count), or a
stored config that, read with today's schema, differs in no such key (it predates keys that
were added later at their old behaviour). A changed
config never silently reuses old results: :func:`check_reuse` raises :class:`StaleResults`
naming the keys that differ, and nothing is overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from bench.config import Config, ConfigError, from_dict, result_config
from bench.record import config_hash, find_records, read_record

Reuse = Literal["new", "finished", "resume"]
DONE = ("finished", "diverged")


class StaleResults(ConfigError):
    """The output directory holds results of a different configuration."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def _result_keys_of(stored: dict[str, Any]) -> dict[str, Any]:
    """The result-relevant keys of a stored config (all of it if it predates this schema)."""
    try:
        return _flatten(result_config(from_dict(stored)))
    except ConfigError:
        return _flatten(stored)


def differing_keys(stored: dict[str, Any], cfg: Config) -> list[str]:
    """``key: old -> new`` for every result-relevant key where the two configs differ."""
    old, new = _result_keys_of(stored), _flatten(result_config(cfg))
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


def _stale_keys(record: dict[str, Any], cfg: Config) -> list[str]:
    stored = record.get("config")
    if not isinstance(stored, dict):
        return ["(no stored config)"]
    return differing_keys(stored, cfg)


def check_reuse(output_dir: Path | str, cfg: Config) -> Reuse:
    """``new`` (nothing to reuse), ``finished`` (skip: every replica is done) or ``resume``
    (records or checkpoints of an interrupted run of this config). Raises StaleResults when
    the directory holds records of another configuration."""
    output_dir = Path(output_dir)
    records = []
    for path in find_records(output_dir):
        if path.parent == output_dir:  # a sweep root is not a job
            try:
                records.append(read_record(path))
            except (OSError, ValueError):
                continue
    if not records:
        return "resume" if (output_dir / "checkpoints").is_dir() else "new"
    want = config_hash(result_config(cfg))
    for record in records:
        # A different hash with no differing key is the same configuration written before keys
        # were added to the schema (new keys default to the old behaviour, which the golden
        # records test), so its results stand; a stored config that cannot be read is stale.
        if record.get("config_hash") != want and (diff := _stale_keys(record, cfg)):
            raise StaleResults(
                f"{output_dir} holds records of a different configuration ({'; '.join(diff)});"
                f" use another output_dir, or delete that directory to start over")
    expected = max((r.get("replica", {}).get("count") or 0 for r in records), default=0)
    if len(records) >= expected and all(r.get("status") in DONE for r in records):
        return "finished"
    return "resume"
