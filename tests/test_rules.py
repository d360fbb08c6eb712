"""Batch-size rules against hand computations: the warmup-stable-decay multiplier, and
AdamW's EMA timescale tau = B / (lr * wd * D) held fixed across batch sizes (the weight decay
the rule sets, the one each run records, and the one its optimizer state really uses)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bench.config import ConfigError, validate
from bench.rules.plan import BatchPlan
from bench.core.job import Job
from bench.optim import OPTIMIZERS
from bench.rules.lr_scaling import SCALING_RULES, adaptive_hyperparams
from bench.rules.lr_schedules import SCHEDULES, lr_multiplier
from conftest import small_config


@pytest.mark.parametrize("cooldown", ["linear", "1-sqrt"])
def test_wsd_multiplier_is_warmup_then_flat_then_the_cooldown_formula(cooldown):
    plan = BatchPlan([0], 1000, 10, budget=(100, "steps"), warmup_steps=10)
    schedule = SCHEDULES.create("wsd", decay_fraction=0.3, cooldown=cooldown, final_fraction=0.1)
    shape = lr_multiplier(schedule, plan)
    got = np.array([float(shape(jnp.asarray(t))) for t in range(101)])
    t = np.arange(101)
    s = np.clip((t - 70) / 30, 0, 1)                        # the last 30 of 100 steps cool down
    cool = 1 - 0.9 * (s if cooldown == "linear" else np.sqrt(s))
    hand = np.where(t < 10, t / 10, np.where(t < 70, 1.0, cool))
    np.testing.assert_allclose(got, hand, rtol=1e-6, atol=1e-7)
    assert got[100] == pytest.approx(0.1)


def test_wsd_cooldown_overlapping_the_warmup_is_refused():
    plan = BatchPlan([0], 1000, 10, budget=(100, "steps"), warmup_steps=50)
    with pytest.raises(ConfigError, match=r"decay_fraction=0.8: the cooldown \(from step 20\) overlaps the warmup"):
        lr_multiplier(SCHEDULES.create("wsd", decay_fraction=0.8), plan)


N, T = 4096, 16


@pytest.mark.parametrize("unit, tokens", [("epochs", None), ("tokens", T)])
def test_timescale_stays_fixed_across_batch_sizes(unit, tokens):
    # sqrt LR scaling on top, so B and the LR both change; tau from wd = 0.1 at B = 32, lr = 1e-3
    opt = OPTIMIZERS.create("adamw", lr=1e-3, weight_decay=0.1)
    rule = SCALING_RULES.create("timescale", base_batch_size=32, alpha=0.5, unit=unit)
    per_step = (lambda b: b / N) if unit == "epochs" else (lambda b: b * T)
    tau0 = per_step(32) / (1e-3 * 0.1)                      # B / (lr wd D), hand-computed
    for b in (8, 32, 128, 1024):
        peak = rule.peak_lr(1e-3, b)
        assert peak == pytest.approx(1e-3 * np.sqrt(b / 32))
        values, changed = adaptive_hyperparams(opt, rule, b, tokens, base_lr=1e-3, peak_lr=peak, num_train=N)
        assert changed and per_step(b) / (peak * values["weight_decay"]) == pytest.approx(tau0, rel=1e-12)
    # an explicit tau: wd = B / (lr tau D)
    rule = SCALING_RULES.create("timescale", tau=0.25, unit="epochs")
    values, _ = adaptive_hyperparams(OPTIMIZERS.create("adamw"), rule, 256, None, base_lr=1e-3,
                                     peak_lr=2e-3, num_train=N)
    assert values["weight_decay"] == pytest.approx(256 / (2e-3 * 0.25 * N))


def _timescale_cfg(**kw):
    base = dict(optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
                scaling={"name": "timescale", "base_batch_size": 32}, batch_size=64, budget="6steps",
                eval={"every_steps": 3})
    base.update(kw)
    return small_config(**base)  # synthetic N = 512


def test_timescale_weight_decay_is_recorded_and_used_by_the_optimizer():
    job = Job(_timescale_cfg())
    wd = 0.1 * 64 / 32                                       # lr fixed (alpha 0): wd follows B
    # what the run record stores as "replica" (bench.core.loop writes Replica.as_dict)
    assert job.replicas[0].as_dict(1)["hyperparams"]["weight_decay"] == pytest.approx(wd)
    state, _ = job.train(job.init_state(), 0, 2)
    assert float(state.opt_state.hyperparams["weight_decay"][0]) == pytest.approx(wd, rel=1e-6)


def test_timescale_follows_a_growing_batch():
    cfg = _timescale_cfg(batch_size=32, budget="4epochs", schedule={"name": "step", "decay_epochs": [2], "decay_factor": 0.5},
                         batch_schedule={"name": "seesaw"})
    job = Job(cfg)
    assert {b: v["weight_decay"] for b, v in job.hyperparams_by_batch.items()} == pytest.approx({32: 0.1, 64: 0.2})


@pytest.mark.parametrize("overrides, message", [
    (dict(optimizer={"name": "momentum"}), "optimizer=momentum applies it coupled; use optimizer=adamw"),
    (dict(optimizer={"name": "adamw", "weight_decay": 0.0}), "has no timescale to keep"),
    (dict(scaling={"name": "timescale", "tau": 2.0}), "scaling.tau=2 sets the weight decay; remove optimizer.weight_decay=0.1"),
    (dict(replicas={"lr": [0.01, 0.03]}), "needs one job per LR"),
    (dict(scaling={"name": "timescale", "unit": "steps"}), "scaling.unit='steps' is not allowed"),
    (dict(scaling={"name": "timescale", "tau": -1}), r"scaling.tau=-1.0 must be > 0"),
])
def test_bad_timescale_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(_timescale_cfg(**overrides))
    assert "\n" not in str(err.value)
