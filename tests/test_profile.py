"""bench.tools.profile: compiled memory vs B and accumulation, fits, saturation, CLI outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from bench.tools import profile as prof
from conftest import small_config


@pytest.fixture(scope="module")
def cnn():
    from bench.data import load_dataset

    cfg = small_config(dataset={"name": "mnist1d"},
                       model={"name": "cnn", "channels": [32, 32, 32], "conv_stride": 2, "hidden": []})
    return cfg, load_dataset(cfg.dataset)


_CACHE: dict = {}


def _memory(cfg, b, data, accumulate=1):
    from bench.core.execution import current

    # with accumulate=1 the unroll rule does not matter (one step per call); repr: True == 1
    key = (b, accumulate, repr(current().scan_unroll()) if accumulate > 1 else None)
    if key not in _CACHE:
        _CACHE[key] = prof.compiled_memory(dataclasses.replace(cfg, accumulate=accumulate), b, data)
    return _CACHE[key]


def test_compiled_peak_memory_grows_linearly_with_batch_size(cnn):
    cfg, data = cnn
    sizes = [64, 512, 1024]
    peaks = [_memory(cfg, b, data)["peak_memory_bytes"] for b in sizes]
    assert peaks[0] < peaks[1] < peaks[2]
    fit = prof.fit_line(sizes, peaks)
    assert fit["r2"] > 0.99 and fit["slope"] > 0
    # the intercept holds the fixed part: at least the device-resident training set
    assert fit["intercept"] >= data.x_train.nbytes


def test_accumulation_lowers_compiled_peak_memory(cnn):
    cfg, data = cnn
    one = _memory(cfg, 512, data, accumulate=1)
    eight = _memory(cfg, 512, data, accumulate=8)
    assert eight["peak_memory_bytes"] < one["peak_memory_bytes"]
    assert eight["argument_bytes"] == one["argument_bytes"]  # same inputs; the saving is in temporaries


def test_rolled_accumulation_needs_only_microbatch_memory(cnn, monkeypatch):
    """With the microbatch scan rolled (ExecutionPolicy.scan_unroll on accelerators), B=512 in 8
    microbatches needs about the temporaries of B=64, far below B=512 in one go. (On XLA:CPU the
    harness unrolls scans for speed, and then XLA may keep several microbatches live at once.)"""
    from bench.core.execution import ExecutionPolicy

    monkeypatch.setattr(ExecutionPolicy, "scan_unroll", lambda self, attention=False: 1)
    cfg, data = cnn
    full = _memory(cfg, 512, data)["temp_bytes"]
    micro = _memory(cfg, 64, data)["temp_bytes"]
    accumulated = _memory(cfg, 512, data, accumulate=8)["temp_bytes"]
    assert accumulated < 0.4 * full
    assert accumulated < 2.0 * micro


def test_fit_line_and_r2():
    b = np.array([32, 64, 128, 256, 512])
    fit = prof.fit_line(b, 1000 + 3.5 * b)
    assert fit["intercept"] == pytest.approx(1000) and fit["slope"] == pytest.approx(3.5)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = prof.fit_line(b, 1000 + 3.5 * b + np.array([50, -80, 60, -40, 10]))
    assert 0.9 < noisy["r2"] < 1.0


def test_saturation_and_memory_budget_on_constructed_table():
    b = np.array([32, 64, 128, 256, 512, 1024, 2048])
    c, d = 1e-3, 1e-5                             # step = c + d B: throughput B / (c + d B) -> 1 / d
    eps = b / (c + d * b)                         # max at 2048: 95.3k/s; 90% of it = 85.8k/s
    assert prof.saturation_batch_size(b, eps, 0.9) == 1024   # 91.1k/s; 512 gives 83.7k/s
    assert prof.saturation_batch_size(b, eps, 0.5) == 128    # 56.1k/s >= 47.7k/s > 39.0k/s (B=64)
    assert prof.saturation_batch_size([64, 32, 128], [100.0, 50.0, 101.0], 0.9) == 64  # unsorted input
    peaks = 1e6 + 2e3 * b
    assert prof.max_batch_under_budget(b, peaks, 1.6e6) == 256    # 1.512e6 fits, 2.024e6 does not
    assert prof.max_batch_under_budget(b, peaks, 1e5) is None
    table = pd.DataFrame({"batch_size": b, "peak_memory_bytes": peaks, "step_seconds": c + d * b,
                          "examples_per_second": eps})
    s = prof.summarize(table, memory_budget_bytes=1.6e6)
    assert s["memory_fit"]["b_bytes_per_example"] == pytest.approx(2e3)
    assert s["memory_fit"]["a_bytes"] == pytest.approx(1e6)
    assert s["time_fit"]["c_seconds"] == pytest.approx(c) and s["time_fit"]["r2"] == pytest.approx(1)
    assert s["max_batch_size_under_budget"] == 256 and s["max_batch_size_under_budget_fit"] == 300
    assert s["saturation"]["batch_size"] == 1024 and s["saturation"]["batch_size_at_max"] == 2048
    assert s["saturation"]["batch_size_fit"] == pytest.approx(9 * c / d)   # 90% of 1/d at B = 9c/d


def test_batch_size_list_parsing_and_full_batch_cap():
    assert prof.split_overrides(["model=mlp", "batch_sizes=[32,64]"]) == (["model=mlp"], [32, 64])
    assert prof.parse_batch_sizes("16,8") == [16, 8]
    assert prof.effective_batch_sizes([4096, 32, 2048, 32], 4000) == [32, 2048, 4000]
    with pytest.raises(prof.ConfigError):
        prof.parse_batch_sizes("[a,b]")


def test_cli_writes_csv_json_and_figure(tmp_path, capsys):
    out = tmp_path / "prof"
    rc = prof.main(["dataset=synthetic", "dataset.synthetic_train=256", "model=mlp", "model.hidden=[16]",
                    "logger=none", "batch_sizes=[16,1024]", "--steps", "2", "--warmup", "1",
                    "--repeats", "2", "--memory-gb", "0.001", "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out / "profile.csv")
    assert list(table.columns[:4]) == list(prof.COLUMNS)
    assert list(table["batch_size"]) == [16, 256]                  # 1024 > N=256: full batch
    assert (table["peak_memory_bytes"] == table["argument_bytes"] + table["output_bytes"]
            - table["alias_bytes"] + table["temp_bytes"]).all()
    assert np.allclose(table["examples_per_second"], table["batch_size"] / table["step_seconds"])
    summary = json.loads((out / "profile.json").read_text())
    assert {"memory_fit", "time_fit", "saturation", "max_batch_size_under_budget"} <= set(summary)
    assert summary["memory_budget_bytes"] == pytest.approx(0.001 * 2**30)
    assert summary["setup"]["dataset"] == "synthetic" and summary["setup"]["num_train"] == 256
    assert (out / "profile.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "memory fit" in printed and "saturates at B" in printed
    assert prof.main(["batch_sizes=[0]", "--out", str(tmp_path / "bad")]) == 2
