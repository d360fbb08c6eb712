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
from bench.record import config_hash
from bench.core.saved_records import load_records, record_files, replicas_done

Reuse = Literal["new", "finished", "resume"]


class StaleResults(ConfigError):
    """The output directory holds results of a different configuration."""


class UnreadableRecords(StaleResults):
    """The output directory holds a record file that cannot be read (truncated, ...): nothing
    in it is reused or overwritten until the user moves that file away."""


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
    # only records directly in output_dir: a sweep root is not a job
    records, unreadable = load_records(record_files(output_dir, recursive=False))
    if unreadable:
        named = "; ".join(f"{p.name}: {why}" for p, why in unreadable.items())
        raise UnreadableRecords(
            f"{output_dir} holds unreadable records ({named}); nothing was changed: move "
            f"{'them' if len(unreadable) > 1 else 'it'} away and rerun (a checkpoint there "
            "resumes the run)")
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
    if cfg.init_from is not None:  # a branch: only of the same parent checkpoint, byte for byte
        from bench.core.branch import check_parent_unchanged

        check_parent_unchanged(output_dir, records, cfg)
    return "finished" if replicas_done(records) else "resume"
