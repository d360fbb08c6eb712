"""Shared by the one-time converters: SHA-256, git provenance of a source clone, and where the
converted files go (``shared/published_data/<name>/``: kept beside the checkout, never committed;
the committed ``analysis/data/<name>/SOURCE.yaml`` records what they must hash to)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT_ROOT = ROOT / "shared" / "published_data"
SOURCE_ROOT = ROOT / "analysis" / "data"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_show(clone: Path, path: str) -> bytes:
    """A file of the clone's HEAD (a bare mirror or a work tree)."""
    return subprocess.run(["git", "-C", str(clone), "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def head_commit(clone: Path) -> str:
    return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def write_outputs(name: str, repo: str, clone: Path, sources: dict[str, bytes], files: dict[str, str],
                  license_text: str, notes: str, license_name: str = "MIT") -> Path:
    """Write the converted CSVs and LICENSE under shared/, and SOURCE.yaml (repo, commit, paths,
    SHA-256 of every source file and CSV) under analysis/data/<name>/."""
    out = OUT_ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        (out / fname).write_text(text)
    (out / "LICENSE").write_text(license_text)
    prov = {"repo": f"github.com/{repo}", "commit": head_commit(clone), "license": f"{license_name} (LICENSE copied beside the CSVs; its first line: {license_text.splitlines()[0]!r})",
            "sources": {p: {"sha256": sha256(b), "bytes": len(b)} for p, b in sources.items()},
            "files": {f: {"sha256": sha256(t.encode()), "bytes": len(t.encode())} for f, t in files.items()},
            "converter": f"scripts/convert_{name.rstrip('0123456789')}.py", "notes": notes}
    src_dir = SOURCE_ROOT / name
    src_dir.mkdir(parents=True, exist_ok=True)
    (src_dir / "SOURCE.yaml").write_text(yaml.safe_dump(prov, sort_keys=False, width=100))
    return out
