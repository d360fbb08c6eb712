"""The parts loop.run builds: the evaluator against a from-scratch computation, the records as a
ledger that only receives rows, and the execution policy the parts consult."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from bench.core.source import InMemorySource, open_source
from bench.core.evaluator import Evaluation, Evaluator
from bench.core.job import Setup
from bench.core.program import TrainProgram
from bench.core.run_records import RunRecords
from conftest import small_config


@pytest.fixture(scope="module")
def built():
    # a test set of 250 in chunks of 96: the last chunk is padded, so the masks must count
    setup = Setup(small_config(replicas={"seeds": [0, 1, 2]}, eval={"batch_size": 96},
                               dataset={"synthetic_test": 250}))
    source = open_source(setup.data, setup.plan, setup.mesh, setup.cfg.eval, setup.cfg.dataset)
    return setup, source, TrainProgram(setup, source)


def test_evaluator_equals_a_whole_set_computation(built):
    setup, source, program = built
    assert isinstance(source, InMemorySource)
    state, _ = program(program.init_state(), 0, 3)
    ev = Evaluator(setup, source).metrics(state)
    for split, (x, y) in (("train", (setup.data.x_train, setup.data.y_train)),
                          ("test", (setup.data.x_test, setup.data.y_test))):
        for k in range(3):
            params, stats = jax.tree.map(lambda a: a[k], (state.params, state.stats))
            logits, _ = setup.fns.apply(params, stats, x, train=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            acc = (np.argmax(logits, -1) == y).mean()
            np.testing.assert_allclose(ev[f"{split}_loss"][k], loss, rtol=1e-5)
            np.testing.assert_allclose(ev[f"{split}_accuracy"][k], acc, rtol=1e-6)


def test_records_only_receive_rows_and_mark_divergence(built, tmp_path):
    setup, _, _ = built
    records = RunRecords(setup, tmp_path)
    good = {"train_loss": 1.0, "test_loss": 1.5, "step": 10, "batch_size": 64}
    rows = [dict(good), dict(good, test_loss=float("nan")), dict(good)]
    kept = records.add_evaluation(Evaluation(rows, np.array([True, True, False]), np.array([-1, -1, 7])), 10)
    assert list(kept) == [0] and records.records[0]["history"] == [good]
    assert [r["status"] for r in records.records] == ["running", "diverged", "diverged"]
    assert [r["diverged_at_step"] for r in records.records[1:]] == [10, 7]  # non-finite at 10; frozen at 7
    records.add_curvature({0: {"lambda_max": 3.0}}, kept, setup.plan.total_steps)
    assert kept[0]["lambda_max"] == 3.0 and records.records[0]["curvature"] == {"lambda_max": 3.0}


def test_the_policy_keeps_attention_models_scans_rolled():
    from bench.config import from_dict
    from bench.core.execution import ExecutionPolicy

    cpu = ExecutionPolicy.for_backend("cpu")
    transformer = from_dict({"model": {"name": "transformer"}}).model
    assert transformer.has_attention and cpu.scan_unroll(transformer.has_attention) == 1
    assert not small_config().model.has_attention and cpu.scan_unroll(False) is True
