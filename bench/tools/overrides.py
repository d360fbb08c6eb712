"""A job directory's configuration as its records state it, against its Hydra overrides
(``bench.tools.status`` flags a directory reused with other overrides)."""

from __future__ import annotations

import json
import re
from typing import Any


def records_config_hash(records: list[dict[str, Any]]) -> str | None:
    """The config hash the records state (``config_hash``, else their ``run_id`` prefix);
    ``"a,b"`` when they disagree, None when none states one."""
    hashes = []
    for r in records:
        h = r.get("config_hash") or re.sub(r"-r\d+$", "", str(r.get("run_id") or "")) or None
        if h and h not in hashes:
            hashes.append(h)
    return ",".join(hashes) or None


_NO_VALUE = object()


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _NO_VALUE
        node = node[part]
    return node


def config_mismatches(overrides: list[str], config: dict[str, Any]) -> list[str]:
    """Overrides that the stored ``config`` contradicts, as ``"key=value (record: x)"``.

    Checked: ``key=value`` for a key present in the config, and a group choice
    (``dataset=digits``) against the group's ``name``. Not checked: hydra keys, additions
    (``+sweep=...``), deletions, interpolations, keys the config does not have.
    """
    if not config:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for line in overrides:
        try:
            (ovr,) = OverridesParser.create().parse_overrides([line])
            value = ovr.value()
        except Exception:
            continue
        key = ovr.key_or_group
        if (ovr.is_add() or ovr.is_delete() or ovr.package or key.startswith("hydra")
                or key == "output_dir" or (isinstance(value, str) and "${" in value)):
            continue
        stored = _lookup(config, key.replace("/", "."))
        if isinstance(stored, dict):                       # a config group choice
            stored = stored.get("name", _NO_VALUE)
        if stored is _NO_VALUE or stored == value:
            continue
        out.append(f"{line} (record: {json.dumps(stored)})")
    return out
