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
    modules = {p.stem for p in (REPO / "analysis" / "findings").glob("*.py") if p.stem not in ("__init__", "base") and not p.stem.startswith("_")}
    assert set(names()) == modules


def _type_checking_imports(tree: ast.AST) -> set[str]:
    """Modules imported only under ``if TYPE_CHECKING:`` (type hints, never executed)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            found |= _imported(ast.Module(body=node.body, type_ignores=[]))
    return found


# who may import whom inside bench: the rules take narrow inputs (no job config, no core), the
# core never reaches for a tool, and the tools sit on top of both
FORBIDDEN = {"bench/rules": ("bench.core", "bench.tools", "bench.config"),
             "bench/core": ("bench.tools",), "bench/data": ("bench.core", "bench.tools"),
             "bench/models": ("bench.core", "bench.tools"), "bench/metrics": ("bench.tools",)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_bench_sub_packages_import_only_downwards(package):
    bad = []
    for path in _modules(package):
        tree = ast.parse(path.read_text())
        runtime = _imported(tree) - _type_checking_imports(tree)
        bad += [f"{path.relative_to(REPO)}: {m}" for m in sorted(runtime)
                if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[package])]
    assert bad == []


def test_no_merge_conflict_markers_in_the_tree():
    """A merge left half-resolved shows in the README or a module as git's markers."""
    markers = ("<" * 7 + " ", ">" * 7 + " ")
    hits = [f"{p.relative_to(REPO)}:{i}" for ext in ("py", "md", "yaml", "toml", "sh")
            for p in REPO.glob(f"**/*.{ext}") if "shared" not in p.relative_to(REPO).parts[:1]
            and ".git" not in p.parts and "site-packages" not in p.parts
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if line.startswith(markers)]
    assert hits == []
