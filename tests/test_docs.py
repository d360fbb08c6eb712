"""The documentation's promises hold: every relative link and image in the READMEs exists, and
every finding that `python -m analysis.reproduce` knows has committed results that the results
index links to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.findings import names
from conftest import REPO

DOCS = [REPO / "README.md", REPO / "docs" / "results" / "README.md", REPO / "analysis" / "README.md",
        REPO / "SLURM" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_exists(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # URLs and in-page anchors
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == []


@pytest.mark.parametrize("finding", names())
def test_every_finding_has_committed_results_linked_from_the_index(finding):
    out = REPO / "docs" / "results" / finding
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Reproduction: {finding} (offline, scaled down)")
    assert "**Verdict:" in report and (out / "summary.csv").is_file()
    for figure in re.findall(r"!\[[^]]*\]\((figures/[^)]+)\)", report):
        assert (out / figure).is_file(), figure
    assert f"({finding}/report.md)" in (REPO / "docs" / "results" / "README.md").read_text()
