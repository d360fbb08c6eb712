"""``python -m bench.tools.curvature <run dir> [step]``: a saved checkpoint measured without retraining
gives what the run measured at that step (same subset, same keys, same parameters)."""

from __future__ import annotations

import json

import pytest

from bench.tools import curvature as cli
from bench.core.loop import run
from conftest import small_config

METRICS = {"hessian": True, "every": 10, "subset_size": 128, "chunk_size": 64, "lanczos_iters": 5,
           "power_iters": 0, "hutchinson_probes": 4, "density": False, "sharpness": False,
           "noise_num_small": 4, "noise_small_batch": 16, "noise_draws": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    (record,) = run(small_config(budget="20steps", metrics=METRICS, checkpoint={"every_steps": 10}), out)
    return out, record


def test_checkpoint_measured_post_hoc_equals_the_runs_own_measurement(trained, capsys):
    out, record = trained
    assert cli.main([str(out), "10"]) == 0
    saved = json.loads((out / "curvature" / "step10.json").read_text())
    (during,) = [row for row in record["history"] if row["step"] == 10]
    (after,) = saved["replicas"]
    for key in ("hessian_top_eigenvalue", "hessian_trace", "grad_norm_sq", "trace_sigma", "two_over_lr"):
        assert after[key] == pytest.approx(during[key], rel=1e-5), key
    printed = capsys.readouterr().out
    assert printed.startswith("curvature: ~") and "HVPs of 128 examples" in printed
    assert "replica 0: lanczos" in printed and "replica 0 at step 10:" in printed


def test_latest_step_and_overrides(trained):
    out, _ = trained
    result = cli.measure_checkpoint(out, None, ["metrics.hutchinson_probes=0"], report=lambda line: None)
    assert result["step"] == 20 and "hessian_trace" not in result["replicas"][0]


@pytest.mark.parametrize("args, message", [
    (["{out}", "7"], "error: no checkpoint at step 7; saved steps: 10, 20"),
    (["{out}", "10", "optimizer.lr=1"], "error: 'optimizer.lr=1': only metrics.<key>=<value> overrides"),
    (["{out}/nothing"], "error: {out}/nothing: not a directory"),
])
def test_bad_input_is_one_error_line(trained, capsys, args, message):
    out, _ = trained
    assert cli.main([a.format(out=out) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(out=out)) and err.count("\n") == 1
