"""The layering holds: ``bench`` never imports ``analysis`` (at module level or inside a function),
and no code outside ``analysis/findings`` compares with a finding's name (no dispatch on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analysis.findings import names
from conftest import REPO


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    """Every module an import statement anywhere in ``tree`` names (relative imports resolved
    only as far as their first component)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return found


@pytest.mark.parametrize("path", _modules("bench"), ids=lambda p: str(p.relative_to(REPO)))
def test_bench_never_imports_analysis(path):
    bad = sorted(m for m in _imported(ast.parse(path.read_text())) if m == "analysis" or m.startswith("analysis."))
    assert bad == []


def _compared_strings(tree: ast.AST):
    """(line, string) of every string constant inside a comparison (``x == "a"``, ``x in ("a", "b")``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub.lineno, sub.value


def test_no_code_dispatches_on_a_finding_name_outside_its_module():
    """A comparison with a finding's name outside analysis/findings/ would be a dispatch that a
    new finding has to edit (what differs per finding is its module's)."""
    found = set(names())
    hits = [f"{path.relative_to(REPO)}:{line}: {value!r}"
            for path in _modules("analysis") + _modules("bench")
            if "findings" not in path.relative_to(REPO).parts
            for line, value in _compared_strings(ast.parse(path.read_text())) if value in found]
    assert hits == []


def test_the_registry_finds_every_module():
    modules = {p.stem for p in (REPO / "analysis" / "findings").glob("*.py") if p.stem not in ("__init__", "base")}
    assert set(names()) == modules
