"""Training on streamed data: for the same seed, a dataset that fits gives the same record
streamed (grain over ArrayRecord) or in memory; a SIGTERM-killed streaming run restarted with
the same command ends with the uninterrupted record; Goyal's ImageNet preset runs on TFDS
mock data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bench.config import from_dict
from bench.data import load_dataset
from bench.data.export import export
from bench.core.loop import run
from conftest import REPO, small_config
from multiprocess import eval_table, wait_for_history

SYNTH = {"name": "synthetic", "synthetic_train": 512, "synthetic_test": 256, "input_dim": 16}
BN_DROPOUT = {"name": "mlp", "hidden": [32], "batch_norm": True, "dropout": 0.1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic-ar")
    export(load_dataset(from_dict({"dataset": SYNTH}).dataset), directory, shards=2)
    return directory


def _same_records(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["status"] == rb["status"] == "finished"
        ta, tb = eval_table(ra), eval_table(rb)
        assert ta.shape == tb.shape and len(ta) >= 4
        np.testing.assert_allclose(ta, tb, atol=tol, rtol=0)
        assert [r["batch_size"] for r in ra["history"]] == [r["batch_size"] for r in rb["history"]]
        assert ra["experiment"]["data_sha256"] == rb["experiment"]["data_sha256"]


@pytest.mark.parametrize("schedule", [{"name": "constant"}, {"name": "warmup", "start_batch_size": 16,
                                                             "warmup_epochs": 1.5}])
def test_streamed_equals_in_memory(tmp_path, exported, schedule):
    """BatchNorm + dropout, 2 replicas, and (warmup) batch sizes changing mid-epoch: the plan's
    exact offsets, streamed. Tolerance 1e-5 (observed: equal bit for bit on this CPU)."""
    common = dict(model=BN_DROPOUT, replicas={"lr": [0.05, 0.1]}, batch_schedule=schedule,
                  budget="4epochs", eval={"every_steps": 8, "batch_size": 96})
    memory = run(small_config(**common), tmp_path / "memory")
    streamed = run(small_config(**common, dataset={"name": "arrayrecord", "path": str(exported),
                                                   "loader": "stream", "threads": 3, "prefetch": 3}),
                   tmp_path / "stream")
    _same_records(memory, streamed, 1e-5)
    if schedule["name"] == "warmup":
        assert len({r["batch_size"] for r in memory[0]["history"]}) >= 3


def test_exported_in_memory_equals_the_builtin_bit_for_bit(tmp_path, exported):
    common = dict(model=BN_DROPOUT, budget="30steps")
    builtin = run(small_config(**common), tmp_path / "builtin")
    loaded = run(small_config(**common, dataset={"name": "arrayrecord", "path": str(exported)}),
                 tmp_path / "arrayrecord")
    _same_records(builtin, loaded, 0.0)


ARGS = ["model=mlp", "model.hidden=[32]", "model.batch_norm=true", "model.dropout=0.1",
        "budget=1500steps", "eval.every_steps=50", "steps_per_call=10", "batch_size=64",
        "logger=none", "progress=false", "save_params=true", "replicas.lr=[0.02,0.05]",
        "eval.write_every_seconds=0", "dataset=arrayrecord", "dataset.loader=stream"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def test_sigterm_then_restart_streamed_equals_uninterrupted(tmp_path, exported):
    """As tests/test_resume.py, streamed: the iterator position is in the checkpoint."""
    def cmd(out):
        return [sys.executable, "-m", "bench.train", *ARGS, f"dataset.path={exported}",
                f"output_dir={out}", f"hydra.run.dir={out}/.hydra-run"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(cmd(reference), env=ENV, cwd=REPO, check=True, capture_output=True, timeout=900)
    proc = subprocess.Popen(cmd(resumed), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_history(resumed, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "interrupted: checkpoint" in err, err[-2000:]
    (saved,) = (resumed / "checkpoints").glob("[0-9]*")
    killed_at = int(saved.name)
    assert 0 < killed_at < 1500
    position = json.loads((saved / "data" / "process_0-of-1.json").read_text())
    assert position["step"] == killed_at

    subprocess.run(cmd(resumed), env=ENV, cwd=REPO, check=True, capture_output=True, timeout=900)
    for k in range(2):
        a = json.loads((reference / f"record_r{k}.json").read_text())
        b = json.loads((resumed / f"record_r{k}.json").read_text())
        assert b["status"] == a["status"] == "finished"
        assert b["timings"]["resumed_at_steps"] == [killed_at]
        strip = lambda r: [{k: v for k, v in row.items() if k != "train_seconds"} for row in r["history"]]  # noqa: E731
        assert strip(b) == strip(a)                       # every eval row, bit for bit
        pa, pb = np.load(reference / f"params_r{k}.npz"), np.load(resumed / f"params_r{k}.npz")
        for name in pa.files:
            np.testing.assert_array_equal(pa[name], pb[name])


@pytest.mark.parametrize("model", [["model.width=8", "model.stages=[1,1,1,1]"],
                                   pytest.param([], marks=pytest.mark.slow)], ids=["slim", "resnet50"])
def test_goyal_imagenet_preset_on_tfds_mock_data(tmp_path, model):
    """+experiment=goyal_imagenet at 32 x 32 pixels on 64 mock images: streamed from TFDS as it
    is, random-resized crops, warmup 0.1 -> 0.1 x 64 / 256 over 5 epochs (1 step each)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from bench.hydra_conf import compose_config

    cfg = compose_config(["+experiment=goyal_imagenet", "dataset.image_size=32", "batch_size=64",
                          "budget=6epochs", "steps_per_call=1", "eval.batch_size=64",
                          "eval.every_steps=3", "eval.every_steps_at=null", "logger=none",
                          "progress=false", "dataset.workers=0", "dataset.threads=2", *model])
    assert (cfg.dataset.loader, cfg.dataset.augment, cfg.model.ghost_batch_size) == ("stream", "imagenet", 32)
    with tfds.testing.mock_data(num_examples=64):
        (record,) = run(cfg, tmp_path)
    assert record["status"] == "finished" and record["experiment"]["dataset"] == "imagenet2012"
    exp = record["experiment"]
    assert (exp["num_train"], exp["num_test"], exp["total_steps"], exp["warmup_steps"]) == (64, 64, 6, 5)
    if not model:
        assert exp["num_params"] == 25_557_032
    # the LR of the last step before each evaluation: gradual warmup from 0.1 to 0.025
    assert [r["step"] for r in record["history"]] == [0, 3, 6]
    np.testing.assert_allclose([r["lr"] for r in record["history"]], [0.1, 0.07, 0.025], rtol=1e-6)
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_accuracy"] <= 1 for r in record["history"])
