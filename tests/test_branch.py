"""Branching a run from a checkpoint (init_from, bench.core.branch): a branch continues its
parent bit for bit, a changed batch size equals a hand-built continuation of the parent's state,
replicas, optimizer reset, refusals, resume, and a parent whose checkpoint changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.config import ConfigError
from bench.core.checkpoint import Checkpointer, seal
from bench.core.job import Job
from bench.core.loop import run
from bench.core.reuse import StaleResults, check_reuse
from bench.rules.plan import epoch_permutation
from conftest import small_config

MODEL = {"name": "mlp", "hidden": [32], "batch_norm": True}
COMMON = {"budget": "40steps", "save_params": True, "model": MODEL}
N, STEP = 512, 20  # training examples; the parent's checkpoint the branches start from


def rows(history, since=0):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in history if r["step"] >= since]


def params(directory: Path, k: int = 0) -> dict[str, np.ndarray]:
    with np.load(directory / f"params_r{k}.npz") as f:
        return {name: f[name] for name in f.files}


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """40 steps at B = 64 (a cosine schedule: the LR depends on the step), checkpoints at 20, 40."""
    out = tmp_path_factory.mktemp("parent")
    run(small_config(checkpoint={"every_steps": STEP, "max_to_keep": 5}, schedule={"name": "cosine"},
                     **COMMON), out)
    return out


def branch_cfg(parent: Path, **overrides):
    keys = {**COMMON, "schedule": {"name": "cosine"}, "init_from": str(parent), "init_from_step": STEP,
            **overrides}
    return small_config(**keys)


def test_unchanged_branch_continues_the_parent_bit_for_bit(parent, tmp_path):
    (record,) = run(branch_cfg(parent), tmp_path)
    (saved,) = [__import__("json").loads((parent / "record_r0.json").read_text())]
    assert rows(record["history"]) == rows(saved["history"], since=STEP)
    mine, theirs = params(tmp_path), params(parent)
    assert mine.keys() == theirs.keys() and any("stats" in k for k in mine)  # BatchNorm came along
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name])
    block = record["parent"]
    assert block["step"] == STEP and block["examples"] == STEP * 64 and block["branch_step"] == STEP
    assert block["run_id"] == f"{saved['config_hash']}-r0" and len(block["checkpoint_sha256"]) == 64
    assert record["config_hash"] != saved["config_hash"]  # init_from* keys are in the hash


def _by_hand(parent: Path, cfg, *, reset: bool) -> dict[str, np.ndarray]:
    """The branch rebuilt independently: a fresh Job of the branch's keys (no init_from), the
    parent's state restored by hand, its step set to examples / B, the data order walked here
    from the parent's (epoch, offset) with numpy, and the same fused calls the loop makes."""
    fresh_cfg = small_config(**{**COMMON, "schedule": {"name": "cosine"}, "batch_size": cfg.batch_size,
                                "budget": cfg.budget})
    parent_job, job = Job(small_config(schedule={"name": "cosine"}, **COMMON)), Job(fresh_cfg)
    state, _ = Checkpointer(parent / "checkpoints", every_steps=None).restore(STEP, parent_job.init_state())
    b, start = cfg.batch_size, STEP * 64 // cfg.batch_size
    opt = jax.vmap(job.tx.init)(state.params) if reset else state.opt_state
    state = state.replace(step=jnp.full_like(state.step, start), opt_state=opt)
    e, off = divmod(STEP * 64, N)  # the parent's data position (B = 64 fills each epoch)
    order = []
    for _ in range(start, job.plan.total_steps):
        if off + b > N:
            e, off = e + 1, 0
        order.append(epoch_permutation(cfg.seed, e, N)[off:off + b])
        off += b
    data = job.source.train_data()
    for s in range(0, len(order), 10):  # the loop's calls: up to each evaluation (every 10 steps)
        idx = jnp.asarray(np.stack(order[s:s + 10])[:, None, :])
        state, _ = job.train_call(state, data, idx)
    host = jax.device_get({"params": state.params, "stats": state.stats})
    flat = jax.tree_util.tree_flatten_with_path(host)[0]
    return {jax.tree_util.keystr(p): np.asarray(leaf)[0] for p, leaf in flat}


@pytest.mark.parametrize("reset", [False, True])
def test_changed_batch_size_equals_the_parent_state_continued_by_hand(parent, tmp_path, reset):
    cfg = branch_cfg(parent, batch_size=128, init_from_optimizer="reset" if reset else "keep")
    (record,) = run(cfg, tmp_path)
    assert record["history"][0]["step"] == STEP * 64 // 128 and record["history"][0]["examples"] == STEP * 64
    want, have = _by_hand(parent, cfg, reset=reset), params(tmp_path)
    assert want.keys() == have.keys()
    for name in want:  # the same programs on the same inputs: bit for bit
        np.testing.assert_array_equal(have[name], want[name], err_msg=name)


