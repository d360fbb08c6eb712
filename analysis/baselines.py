"""Published baselines: load and validate ``analysis/baselines/published.yaml``.

Every entry must name a known source (paper with authors, year, title, venue or arXiv id)
and where in the paper it comes from; ``result`` and ``goal`` entries carry a number with
units and confidence. Confidence ``recalled`` marks what could not be confirmed in the paper or
the authors' code (a secondary summary, a transcription from memory): such an entry must say
where it comes from in a ``note``. Anything missing raises :class:`BaselineError` naming the entry.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DEFAULT_PATH = Path(__file__).resolve().parent / "baselines" / "published.yaml"
SCHEMA = "batch-bench/published-baselines/v1"
KINDS = ("result", "claim", "recipe", "definition", "goal")
CONFIDENCES = ("high", "medium", "unconfirmed", "recalled")  # recalled: older files only
SOURCE_FIELDS = ("authors", "year", "title", "venue")
# Fields each kind needs, beyond the common ones (id, source, kind, where, setting, confidence).
KIND_FIELDS = {
    "result": ("metric", "value", "std", "units"),
    "goal": ("metric", "value", "units"),
    "claim": ("claim",),
    "recipe": ("recipe",),
    "definition": ("definition",),
}


class BaselineError(ValueError):
    """published.yaml is malformed: an entry lacks a source or a required field."""


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def validate(doc: dict[str, Any], origin: str = "published.yaml") -> dict[str, Any]:
    """Check the whole document; return it unchanged or raise BaselineError."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BaselineError(f"{origin}: schema must be {SCHEMA!r}")
    sources = doc.get("sources") or {}
    for key, src in sources.items():
        missing = [f for f in SOURCE_FIELDS if not (src or {}).get(f)]
        if missing:
            raise BaselineError(f"{origin}: source {key!r} is missing {missing}")
    entries = doc.get("entries")
    if not entries:
        raise BaselineError(f"{origin}: no entries")
    seen: set[str] = set()
    for i, e in enumerate(entries):
        name = e.get("id") or f"entry #{i}"
        if not e.get("id"):
            raise BaselineError(f"{origin}: {name} has no id")
        if name in seen:
            raise BaselineError(f"{origin}: duplicate id {name!r}")
        seen.add(name)
        if not e.get("source"):
            raise BaselineError(f"{origin}: {name} has no source")
        if e["source"] not in sources:
            raise BaselineError(f"{origin}: {name} cites unknown source {e['source']!r}")
        if e.get("kind") not in KINDS:
            raise BaselineError(f"{origin}: {name} kind {e.get('kind')!r} not in {KINDS}")
        if not e.get("where"):
            raise BaselineError(f"{origin}: {name} does not say where in the paper (table/figure/section)")
        if "setting" not in e or not isinstance(e["setting"], dict):
            raise BaselineError(f"{origin}: {name} has no setting")
        if e.get("confidence") not in CONFIDENCES:
            raise BaselineError(f"{origin}: {name} confidence {e.get('confidence')!r} not in {CONFIDENCES}")
        if e["confidence"] in ("recalled", "unconfirmed") and not e.get("note"):
            raise BaselineError(f"{origin}: {name} is '{e['confidence']}' but has no note saying where it comes from")
        missing = [f for f in KIND_FIELDS[e["kind"]] if f not in e]
        if missing:
            raise BaselineError(f"{origin}: {name} ({e['kind']}) is missing {missing}")
        if e["kind"] in ("result", "goal"):
            if not _is_number(e["value"]):
                raise BaselineError(f"{origin}: {name} value {e['value']!r} is not a number")
            if e.get("std") is not None and not _is_number(e["std"]):
                raise BaselineError(f"{origin}: {name} std {e['std']!r} is not a number or null")
    return doc


def load_baselines(path: Path | str | None = None) -> dict[str, Any]:
    """The validated published-baselines document (``sources``, ``notes``, ``entries``)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BaselineError(f"cannot read published baselines {path}: {exc}") from exc
    return validate(doc, origin=str(path))


def citation(source: dict[str, Any]) -> str:
    """'Keskar et al. 2017, "Title", ICLR 2017, arXiv:1609.04836'."""
    authors = source["authors"]
    surname = authors[0].split()[-1]
    who = surname if len(authors) == 1 else (
        f"{surname} & {authors[1].split()[-1]}" if len(authors) == 2 else f"{surname} et al.")
    arxiv = f", arXiv:{source['arxiv']}" if source.get("arxiv") else ""
    return f'{who} {source["year"]}, "{source["title"]}", {source["venue"]}{arxiv}'


def baselines_table(path: Path | str | None = None) -> pd.DataFrame:
    """One row per entry: id, source, citation, kind, where, metric, value, std, units,
    confidence, text (claim/recipe/definition) and the setting flattened as ``setting_*``."""
    doc = load_baselines(path)
    rows = []
    for e in doc["entries"]:
        row = {
            "id": e["id"], "source": e["source"], "citation": citation(doc["sources"][e["source"]]),
            "kind": e["kind"], "where": e["where"], "metric": e.get("metric"),
            "value": e.get("value"), "std": e.get("std"), "units": e.get("units"),
            "confidence": e["confidence"], "note": e.get("note"),
            "text": e.get("claim") or e.get("recipe") or e.get("definition"),
        }
        row.update({f"setting_{k}": v for k, v in e["setting"].items()})
        rows.append(row)
    return pd.DataFrame(rows)
