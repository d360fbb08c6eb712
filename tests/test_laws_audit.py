"""The audit of published laws on constructed grids: a law with the true exponents (and wrong
constants) predicts the optimum after its constant is refitted (gap ~ 0, exponents inside our
intervals); a law with wrong exponents is flagged and pays a loss gap computed on the landscape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.baselines import load_baselines
from analysis.laws.audit import audit, in_nd, law_constant, published_laws
from analysis.laws.landscape import cell_optima
from laws_factory import ED, EB, EN, KB, grid_table, true_b


@pytest.fixture(scope="module")
def grid():
    table = grid_table(sigma=0.0, seeds=(0,))
    cells, fits = cell_optima(table, n_boot=40)
    return table, cells, fits


def _law(i, target, coefficient, **exponents):
    return {"id": i, "source": i.split("/")[0], "target": target, "coefficient": coefficient,
            "exponents": exponents, "confidence": "high"}


def test_true_exponents_give_zero_gap_after_refitting_the_constant(grid):
    table, cells, fits = grid
    laws = [_law("right/b", "b_opt", 1000.0, tokens=EB), _law("right/lr", "lr_opt", 7.0, num_params=EN, tokens=ED)]
    out = audit(cells, fits, table, laws, n_boot=40)
    gaps = out["gaps"].set_index("source")
    assert gaps.loc["right", "max_gap"] < 1e-6 and gaps.loc["right", "cells_outside_grid"] == 0
    assert math.isclose(law_constant(cells, laws[0]), KB, rel_tol=1e-3)  # the constant, refitted
    exps = out["exponents"]
    assert exps["published_inside_ours"].all()


def test_wrong_exponent_is_flagged_and_its_gap_matches_the_landscape(grid):
    table, cells, fits = grid
    law = _law("flat/b", "b_opt", 1.0, tokens=0.0)  # B independent of D: wrong
    out = audit(cells, fits, table, [law], n_boot=40)
    row = out["exponents"].iloc[0]
    assert not row["published_inside_ours"] and abs(row["ours"] - EB) < 0.01
    per_cell = out["cells"]
    # independent computation: a constant B (the geometric mean of the optima), the best LR for
    # it, on the true noiseless landscape (the fitted quadratic equals it: the data are exact)
    b_const = math.exp(np.log(cells["b_opt"]).mean())
    for _, r in per_cell.iterrows():
        assert math.isclose(r["b_pred"], b_const, rel_tol=1e-9)
        x = math.log(b_const) - math.log(float(true_b(r["tokens"])))
        expected = 0.02 * x * x - (0.01 * x) ** 2 / (4 * 0.03)  # min over ln LR of the bowl at that x
        assert math.isclose(r["gap"], expected, rel_tol=1e-3, abs_tol=1e-9)
    assert out["gaps"].iloc[0]["scored_with"] == "B from the law, best LR for it"


def test_compute_exponents_read_as_n_and_d():
    assert in_nd({"compute": 0.3271}) == {"num_params": 0.3271, "tokens": 0.3271}
    assert in_nd({"num_params": -0.713, "tokens": 0.307}) == {"num_params": -0.713, "tokens": 0.307}


def test_published_laws_audit_runs_on_a_constructed_grid(grid):
    table, cells, fits = grid
    laws = published_laws(load_baselines())
    out = audit(cells, fits, table, laws, n_boot=40)
    sources = set(out["gaps"]["source"])
    assert {"stepfun2025", "deepseek2024", "bergsma2025"} <= sources
    step = out["exponents"].query("law == 'stepfun2025/law/lr_opt'").set_index("variable")
    assert step.loc["num_params", "published"] == -0.713 and abs(step.loc["num_params", "ours"] - EN) < 0.01
    assert (out["gaps"]["mean_gap"] >= -1e-9).all()  # no prediction beats the landscape's optimum
