"""Several JAX processes (jax.distributed, gloo CPU collectives): 2 processes x 2 CPU devices give
the record of 1 process x 4 devices, in memory and streamed, with BatchNorm, and after one
process is killed and the job restarted (also on another process count)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from multiprocess import eval_table, finish, records, run, start, wait_for_history

TOL = 1e-5  # float reassociation across process layouts (the bound)

ARGS = ["dataset=synthetic", "dataset.synthetic_train=512", "dataset.synthetic_test=256",
        "model=mlp", "model.hidden=[32]", "model.batch_norm=true", "budget=40steps",
        "eval.every_steps=10", "steps_per_call=10", "batch_size=64", "logger=none",
        "progress=false", "replicas.lr=[0.05,0.1]", "save_params=true"]


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


def test_two_processes_in_memory_equal_one_process(tmp_path):
    run(1, 4, ARGS, tmp_path / "one")
    errs = run(2, 4, ARGS, tmp_path / "two")
    _same(tmp_path / "one", tmp_path / "two")
    # only process 0 writes: one record per replica, no second copy
    assert sorted(p.name for p in (tmp_path / "two").glob("record_*")) == ["record_r0.json", "record_r1.json"]
    assert all("Traceback" not in e for e in errs)


@pytest.mark.slow
def test_signal_to_one_process_saves_all_at_one_step_and_resumes_on_one(tmp_path):
    """SIGTERM to process 1 only: both save the same step and stop; the same command resumes
    (2 processes) and so does a 1-process restart, each equal to the uninterrupted run."""
    long = [a for a in ARGS if not a.startswith(("budget", "eval.every"))] + [
        "budget=1500steps", "eval.every_steps=50", "eval.write_every_seconds=0"]
    run(1, 4, long, tmp_path / "reference")
    out = tmp_path / "killed"
    procs = start(2, 4, long, out)
    wait_for_history(out, 3)
    procs[1].send_signal(signal.SIGTERM)
    errs = finish(procs)
    steps = [int(p.name) for p in (out / "checkpoints").glob("[0-9]*")]
    assert len(steps) == 1 and 0 < steps[0] < 1500, "the run finished before the signal"
    assert all("interrupted: checkpoint" in e for e in errs)   # both processes stopped there
    import shutil
    shutil.copytree(out, tmp_path / "killed-on-one")
    run(2, 4, long, out)
    run(1, 4, long, tmp_path / "killed-on-one")
    for resumed in (out, tmp_path / "killed-on-one"):
        assert [r["timings"]["resumed_at_steps"] for r in records(resumed)] == [steps, steps]
        _same(tmp_path / "reference", resumed)
