"""``python -m analysis.laws`` on constructed records: tables, report and figures written, the
B_opt(D) exponent recovered within its interval; bad input gets one error line and exit 2."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.laws.__main__ import main
from laws_factory import EB, EN, write_grid_records


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    write_grid_records(root)
    return root


def test_cli_fits_the_grid_and_writes_everything(results, capsys):
    out = results / "laws"
    # figures are built in test_laws / test_laws_data (saving them dominates the run time)
    assert main([str(results), "--n-boot", "40", "--no-figures"]) == 0
    for f in ("cells.csv", "laws.csv", "audit_exponents.csv", "audit_gaps.csv", "audit_cells.csv", "report.md"):
        assert (out / f).is_file(), f
    laws = pd.read_csv(out / "laws.csv").set_index(["law", "variable"])
    lo, hi = laws.loc[("b_opt(D)", "tokens"), ["lo", "hi"]]
    assert lo <= EB <= hi
    lo, hi = laws.loc[("lr_opt(N,D)", "num_params"), ["lo", "hi"]]
    assert lo <= EN <= hi
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 6 and cells["inside_grid"].all()
    assert "Published exponents beside ours" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/results"], "does not exist"),
    (["{root}", "--n-boot", "5"], "--n-boot 5 is outside"),
    (["{root}", "--metric", "final_nothing"], "no 'final_nothing'"),
])
def test_bad_input_one_error_line_exit_2_nothing_written(results, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = [a.format(root=results) for a in args] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_a_single_data_size_is_refused(tmp_path, capsys):
    write_grid_records(tmp_path, seeds=(0,), data=(2.0 ** 20,))
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "one data size" in capsys.readouterr().err
