"""What every finding computes from its constructed records (tests/finding_records.py), in a
canonical JSON text: the analysis options, verdicts (claim, verdict, tolerance, seeds, numbers,
details, table), comparison rows, the summary CSV and the rendered report (timestamp removed).
The published numbers are a frozen copy (tests/golden/findings/published.yaml) so the capture
tests the code, not edits of analysis/baselines/published.yaml.

    PYTHONPATH=. python tests/finding_golden.py     # (re)write tests/golden/findings/<finding>.json

Rewriting is a deliberate change of results: say so in the commit.
"""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "findings"
BASELINES = GOLDEN / "published.yaml"
# The analysis options the offline presets give each finding (checked against the presets by a
# slow test): the golden capture does not compose presets.
OPTIONS: dict[str, dict[str, Any]] = {
    "keskar": {"sb": 32, "lb": 400},
    "goyal": {"tolerance": 0.01},
    "shallue": {"target_accuracy": 0.85},
    "edge_of_stability": {"tol": 0.2},
    "edge_of_stability_cohen": {"tol": 0.2},
    "adaptive_edge_of_stability": {"tol": 0.2},
    "marek": {"halflife": "marek_offline_halflife", "beta2": "marek_offline_beta2",
              "sgd": "marek_offline_sgd", "accum": "marek_offline_accum"},
    "zhang_cbs": {"data_sizes": [32768, 131072]},
    "shallue_lm": {"target_loss": 2.6},
    "batch_warmup": {"small": "warmup_offline_small", "large": "warmup_offline_large",
                     "ramps": ["warmup_offline_merrill", "warmup_offline_ramp"]},
}


def canon(x: Any) -> Any:
    """JSON-ready and exact: floats keep their repr (NaN/inf as JSON's NaN/Infinity)."""
    if isinstance(x, pd.DataFrame):
        return {"columns": [str(c) for c in x.columns], "rows": [canon(list(r)) for r in x.itertuples(index=False)]}
    if isinstance(x, dict):
        return {str(k): canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [canon(v) for v in x]
    if isinstance(x, np.generic):
        return canon(x.item())
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return None if x is None or x is pd.NA else float("nan")
    return x


def _verdict(v: Any) -> dict[str, Any]:
    return {"finding": v.finding, "claim": v.claim, "verdict": v.verdict, "tolerance": v.tolerance,
            "seeds": v.seeds, "numbers": v.numbers, "details": v.details, "table": v.table}


def computed(finding: str, root: Path) -> dict[str, Any]:
    """Everything the finding computes from the records under ``root``."""
    from analysis.baselines import baselines_table
    from analysis.findings import get
    from analysis.load import load_tables
    from analysis.report import comparison, render
    from analysis.reproduce.run import summary_table

    spec = get(finding)
    runs, history = load_tables(root)
    verdicts = spec.verdicts(runs, history, **OPTIONS[finding])
    bl = baselines_table(BASELINES)
    report = render(spec, verdicts, runs, bl, results="RESULTS", figures="")
    return {"options": OPTIONS[finding], "figures": list(spec.figures(runs, history, root, **OPTIONS[finding])),
            "verdicts": [_verdict(v) for v in verdicts],
            "comparison": comparison(spec, verdicts, bl).to_dict("records"),
            "summary_csv": summary_table(root).to_csv(index=False).splitlines(),
            "report": re.sub(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "Generated <time> UTC", report).splitlines()}


@cache
def records_dir(finding: str) -> Path:
    """A directory of the finding's constructed records, written once per process."""
    from finding_records import RECORDS

    root = Path(tempfile.mkdtemp(prefix=f"finding-{finding}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    RECORDS[finding](root)
    return root


def text(finding: str) -> str:
    """The canonical JSON text of ``computed`` on the constructed records."""
    return json.dumps(canon(computed(finding, records_dir(finding))), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for finding in OPTIONS:
        (GOLDEN / f"{finding}.json").write_text(text(finding))
        print(f"wrote {GOLDEN / f'{finding}.json'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
