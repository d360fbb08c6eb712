"""Every finding's verdicts, comparison rows, summary CSV and report, computed from constructed
records, are identical to the capture in tests/golden/findings (taken before the findings were
restructured; tests/finding_golden.py writes it)."""

from __future__ import annotations

import pytest

from finding_golden import GOLDEN, OPTIONS, text


@pytest.mark.parametrize("finding", sorted(OPTIONS))
def test_finding_computes_the_golden_capture_identically(finding):
    assert text(finding) == (GOLDEN / f"{finding}.json").read_text()
