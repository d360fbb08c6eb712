"""Several JAX processes (jax.distributed, gloo CPU collectives): 2 processes x 2 CPU devices give
the record of 1 process x 4 devices, in memory and streamed, with BatchNorm, and after one
process is killed and the job restarted (on 2 processes, and on 1: N -> M)."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest

from bench.config import from_dict
from bench.data import load_dataset
from bench.data.export import export
from multiprocess import eval_table, finish, records, run, start, wait_for_history

TOL = 1e-5  # float reassociation across process layouts (the bound)

SYNTH = ["dataset.synthetic_train=512", "dataset.synthetic_test=256"]
ARGS = ["model=mlp", "model.hidden=[32]", "model.batch_norm=true", "budget=40steps",
        "eval.every_steps=10", "steps_per_call=10", "batch_size=64", "logger=none",
        "progress=false", "replicas.lr=[0.05,0.1]", "save_params=true"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """dataset=synthetic (as SYNTH) written as ArrayRecord."""
    directory = tmp_path_factory.mktemp("synthetic-ar")
    cfg = from_dict({"dataset": {"name": "synthetic", "synthetic_train": 512, "synthetic_test": 256}})
    export(load_dataset(cfg.dataset), directory, shards=2)
    return directory


def memory() -> list[str]:
    return ["dataset=synthetic", *SYNTH]


def streamed(directory) -> list[str]:
    return ["dataset=arrayrecord", f"dataset.path={directory}", "dataset.loader=stream",
            "dataset.threads=2", "dataset.prefetch=2"]


def _same(a_dir, b_dir, tol=TOL) -> None:
    a, b = records(a_dir), records(b_dir)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert ra["status"] == rb["status"] == "finished"
        ta, tb = eval_table(ra), eval_table(rb)
        assert ta.shape == tb.shape and len(ta) >= 5
        np.testing.assert_allclose(ta, tb, atol=tol, rtol=0)
        assert ra["experiment"]["data_sha256"] == rb["experiment"]["data_sha256"]
    for k in range(2):
        pa, pb = np.load(a_dir / f"params_r{k}.npz"), np.load(b_dir / f"params_r{k}.npz")
        for name in pa.files:      # final parameters and BatchNorm statistics
            np.testing.assert_allclose(pa[name], pb[name], atol=TOL, rtol=0)


def test_two_processes_equal_one_in_memory_and_streamed(tmp_path, exported):
    run(1, 4, [*ARGS, *memory()], tmp_path / "one")
    run(2, 4, [*ARGS, *memory()], tmp_path / "two", own_dirs=True)   # output dirs differ:
    _same(tmp_path / "one", tmp_path / "two")                       # process 0's is used
    assert not list((tmp_path / "two-p1").glob("**/*.json"))
    two = tmp_path / "two-streamed"   # with W&B (offline files) on
    run(2, 4, [*ARGS, *streamed(exported), "logger=wandb"], two, env={"WANDB_MODE": "offline"})
    _same(tmp_path / "one", two)
    # only process 0 writes records and W&B: one record and one W&B run per replica
    assert sorted(p.name for p in two.glob("record_*")) == ["record_r0.json", "record_r1.json"]
    assert len(list((two / "wandb").glob("offline-run-*"))) == 2
    env = records(two)[0]["environment"]
    assert (env["process_count"], env["device_count"], env["local_device_count"]) == (2, 4, 2)


@pytest.mark.parametrize("loader", ["stream", pytest.param("memory", marks=pytest.mark.slow)])
def test_signal_to_one_process_saves_all_at_one_step_and_resumes(tmp_path, exported, loader):
    """SIGTERM to process 1 only: both save the same step (each its own iterator position) and
    stop; the same command resumes on 2 processes, and a 1-process restart resumes too, both
    equal to the uninterrupted 1-process run."""
    data = streamed(exported) if loader == "stream" else memory()
    long = [a for a in ARGS if not a.startswith(("budget", "eval.every"))] + [
        "budget=600steps", "eval.every_steps=50", "eval.write_every_seconds=0", *data]
    run(1, 4, long, tmp_path / "reference")
    out = tmp_path / "killed"
    procs = start(2, 4, long, out)
    wait_for_history(out, 3)
    procs[1].send_signal(signal.SIGTERM)
    errs = finish(procs)
    (saved,) = (out / "checkpoints").glob("[0-9]*")
    step = int(saved.name)
    assert 0 < step < 600, "the run finished before the signal"
    assert all("interrupted: checkpoint" in e for e in errs)   # both processes stopped there
    if loader == "stream":                                     # every process saved its position
        positions = [json.loads((saved / "data" / f"process_{i}-of-2.json").read_text()) for i in range(2)]
        assert [p["step"] for p in positions] == [step, step]
        assert [p["rows_of_devices"] for p in positions] == [[0, 2, 4], [2, 4, 4]]
    shutil.copytree(out, tmp_path / "killed-on-one")
    run(2, 4, long, out)
    run(1, 4, long, tmp_path / "killed-on-one")
    for resumed in (out, tmp_path / "killed-on-one"):
        assert [r["timings"]["resumed_at_steps"] for r in records(resumed)] == [[step], [step]]
        _same(tmp_path / "reference", resumed)
