"""The registry of findings: every module of this package that defines ``FINDING`` (an
``analysis.findings.base.Finding``) is one, registered under ``FINDING.name``.

Adding a finding is one module here (see ``base`` for the contract and README "Extending");
lists of findings anywhere else are read from :func:`names`, never written out.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from analysis.findings.base import Arm, Comparison, Finding, Preset


@cache
def registry() -> dict[str, Finding]:
    found: dict[str, Finding] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        finding = getattr(module, "FINDING", None)
        if isinstance(finding, Finding):
            if finding.name in found:
                raise ValueError(f"two findings named {finding.name!r}")
            found[finding.name] = finding
    return dict(sorted(found.items()))  # by name: no list of findings to keep in order


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Finding:
    """The finding registered as ``name`` (ValueError naming the known ones otherwise)."""
    found = registry()
    if name not in found:
        raise ValueError(f"unknown finding {name!r}; choose from {', '.join(found)}")
    return found[name]


__all__ = ["Arm", "Comparison", "Finding", "Preset", "get", "names", "registry"]
