"""Data parallelism: the same run on 1 and on 4 simulated CPU devices gives the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_python

RUN = """
import json, jax
from conftest import small_config
from bench.core.loop import run
assert jax.device_count() == {devices}
cfg = small_config(model={{"name": "mlp", "hidden": [32], "batch_norm": True}}, accumulate={accumulate},
                   replicas={{"lr": [0.05, 0.1]}})
records = run(cfg, "{out}")
print("RESULT" + json.dumps([r["history"] for r in records]))
"""


def _histories(tmp_path, devices: int, accumulate: int = 1):
    code = "import sys; sys.path.insert(0, 'tests')\n" + RUN.format(
        devices=devices, accumulate=accumulate, out=tmp_path / f"d{devices}-a{accumulate}")
    proc = run_python(code, devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_one_vs_four_devices_same_trajectory(tmp_path, accumulate):
    one, four = _histories(tmp_path, 1, accumulate), _histories(tmp_path, 4, accumulate)
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    for h1, h4 in zip(one, four, strict=True):
        a = np.array([[row[k] for k in keys] for row in h1])
        b = np.array([[row[k] for k in keys] for row in h4])
        assert a.shape == b.shape == (5, 4)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
