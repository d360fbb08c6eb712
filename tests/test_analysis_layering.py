"""The layering holds: ``bench`` never imports ``analysis`` (at module level or inside a function),
and no code outside ``analysis/findings`` names a finding (no dispatch on finding names)."""

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


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_finding_is_named_outside_its_module():
    """A string equal to a finding's name in code outside analysis/findings/ would be a dispatch
    (or a list) that a new finding has to edit."""
    found = set(names())
    hits = []
    for path in _modules("analysis") + _modules("bench"):
        if "findings" in path.relative_to(REPO).parts:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in found and id(node) not in docs:
                hits.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert hits == []


def test_the_registry_finds_every_module():
    modules = {p.stem for p in (REPO / "analysis" / "findings").glob("*.py") if p.stem not in ("__init__", "base")}
    assert set(names()) == modules
