"""The language-model workload through the harness: token budgets and units, Adam rules that
follow the batch size, EWA evaluation, determinism, replicas, devices, a real learning run."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import optax
import pytest

from bench.config import ConfigError
from bench.job_plan import job_plan
from bench.core.job import Job
from bench.core.loop import run
from bench.metrics.convergence import convergence_summary
from conftest import run_python, small_config

LM = {"dataset": {"name": "markov", "context": 16, "markov_train": 256, "markov_test": 64},
      "model": {"name": "transformer", "num_layers": 1, "d_model": 32, "num_heads": 2},
      "optimizer": {"name": "adamw", "lr": 0.003}, "batch_size": 8, "budget": "1024tokens",
      "eval": {"every_steps": 4, "batch_size": 64}, "target": {"test_accuracy": None}}


def lm_config(**overrides):
    merged = {**LM}
    for key, value in overrides.items():
        same_option = isinstance(value, dict) and isinstance(merged.get(key), dict) and (
            value.get("name", merged[key].get("name")) == merged[key].get("name"))
        merged[key] = {**merged[key], **value} if same_option else value
    return small_config(**merged)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """The LM config trained once, shared by the tests that compare against it."""
    return run(lm_config(), tmp_path_factory.mktemp("base"))[0]


def _losses(record):
    return [row["test_loss"] for row in record["history"]]


def test_token_budget_rows_in_tokens_and_bits_per_byte(base_run):
    record = base_run
    assert record["experiment"]["tokens_per_example"] == 16
    assert record["experiment"]["total_steps"] == 1024 // (8 * 16)          # 8 steps
    for row in record["history"]:
        assert row["tokens"] == row["examples"] * 16
        assert row["test_bits_per_byte"] == pytest.approx(row["test_loss"] / math.log(2))
        assert row["train_bits_per_byte"] == pytest.approx(row["train_loss"] / math.log(2))
    provenance = record["experiment"]["data_provenance"]
    assert provenance["entropy_rate_nats"] > 0 and len(provenance["sha256"]) == 64
    assert record["history"][0]["test_loss"] == pytest.approx(math.log(256), abs=0.1)  # uniform init


def test_token_budget_needs_language_data():
    with pytest.raises(ConfigError, match="a budget in tokens needs a language dataset"):
        job_plan(small_config(budget="1000tokens"), 512)


def test_same_seed_gives_identical_records(tmp_path, base_run):
    again = run(lm_config(), tmp_path)[0]
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]  # noqa: E731
    assert strip(again["history"]) == strip(base_run["history"])


def test_beta2_half_life_is_the_b2_the_optimizer_uses():
    """Three harness steps equal a hand-written optax AdamW with b2 = 0.5 ** (B T / h) (h = B T:
    b2 = 0.5, far from the default 0.999, which the same comparison rejects)."""
    cfg = lm_config(optimizer={"beta2_half_life": 128.0, "weight_decay": 0.0}, budget="3steps",
                    eval={"every_steps": 3})
    job = Job(cfg)
    assert job.replicas[0].hyperparams == {"b1": 0.9, "b2": pytest.approx(0.5), "eps": 1e-8}
    state = job.init_state()
    params = jax.tree.map(lambda a: a[0], state.params)
    loss = job.fns.eval_loss_fn(jax.tree.map(lambda a: a[0], state.stats))
    lr = job.replicas[0].peak_lr
    idx = job.plan.indices(0, 3)[:, 0]
    for step in range(3):
        state, _ = job.train(state, step, 1)
    got = jax.tree.map(lambda a: a[0], state.params)

    def reference(b2):
        tx = optax.adamw(lambda t: lr * job.lr_multiplier(t), b1=0.9, b2=b2, eps=1e-8, weight_decay=0.0)
        p, opt = params, tx.init(params)
        for step in range(3):
            grads = jax.grad(loss)(p, {"x": job.data.x_train[idx[step]], "y": job.data.y_train[idx[step]]})
            updates, opt = tx.update(grads, opt, p)
            p = optax.apply_updates(p, updates)
        return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                   for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(got)))

    right, wrong = reference(0.5), reference(0.999)
    assert right < 1e-5 and wrong > 30 * right, (right, wrong)  # float round-off vs the wrong b2


def test_sde_rule_sets_lr_betas_and_eps_from_the_base_batch(tmp_path):
    cfg = lm_config(batch_size=32, scaling={"name": "sde", "base_batch_size": 8}, budget="2steps",
                    optimizer={"lr": 0.001, "b1": 0.9, "b2": 0.999, "eps": 1e-8})
    job = Job(cfg)
    (rep,) = job.replicas
    assert rep.peak_lr == pytest.approx(0.002)                       # sqrt(kappa = 4)
    assert rep.hyperparams == {"b1": pytest.approx(0.6), "b2": pytest.approx(0.996),
                               "eps": pytest.approx(5e-9)}


@pytest.mark.parametrize("overrides, message", [
    ({"scaling": {"name": "sde"}, "optimizer": {"name": "momentum", "lr": 0.1}},
     "scaling=sde scales Adam's b1, b2 and eps; use optimizer=adam|adamw|lamb"),
    ({"scaling": {"name": "sde"}, "optimizer": {"beta2_half_life": 1000.0}},
     "scaling=sde and optimizer.beta2_half_life both set b2; choose one rule"),
])
def test_impossible_combinations_are_one_line_errors(overrides, message):
    from bench.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(lm_config(**overrides))


def test_sde_rule_out_of_range_fails_before_compile():
    cfg = lm_config(batch_size=128, scaling={"name": "sde", "base_batch_size": 8},
                    dataset={"markov_train": 512}, budget="2steps")
    with pytest.raises(ConfigError, match=r"sde scaling: b1 = 0.9 at batch 8 gives b1 = -0.6 at batch"
                                          r" 128 \(kappa = 16\); the rule needs batch < 80"):
        Job(cfg)


def test_ewa_with_decay_zero_is_the_weights_themselves(tmp_path, base_run):
    ewa0 = run(lm_config(eval={"ewa_decay": 0.0}), tmp_path / "ewa0")[0]
    ewa = run(lm_config(eval={"ewa_decay": 0.5}), tmp_path / "ewa")[0]
    assert _losses(ewa0) == _losses(base_run)
    assert _losses(ewa)[0] == _losses(base_run)[0] and _losses(ewa)[1:] != _losses(base_run)[1:]


def test_steps_and_tokens_to_a_target_test_loss():
    rows = [{"step": s, "examples": 8 * s, "tokens": 128 * s, "train_seconds": s / 10,
             "test_loss": 3.0 - 0.1 * s, "test_accuracy": 0.1, "train_loss": 3.0} for s in range(10)]
    conv = convergence_summary(rows, target_test_accuracy=None, target_train_loss=None,
                               target_test_loss=2.45)
    assert (conv["steps_to_test_loss"], conv["tokens_to_test_loss"]) == (6, 768)
    assert conv["examples_to_test_loss"] == 48 and conv["seconds_to_test_loss"] == pytest.approx(0.6)


def test_transformer_replicas_equal_solo_runs(tmp_path, base_run):
    group = run(lm_config(replicas={"lr": [0.003, 0.001]}), tmp_path / "k2")
    solo = run(lm_config(optimizer={"lr": 0.001}), tmp_path / "solo")[0]
    np.testing.assert_allclose(_losses(group[0]), _losses(base_run), rtol=1e-5)   # lr 0.003
    np.testing.assert_allclose(_losses(group[1]), _losses(solo), rtol=1e-5)


def test_one_and_four_devices_agree(base_run):
    code = """
