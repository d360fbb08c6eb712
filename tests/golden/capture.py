"""Capture the golden records: ``python -m tests.golden.capture`` (run once, before a refactor).

Writes ``tests/golden/records/<name>.json``: the result parts of every replica's record plus
the machine fingerprint they were produced on (bit-for-bit equality holds only on the same
CPU instruction set and jax version).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.golden.spec import GOLDEN, RESULT_KEYS, TIMING_ROW_KEYS

HERE = Path(__file__).resolve().parent


def fingerprint() -> dict[str, str]:
    import hashlib
    import platform

    import jax

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"jax": jax.__version__, "machine": platform.machine(),
            "cpu_flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def strip(record: dict) -> dict:
    """The result parts of a record, with wall-clock fields removed."""
    out = {k: record[k] for k in RESULT_KEYS}

    def clean(row):
        return {k: v for k, v in row.items() if k not in TIMING_ROW_KEYS} if isinstance(row, dict) else row

    out["history"] = [clean(r) for r in out["history"]]
    out["final"] = clean(out["final"])
    out["curvature"] = clean(out["curvature"])
    out["convergence"] = {k: v for k, v in (out["convergence"] or {}).items() if not k.startswith("seconds")}
    return json.loads(json.dumps(out))  # JSON round trip: what a record file holds


def run_golden(name: str) -> list[dict]:
    from tests.golden.runner import run_overrides

    with tempfile.TemporaryDirectory() as tmp:
        return [strip(r) for r in run_overrides(GOLDEN[name], Path(tmp))]


def main(names: list[str]) -> None:
    """Capture the named golden runs (all with none). Existing records are kept unless --force:
    they are the reference a refactor is compared with, recaptured only deliberately."""
    force = "--force" in names
    names = [n for n in names if n != "--force"]
    out = HERE / "records"
    out.mkdir(exist_ok=True)
    for name in names or list(GOLDEN):
        if (out / f"{name}.json").exists() and not force:
            print(f"{name}: kept (exists; --force recaptures)")
            continue
        records = run_golden(name)
        payload = {"overrides": list(GOLDEN[name]), "fingerprint": fingerprint(), "records": records}
        (out / f"{name}.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {len(records)} record(s), {len(records[0]['history'])} eval rows")


if __name__ == "__main__":
    main(sys.argv[1:])