def test_replicas_of_one_parent(parent, tmp_path):
    """Two LRs branched from one parent replica: both start from its state (their first row,
    at the branch point, is the parent's), then diverge with their own LR."""
    records = run(branch_cfg(parent, replicas={"lr": [0.05, 0.2]}), tmp_path)
    saved = __import__("json").loads((parent / "record_r0.json").read_text())
    at = rows(saved["history"], since=STEP)[0]
    for record in records:
        first = rows(record["history"])[0]
        assert {k: first[k] for k in ("train_loss", "test_loss")} == {k: at[k] for k in ("train_loss", "test_loss")}
        assert record["parent"]["replica"] == 0
    assert records[0]["final"]["train_loss"] != records[1]["final"]["train_loss"]


def test_a_branch_resumes_as_itself_and_refuses_a_changed_parent(parent, tmp_path):
    cfg = branch_cfg(parent, checkpoint={"every_steps": 10, "max_to_keep": 5})
    run(cfg, tmp_path / "b")
    killed = tmp_path / "killed"  # as if killed after its checkpoint at step 30: records gone
    shutil.copytree(tmp_path / "b", killed)
    shutil.rmtree(killed / "checkpoints" / "40")
    (killed / "record_r0.json").unlink()
    assert check_reuse(killed, cfg) == "resume"
    (record,) = run(cfg, killed)
    assert record["timings"]["resumed_at_steps"] == [30]  # its own checkpoint, not the parent's
    done = __import__("json").loads((tmp_path / "b" / "record_r0.json").read_text())
    assert rows(record["history"]) == rows(done["history"])
    for name, value in params(tmp_path / "b").items():
        np.testing.assert_array_equal(params(killed)[name], value)

    changed = tmp_path / "p2"  # the parent rewritten at that step (a rerun, say): resealed
    shutil.copytree(parent, changed)
    step_dir = changed / "checkpoints" / str(STEP)
    (step_dir / "extra" / "metadata").write_text((step_dir / "extra" / "metadata").read_text().replace(
        '"timings": {', '"timings": { '))
    (step_dir / "sha256.json").unlink()
    seal(step_dir)
    moved = branch_cfg(changed)
    run(moved, tmp_path / "b2")
    step_dir.joinpath("extra", "metadata").write_text(
        step_dir.joinpath("extra", "metadata").read_text().replace('"timings": { ', '"timings": {  '))
    (step_dir / "sha256.json").unlink()
    seal(step_dir)
    with pytest.raises(StaleResults, match="changed since"):
        check_reuse(tmp_path / "b2", moved)


def _refusal(cfg, tmp_path, match):
    with pytest.raises(ConfigError, match=match):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "record_r0.json").exists()


@pytest.mark.parametrize("keys, match", [
    ({"init_from_step": 7}, "init_from_step=7 was not saved.*saved steps: 20, 40"),
    ({"model": {**MODEL, "hidden": [48]}}, "the model does not fit the checkpoint"),
    ({"optimizer": {"name": "adam", "lr": 1e-3}}, "optimizer state does not fit.*init_from_optimizer=reset"),
    ({"batch_size": 96}, "1280 examples are not a step boundary.*batch_size dividing 1280"),
    ({"budget": "10steps"}, "budget is the total of the run"),
    ({"init_from_replica": 1}, "the parent has 1 replica"),
])
def test_refusals(parent, tmp_path, keys, match):
    _refusal(branch_cfg(parent, **keys), tmp_path, match)


def test_refusals_of_the_parent_directory(parent, tmp_path):
    _refusal(branch_cfg(tmp_path / "nothing"), tmp_path, "holds no checkpoint")
    damaged = tmp_path / "damaged"
    shutil.copytree(parent, damaged)
    target = next(p for p in (damaged / "checkpoints" / str(STEP) / "state").rglob("*") if p.is_file()
                  and p.stat().st_size > 64 and "d" == p.parent.name)
    blob = bytearray(target.read_bytes())
    blob[-1] ^= 0xFF
    target.write_bytes(bytes(blob))
    _refusal(branch_cfg(damaged), tmp_path, "fails its seal")
    assert target.exists()  # the parent's files are never moved
    with pytest.raises(ConfigError, match="does nothing without init_from"):
        run(small_config(init_from_optimizer="reset"), tmp_path / "fresh")


def test_two_parent_replicas_into_three_is_ambiguous(tmp_path):
    out = tmp_path / "p"
    run(small_config(budget="10steps", replicas={"seeds": [0, 1]}, checkpoint={"every_steps": 10}), out)
    _refusal(small_config(budget="20steps", init_from=str(out), replicas={"seeds": [0, 1, 2]}), tmp_path,
             "has 2 replicas and this run 3: give init_from_replica")