import json, sys
sys.path.insert(0, "tests")
from test_lm_workload import lm_config
from bench.core.loop import run
import tempfile
(r,) = run(lm_config(), tempfile.mkdtemp())
print(json.dumps([row["test_loss"] for row in r["history"]]))
"""
    four = run_python(code, devices=4)
    assert four.returncode == 0, four.stderr[-2000:]
    np.testing.assert_allclose(json.loads(four.stdout.splitlines()[-1]), _losses(base_run), rtol=1e-5)


def test_short_pydoc_run_goes_clearly_below_the_unigram_entropy(tmp_path):
    cfg = lm_config(dataset={"name": "pydoc", "context": 32}, batch_size=32, budget="120steps",
                    model={"num_layers": 2, "d_model": 64, "num_heads": 4},
                    optimizer={"lr": 0.003}, schedule={"name": "cosine", "warmup_steps": 10},
                    eval={"every_steps": 60, "batch_size": 512, "train_examples": 512})
    (record,) = run(cfg, tmp_path)
    unigram = record["experiment"]["data_provenance"]["train_unigram_entropy_nats"]
    # 120 steps end 0.27-0.3 nats below the unigram entropy depending on the CPU's float bits
    # (two instruction sets measured): a margin of 0.2 says "learned context", robustly
    assert record["final"]["test_loss"] < unigram - 0.2, (record["final"]["test_loss"], unigram)


def test_curvature_on_the_transformer_is_independent_of_the_sequence_chunking(tmp_path):
    """HVPs are chunked over sequences; the chunk size must not change the measured curvature."""
    metrics = {"hessian": True, "subset_size": 16, "lanczos_iters": 8, "power_iters": 0,
               "hutchinson_probes": 2, "density": False, "sharpness": False, "noise_scale": False}
    top = {}
    for chunk in (4, 16):
        (record,) = run(lm_config(budget="2steps", eval={"every_steps": 2},
                                  metrics={**metrics, "chunk_size": chunk}), tmp_path / str(chunk))
        top[chunk] = record["curvature"]
    assert top[4]["hessian_top_eigenvalue"] > 0
    assert top[4]["hessian_top_eigenvalue"] == pytest.approx(top[16]["hessian_top_eigenvalue"], rel=1e-4)
    assert top[4]["hessian_trace"] == pytest.approx(top[16]["hessian_trace"], rel=1e-4)
