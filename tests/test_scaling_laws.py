"""The ``scaling_laws`` finding: verdicts on constructed grids where B_opt follows a known power
law in (N, D) (the claim holds / fails), the loss at each data size read from evaluations, the
finding end to end on constructed run records, and the offline and paper plans."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.findings import get
from analysis.findings.scaling_laws import scaling_verdicts
from analysis.laws.landscape import cell_optima
from analysis.laws.power import fit_laws
from analysis.laws.records import GridError, grid_table_at
from analysis.load import load_history, load_records
from laws_factory import EB, write_grid_records

MODELS = (1e4, 4e4, 1.6e5)
DATA = (1e4, 4e4, 1.6e5)


def constructed(b_opt, *, seeds=(0, 1), sigma=0.001, rng_seed=0) -> pd.DataFrame:
    """Runs on a 5 x 5 grid of (B, LR) per (N, D) with a convex bowl around (b_opt(N, D), 0.01)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for n in MODELS:
        for d in DATA:
            b0 = 2.0 ** np.round(np.log2(b_opt(n, d)))
            for s in seeds:
                for b in b0 * 2.0 ** np.arange(-2, 3):
                    for lr in 0.01 * 2.0 ** np.arange(-2, 3):
                        x, y = np.log(b / b_opt(n, d)), np.log(lr / 0.01)
                        rows.append({"num_params": n, "tokens": d, "batch_size": b, "lr": lr, "seed": s,
                                     "loss": 2 + 0.02 * x * x + 0.03 * y * y + rng.normal(0, sigma)})
    return pd.DataFrame(rows)


def verdicts_of(table):
    cells, fits = cell_optima(table, n_boot=60)
    laws = fit_laws(cells, {k: v.draws for k, v in fits.items()}, n_boot=60)
    return laws["b_opt(N,D)"], scaling_verdicts(laws["b_opt(N,D)"], n_tolerance=0.2, seeds=(0, 1))


def test_claim_holds_when_b_opt_follows_data_only():
    law, (data, model) = verdicts_of(constructed(lambda n, d: 0.1 * d ** 0.5))
    lo, hi = law.intervals["tokens"]
    assert lo <= 0.5 <= hi and law.intervals["num_params"][0] <= 0 <= law.intervals["num_params"][1]
    assert (data.verdict, model.verdict) == ("reproduced", "reproduced")
    assert data.numbers["exponent_D"] == pytest.approx(0.5, abs=0.05)


def test_claim_fails_when_b_opt_follows_model_size():
    law, (data, model) = verdicts_of(constructed(lambda n, d: 0.05 * n ** 0.5))
    lo, hi = law.intervals["num_params"]
    assert lo <= 0.5 <= hi
    assert data.verdict == "not reproduced" and model.verdict == "not reproduced"


def test_b_opt_falling_with_data_is_reversed():
    _, (data, _) = verdicts_of(constructed(lambda n, d: 3e3 * d ** -0.5))
    assert data.verdict == "reversed"


def test_loss_at_each_data_size_is_read_from_the_evaluations():
    table = pd.DataFrame({"num_params": [1.0, 1.0], "tokens": [400.0, 200.0], "batch_size": [2.0, 4.0],
                          "lr": [0.1, 0.1], "seed": [0, 0], "loss": [9.0, 9.0], "run_id": ["a", "b"]})
    history = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 2, "tokens": [100, 200, 300, 400, 100, 200],
                            "test_loss": [4.0, 3.0, 2.5, 2.0, 3.5, 2.8]})
    at = grid_table_at(table, history, [100, 200, 400])
    got = {(r.run_id, r.tokens): r.loss for r in at.itertuples()}
    assert got == {("a", 100.0): 4.0, ("a", 200.0): 3.0, ("a", 400.0): 2.0,
                   ("b", 100.0): 3.5, ("b", 200.0): 2.8}
    with pytest.raises(GridError, match="no evaluation at D = 150"):
        grid_table_at(table, history, [150])


def test_finding_end_to_end_on_constructed_records(tmp_path):
    write_grid_records(tmp_path)
    runs, history = load_records(tmp_path), load_history(tmp_path)
    finding = get("scaling_laws")
    data, model = finding.verdicts(runs, history, n_boot=60)
    assert data.verdict == "reproduced"
    assert data.numbers["exponent_D_lo"] <= EB <= data.numbers["exponent_D_hi"]
    assert model.verdict in ("reproduced", "inconclusive")
    rows = finding.comparison([data, model], pd.DataFrame())
    assert any(r.source.startswith("stepfun2025/law/b_opt") for r in rows)


def test_offline_and_paper_plans(capsys):
    from analysis.reproduce.__main__ import main
    from analysis.reproduce.plan import offline_plan

    plan = offline_plan("scaling_laws")
    assert len(plan.jobs) == 15 and {j.batch_size for j in plan.jobs} == {2, 4, 8, 16, 32}
    assert main(["scaling_laws", "--scale", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"+experiment=scaling_laws_paper_n{i}" in out for i in (1, 2, 3))
