"""Batch-size schedules: BatchPlan data order, Smith et al.'s `increase`, `warmup`, the loop's record."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import bench.core.loop
from bench.job_plan import job_plan
from bench.config import ConfigError, validate
from bench.rules.batch_schedules import halving_levels, increase_stages, warmup_stages
from bench.rules.plan import BatchPlan, epoch_permutation
from bench.rules.lr_schedules import lr_multiplier
from conftest import small_config


def _classic(seeds, n, b, start, count):
    """The constant-B loader as it was before BatchPlan (drop-last, one permutation per epoch)."""
    spe = n // b
    return np.stack([np.stack([epoch_permutation(s, (start + t) // spe, n)[
        ((start + t) % spe) * b:((start + t) % spe + 1) * b] for s in seeds]) for t in range(count)])


def test_constant_plan_is_the_classic_drop_last_loader():
    plan = BatchPlan([1, 2], 100, 30)  # 3 steps per epoch, 10 examples dropped
    np.testing.assert_array_equal(plan.indices(5, 7), _classic([1, 2], 100, 30, 5, 7))
    assert plan.steps_per_epoch == 3 and plan.next_change(0) is None and plan.segments(4, 50) == [(4, 46, 30)]
    assert [plan.examples(t) for t in (0, 1, 7)] == [0, 30, 210]
    assert plan.epoch(10) == pytest.approx(300 / 100)


def _walk(plan: BatchPlan, steps: int):
    """Per step: (data epoch, offset, B), checking examples(t) is the cumulative sum of B."""
    out, examples = [], 0
    for t in range(steps):
        e, off = plan.data_epoch(t)
        b = plan.batch_size(t)
        assert plan.examples(t) == examples and plan.epoch(t) == pytest.approx(examples / plan.n)
        examples += b
        out.append((e, off, b))
    return out


def test_variable_batch_epochs_are_drop_last_and_never_straddle():
    n = 1000
    plan = BatchPlan([7, 3], n, [(0, 32), (1, 64), (2.5, 128)])
    steps = plan.steps_before_epoch(5)
    walk = _walk(plan, steps)
    for e in range(5):
        batches = [(off, b) for ep, off, b in walk if ep == e]
        # consecutive slices of this epoch's permutation, each wholly inside the epoch
        pos = 0
        for off, b in batches:
            assert off == pos and off + b <= n
            pos += b
        assert n - pos < batches[-1][1]          # only a remainder smaller than a batch is dropped
    sizes = {e: sorted({b for ep, _, b in walk if ep == e}) for e in range(5)}
    assert sizes == {0: [32], 1: [64], 2: [64, 128], 3: [128], 4: [128]}
    # mid-epoch switch at progress 2.5: the first 128-batch is the first batch starting at >= 500
    first128 = next(off for ep, off, b in walk if ep == 2 and b == 128)
    assert first128 == 512 and plan.steps_to_epoch(2.5) == plan.steps_before_epoch(2) + 8
    assert plan.steps_before_epoch(1) == 31 and plan.steps_before_epoch(2) == 31 + 15
    # indices: replica k follows its own permutation, whatever the other replicas are
    t0 = plan.steps_before_epoch(3) + 2
    idx = plan.indices(t0, 3)
    assert idx.shape == (3, 2, 128) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx[:, 1], BatchPlan([3], n, [(0, 32), (1, 64), (2.5, 128)]).indices(t0, 3)[:, 0])
    np.testing.assert_array_equal(idx[0, 0], epoch_permutation(7, 3, n)[256:384])


def test_segments_partition_steps_into_constant_batch_runs():
    plan = BatchPlan([0], 1000, [(0, 32), (1, 64), (2.5, 128)])
    segs = plan.segments(20, 80)
    assert segs == [(20, 11, 32), (31, 23, 64), (54, 26, 128)]
    assert sum(c for _, c, _ in segs) == 60
    np.testing.assert_array_equal(plan.batch_sizes(20, 80), np.repeat([32, 64, 128], [11, 23, 26]))
    assert plan.next_change(20) == 31 and plan.next_change(31) == 54 and plan.next_change(54) is None
    with pytest.raises(ValueError, match="mix batch sizes"):
        plan.indices(29, 4)
    assert plan.indices(31, 23).shape == (23, 1, 64)
    assert plan.sizes(80) == [32, 64, 128]


def test_increase_multiplies_batch_at_lr_boundaries_and_decays_lr_past_the_cap():
    # decay 0.2 at epochs 2, 4, 5 -> B x5 instead: 32 -> 160 -> 800 > cap 512: B = 512, LR x 0.2*512/160
    stages, factors = increase_stages(32, [2, 4, 5], 0.2, factor=None, cap=512)
    assert stages == [(0, 32), (2, 160), (4, 512)]
    assert factors == [(2.0, pytest.approx(1.0)), (4.0, pytest.approx(0.64)), (5.0, pytest.approx(0.2))]
    # lr / B follows the step schedule at every boundary: x 0.2 each time
    b, lr = 32, 1.0
    for (_, f), new in zip(factors, [160, 512, 512]):
        assert (lr * f / new) / (lr / b) == pytest.approx(0.2)
        b, lr = new, lr * f
    # an explicit factor smaller than 1/decay: the LR takes the rest at every boundary
    stages, factors = increase_stages(32, [2, 4], 0.2, factor=2, cap=512)
    assert stages == [(0, 32), (2, 64), (4, 128)] and [f for _, f in factors] == pytest.approx([0.4, 0.4])
    # sizes stay multiples of the quantum (accumulate x devices)
    stages, _ = increase_stages(24, [1], 0.3, factor=None, cap=1000, quantum=8)
    assert stages[1][1] % 8 == 0 and stages[1][1] == 80


def _cfg(**kw):
    base = dict(batch_size=32, budget="6epochs", schedule={"name": "step", "decay_epochs": [2, 4],
                                                            "decay_factor": 0.2})
    base.update(kw)
    return small_config(**base)  # synthetic N = 512


def test_increase_plan_and_lr_shape_from_config():
    cfg = _cfg(batch_schedule={"name": "increase"})
    plan = job_plan(validate(cfg), 512)
    # epochs 0-1: 16 steps of 32; 2-3: 3 steps of 160 (32 dropped); 4-5: 1 full batch of 512 (capped)
    assert plan.total_steps == 32 + 6 + 2
    assert [plan.batch_size(t) for t in (0, 31, 32, 37, 38, 39)] == [32, 32, 160, 160, 512, 512]
    shape = lr_multiplier(cfg.schedule, plan)
    lrs = [float(shape(jnp.asarray(t))) for t in range(plan.total_steps)]
    np.testing.assert_allclose(lrs[:38], 1.0)                       # no decay where B grew x5
    np.testing.assert_allclose(lrs[38:], 0.2 * 512 / 160, rtol=1e-6)  # cap: LR decays the rest
    # the same config without the batch schedule decays the LR at both boundaries
    plain = lr_multiplier(cfg.schedule, job_plan(validate(_cfg()), 512))  # boundaries at steps 32, 64
    assert [float(plain(jnp.asarray(t))) for t in (31, 32, 63, 64, 95)] == pytest.approx(
        [1.0, 0.2, 0.2, 0.04, 0.04])


def test_warmup_plan_from_config_and_lr_boundaries_in_plan_steps():
    stages = warmup_stages(16, 128, 3.0, growth=2)
    assert stages == [(0, 16), (1, 32), (2, 64), (3, 128)]
    assert warmup_stages(16, 128, 2.0, growth=4) == [(0, 16), (1, 64), (2, 128)]
    cfg = _cfg(batch_size=128, budget="5epochs", schedule={"name": "step", "decay_epochs": [4],
                                                            "decay_factor": 0.1},
               batch_schedule={"name": "warmup", "start_batch_size": 16, "warmup_epochs": 3})
    plan = job_plan(validate(cfg), 512)
    assert plan.sizes() == [16, 32, 64, 128]
    assert plan.total_steps == 32 + 16 + 8 + 4 + 4
    shape = lr_multiplier(cfg.schedule, plan)
    decay_at = plan.steps_to_epoch(4)
    assert decay_at == 60
    assert float(shape(jnp.asarray(decay_at - 1))) == pytest.approx(1.0)
    assert float(shape(jnp.asarray(decay_at))) == pytest.approx(0.1)


def test_examples_and_epoch_budgets_count_plan_steps():
    plan = BatchPlan([0], 512, [(0, 32), (2, 160), (4, 512)])
    assert plan.steps_for_budget(6, "epochs") == 40
    assert plan.steps_for_budget(3, "epochs") == 35
    assert plan.steps_for_budget(1024, "examples") == 32          # exactly two epochs of 32
    assert plan.steps_for_budget(1100, "examples") == 32          # the next batch (160) would exceed it
    assert plan.steps_for_budget(7, "steps") == 7


def _seesaw(schedule, budget="8epochs", batch_size=64, n=4096, **batch_schedule):
    cfg = validate(small_config(batch_size=batch_size, budget=budget, schedule=schedule,
                                batch_schedule={"name": "seesaw", **batch_schedule}))
    return cfg, job_plan(cfg, n)


def test_seesaw_turns_each_lr_halving_into_a_doubling_with_lr_over_sqrt2():
    # a step schedule halving at epochs 2, 4, 6 (N = 4096, B = 64: 64 steps per epoch):
    # Seesaw doubles B there and cuts the LR by 1/sqrt(2); same 8 epochs, fewer steps
    cfg, plan = _seesaw({"name": "step", "decay_epochs": [2, 4, 6], "decay_factor": 0.5})
    assert plan.stages == [(0, 64), (2, 128), (4, 256), (6, 512)]
    assert plan.total_steps == 2 * 64 + 2 * 32 + 2 * 16 + 2 * 8
    assert plan.examples(plan.total_steps) == 8 * 4096
    hand = np.concatenate([np.full(128, 1.0), np.full(64, 2 ** -0.5), np.full(32, 0.5), np.full(16, 2 ** -1.5)])
    shape = lr_multiplier(cfg.schedule, plan)
    np.testing.assert_allclose([float(shape(jnp.asarray(t))) for t in range(plan.total_steps)], hand, rtol=1e-6)
    # the rule's invariant: lr x sqrt(B) is unchanged by every cut
    for (_, b0), (_, b1), f in zip(plan.stages, plan.stages[1:], [f for _, f in plan.lr_factors]):
        assert f * np.sqrt(b1 / b0) == pytest.approx(1.0)


def test_seesaw_several_halvings_at_once_and_the_cap():
    # x0.25 at epoch 2 is two halvings: B x 4, LR x 1/2; past max_batch_size the LR takes the cut
    _, plan = _seesaw({"name": "step", "decay_epochs": [2, 4], "decay_factor": 0.25}, max_batch_size=512)
    assert plan.stages == [(0, 64), (2, 256), (4, 512)]
    assert [f for _, f in plan.lr_factors] == pytest.approx([0.5, 2 ** -0.5 * 0.5])


def test_seesaw_on_cosine_cuts_where_the_cosine_crosses_powers_of_one_half():
    # warmup 10, cosine to 0.1 over the other S = 502 steps of the constant-B run (512 steps):
    # 0.1 + 0.9 (1 + cos(pi s / S)) / 2 <= 2^-k  <=>  s >= S / pi * arccos(2 (2^-k - 0.1) / 0.9 - 1)
    sched = {"name": "cosine", "final_fraction": 0.1, "warmup_steps": 10}
    cfg, plan = _seesaw(sched)
    cuts = [10 + int(np.ceil(502 / np.pi * np.arccos(2 * (2.0 ** -k - 0.1) / 0.9 - 1))) for k in (1, 2, 3)]
    assert [e * 4096 / 64 for e, _ in plan.lr_factors] == pytest.approx(cuts)   # reference steps
    assert [b for _, b in plan.stages] == [64, 128, 256, 512]
    assert plan.steps_to_epoch(plan.lr_factors[0][0]) == cuts[0]                 # B = 64 until then
    shape = lr_multiplier(cfg.schedule, plan)
    for k, (e, _) in enumerate(plan.lr_factors, start=1):
        t = plan.steps_to_epoch(e)
        assert float(shape(jnp.asarray(t - 1))) == pytest.approx(2 ** (-(k - 1) / 2), rel=1e-6)
        assert float(shape(jnp.asarray(t))) == pytest.approx(2 ** (-k / 2), rel=1e-6)
    # same data (drop-last loses less than one batch per epoch), fewer steps than the cosine run
    assert 8 * 4096 - plan.examples(plan.total_steps) < 8 * 512 and plan.total_steps < 512
    assert halving_levels(np.array([0.0, 0.3, 1.0, 0.6, 0.5, 0.26, 0.24, 0.3]), 2).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_schedule={"name": "bigger"}), "unknown batch_schedule 'bigger'"),
    (dict(batch_schedule={"name": "increase"}, schedule={"name": "cosine"}), "use schedule=step"),
    (dict(batch_schedule={"name": "increase", "factor": 1.0}), "batch_schedule.factor=1.0 must be > 1"),
    (dict(batch_schedule={"name": "increase", "max_batch_size": 16}), "max_batch_size=16 must be >="),
    (dict(batch_schedule={"name": "warmup"}), "start_batch_size=32 must be below batch_size=32"),
    (dict(batch_schedule={"name": "warmup", "start_batch_size": 64, "warmup_epochs": 1}), "start_batch_size=64"),
    (dict(batch_schedule={"name": "warmup", "start_batch_size": 8, "warmup_epochs": 0}),
     "warmup_epochs=0.0 must be > 0"),
    (dict(batch_schedule={"name": "warmup", "start_batch_size": 8, "warmup_epochs": 1, "growth": 1}),
     "growth=1.0 must be > 1"),
    (dict(batch_schedule={"name": "seesaw"}, schedule={"name": "constant"}), "use a decaying schedule"),
    (dict(batch_schedule={"name": "seesaw"}, budget="100steps"), "give budget in epochs, examples or tokens"),
    (dict(batch_schedule={"name": "seesaw", "max_batch_size": 16}), "max_batch_size=16 must be >="),
])
def test_bad_batch_schedules_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(_cfg(**overrides))
    assert "\n" not in str(err.value)


def test_batch_schedule_sizes_must_suit_devices_and_data():
    cfg = _cfg(batch_schedule={"name": "warmup", "start_batch_size": 6, "warmup_epochs": 1})
    validate(cfg)
    with pytest.raises(ConfigError, match="multiple of 4"):
        validate(cfg, num_devices=4)
    cfg = _cfg(batch_schedule={"name": "increase", "max_batch_size": 1024})
    with pytest.raises(ConfigError, match="larger than the training set"):
        job_plan(validate(cfg), 512)


def test_hydra_groups_compose():
    from bench.hydra_conf import compose_config as compose

    cfg = compose(["batch_schedule=increase", "schedule=step"])
    assert cfg.batch_schedule.name == "increase" and cfg.batch_schedule.factor is None
    cfg = compose(["batch_schedule=warmup", "batch_schedule.start_batch_size=16"])
    assert cfg.batch_schedule.start_batch_size == 16 and cfg.batch_schedule.growth == 2.0
    assert compose([]).batch_schedule.name == "constant"


@pytest.fixture
def spy_jobs(monkeypatch):
    jobs = []

    class SpyJob(bench.core.loop.Setup):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            jobs.append(self)

    monkeypatch.setattr(bench.core.loop, "Setup", SpyJob)
    return jobs


def test_loop_records_per_step_batch_size_examples_and_epoch(tmp_path, spy_jobs):
    # N = 512, B = 32; LR decays x0.5 at epochs 1 and 2 -> B doubles at 1; at 2 the cap (64) binds
    cfg = small_config(batch_size=32, budget="3epochs", eval={"every_steps": 4, "batch_size": 256},
                       schedule={"name": "step", "decay_epochs": [1, 2], "decay_factor": 0.5},
                       batch_schedule={"name": "increase", "max_batch_size": 64})
    (record,) = bench.core.loop.run(cfg, tmp_path)
    assert record["status"] == "finished"
    rows = {r["step"]: r for r in record["history"]}
    assert sorted(rows) == list(range(0, 33, 4))            # 16 steps of 32, then 8 + 8 of 64
    for s, row in rows.items():
        b = 32 if s <= 16 else 64                           # B of the last step taken
        examples = 32 * min(s, 16) + 64 * max(s - 16, 0)
        assert (row["batch_size"], row["examples"]) == (b, examples), s
        assert row["epoch"] == pytest.approx(examples / 512)
        assert row["lr"] == pytest.approx(0.05 if s <= 24 else 0.025), s   # decays only at the cap
    assert rows[32]["epoch"] == pytest.approx(3.0)
    assert record["experiment"]["total_steps"] == 32 and record["experiment"]["batch_schedule"] == "increase"
    # each batch size compiled once (calls never mix two sizes; every call here has 4 steps)
    (job,) = spy_jobs
    train_keys = [k for k in job.compiled_keys if k[0] == "train"]
    assert sorted(train_keys) == [("train", 4, 32), ("train", 4, 64)]


def test_loop_with_warmup_calls_never_mix_batch_sizes(tmp_path, spy_jobs):
    cfg = small_config(batch_size=128, budget="3epochs", eval={"every_steps": 10, "batch_size": 256},
                       batch_schedule={"name": "warmup", "start_batch_size": 32, "warmup_epochs": 2})
    (record,) = bench.core.loop.run(cfg, tmp_path)
    (job,) = spy_jobs
    assert job.plan.total_steps == 16 + 8 + 4
    last = record["history"][-1]
    assert (last["step"], last["examples"], last["batch_size"]) == (28, 3 * 512, 128)
    assert [r["batch_size"] for r in record["history"]] == [32, 32, 64, 128]   # steps 0, 10, 20, 28
    keys = [k for k in job.compiled_keys if k[0] == "train"]
    # eval at 10, 20; B changes at 16 and 24: calls [0,10) [10,16) [16,20) [20,24) [24,28)
    assert sorted(keys) == sorted([("train", 10, 32), ("train", 6, 32), ("train", 4, 64), ("train", 4, 128)])
