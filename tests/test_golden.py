"""Golden records: refactoring the core must not change any result (issue 10).

The records in ``tests/golden/records`` were captured before the refactor with
``python -m tests.golden.capture``; each run here is composed from the same Hydra overrides and
must reproduce every eval row, final metric, convergence and curvature value bit for bit
(timings aside). Bit-for-bit equality of float programs holds on the same CPU instruction set
and jax version; elsewhere the comparison is skipped with the reason (recapture there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.capture import fingerprint, run_golden
from tests.golden.spec import GOLDEN

RECORDS = Path(__file__).resolve().parent / "golden" / "records"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_record_reproduced_bit_for_bit(name, tmp_path):
    saved = json.loads((RECORDS / f"{name}.json").read_text())
    assert saved["overrides"] == list(GOLDEN[name]), "golden spec changed: recapture deliberately"
    if saved["fingerprint"] != fingerprint():
        pytest.skip(f"golden records captured on {saved['fingerprint']}, this machine is "
                    f"{fingerprint()}: float bits differ across instruction sets / jax versions")
    assert run_golden(name) == saved["records"]
