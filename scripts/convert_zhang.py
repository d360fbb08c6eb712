"""One-time conversion of Zhang et al. 2024's steps-to-target per batch size (Chinchilla
setting, C4, context 512) from the authors' notebook to a CSV.

    python scripts/convert_zhang.py <clone of github.com/hlzhang109/critical-batch-size>

The numbers are the ``results`` dict literal of ``plots/chinchilla.ipynb`` (the cell that fits
the CBS law; read with ``ast.literal_eval``, nothing is executed) and the target losses of its
``goal_losses`` literal. Output: shared/published_data/zhang2024/steps_to_target.csv and the
MIT LICENSE beside it; provenance in analysis/data/zhang2024/SOURCE.yaml.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_show, write_outputs  # noqa: E402

REPO = "hlzhang109/critical-batch-size"
NOTEBOOK = "plots/chinchilla.ipynb"
BATCH_SIZES = [2 ** i for i in range(6, 15)]  # the notebook's batch_sizes = [2**i for i in range(6, 15)]
PARAMS = {"85M": 85e6, "151M-ablation": 151e6, "302M": 302e6, "604M": 604e6, "1.2B": 1.2e9}


def _literal(source: str, name: str) -> dict:
    m = re.search(rf"^{name}\s*=\s*(\{{.*?\}})\s*$", source, flags=re.M)
    if not m:
        raise SystemExit(f"error: no {name} = {{...}} literal in the notebook cell")
    return ast.literal_eval(m.group(1))


def convert(clone: Path) -> Path:
    raw = git_show(clone, NOTEBOOK)
    cells = ["".join(c["source"]) for c in json.loads(raw)["cells"]]
    fit_cell = next(s for s in cells if "fsolve" in s and re.search(r"^results\s*=\s*\{", s, re.M))
    goal_cell = next(s for s in cells if re.search(r"^goal_losses\s*=", s, re.M))
    results, goals = _literal(fit_cell, "results"), _literal(goal_cell, "goal_losses")
    rows = [{"model": m, "num_params": PARAMS[m], "target_loss": goals[m], "batch_size": b, "steps_to_target": s}
            for m, steps in results.items() for b, s in zip(BATCH_SIZES, steps)]
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    lic = git_show(clone, "LICENSE").decode()
    return write_outputs("zhang2024", REPO, clone, {NOTEBOOK: raw}, {"steps_to_target.csv": buf.getvalue()}, lic,
                         "Chinchilla setting (each model trained to its Chinchilla-optimal target loss); steps "
                         "= the fewest steps over the sweep to reach target_loss (validation cross entropy, C4, "
                         "context 512); batch size in sequences; the fit cell's literal (it differs from the "
                         "wandb-read output of an earlier cell in a few entries, e.g. 85M B=2048: 2528 vs 2500).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/convert_zhang.py <clone of hlzhang109/critical-batch-size>")
    print(convert(Path(sys.argv[1])))
