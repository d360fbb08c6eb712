"""parallel.deterministic_reduction: gradients summed over fixed blocks in one fixed tree, so
the bits do not depend on how the devices are spread over processes.

Without it, XLA's all-reduce sums the per-device partial gradients in an order that depends on
the topology (in-process vs gloo across processes); the default CNN at B = 128 then differs
in the last bit of every parameter after step 1 and by ~1e-2 after 200 steps (README
"Deterministic reduction")."""

from __future__ import annotations

import numpy as np
import pytest

from bench.config import from_dict, validate
from bench.schema import ConfigError

TINY = ["model=mlp", "model.hidden=[32]", "model.batch_norm=true", "model.ghost_batch_size=8",
        "model.dropout=0.1", "budget=200steps", "eval.every_steps=50", "steps_per_call=25",
        "batch_size=64", "logger=none", "progress=false", "replicas.lr=[0.05,0.1]",
        "save_params=true", "dataset=synthetic", "dataset.synthetic_train=512",
        "dataset.synthetic_test=256", "parallel.deterministic_reduction=true"]


def test_tree_sum_is_the_pairwise_tree():
    import jax.numpy as jnp

    from bench.core.parallel import tree_sum

    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal(7) * 10.0 ** rng.integers(-4, 4)).astype(np.float32) for _ in range(8)]
    pair = lambda a, b: (a + b).astype(np.float32)
    expected = pair(pair(pair(parts[0], parts[1]), pair(parts[2], parts[3])),
                    pair(pair(parts[4], parts[5]), pair(parts[6], parts[7])))
    got = np.asarray(tree_sum([{"w": jnp.asarray(p)} for p in parts])["w"])
    assert got.tobytes() == expected.tobytes()


def test_block_mean_of_a_function_on_one_device():
    """Every output is the mean over the blocks of the function of each block (float64 check)."""
    import jax
    import jax.numpy as jnp

    from bench.core.parallel import FixedOrderReduction, make_mesh

    def fn(params, stats, x, y, key):
        return jnp.mean(x * params), jnp.mean(y), {"g": jnp.sum(x, 0)}, stats

    x = np.random.default_rng(1).standard_normal((32, 3)).astype(np.float32)
    y = np.arange(32, dtype=np.float32)
    out = jax.jit(FixedOrderReduction(make_mesh(jax.devices()[:1]), 4)(fn))(
        jnp.float32(2.0), jnp.zeros(()), x, y, jax.random.PRNGKey(0))
    blocks = x.astype(np.float64).reshape(4, 8, 3)
    np.testing.assert_allclose(out[0], np.mean([np.mean(2 * b) for b in blocks]), rtol=1e-6)
    np.testing.assert_allclose(out[1], np.mean(y), rtol=1e-6)
    np.testing.assert_allclose(out[2]["g"], blocks.sum(1).mean(0), rtol=1e-5)


@pytest.mark.parametrize("keys, devices, message", [
    ({"parallel": {"reduction_blocks": 6}}, 4, "multiple of the device count"),
    ({"parallel": {"reduction_blocks": 3}, "batch_size": 64}, 1, "must divide the microbatch"),
    ({"model": {"name": "mlp", "batch_norm": True}}, 1, "model.ghost_batch_size"),
    ({"model": {"name": "mlp", "batch_norm": True, "ghost_batch_size": 16}, "batch_size": 64}, 1,
     "must divide each reduction block"),
])
def test_layouts_it_cannot_reduce_are_one_error(keys, devices, message):
    data = {**keys, "parallel": {"deterministic_reduction": True, **keys.get("parallel", {})}}
    with pytest.raises(ConfigError, match=message):
        validate(from_dict(data), num_devices=devices)


def test_batch_sizes_are_whole_blocks_of_ghost_batches():
    from bench.job_plan import plan_spec

    cfg = from_dict({"parallel": {"deterministic_reduction": True, "reduction_blocks": 4},
                     "model": {"name": "mlp", "batch_norm": True, "ghost_batch_size": 8},
                     "accumulate": 2, "batch_size": 64})
    assert plan_spec(cfg, num_devices=4).quantum == 2 * 4 * 8
    assert plan_spec(from_dict({}), num_devices=4).quantum == 4   # off: as before


def _results(rows: list[dict]) -> list[dict]:
    """Record rows without their wall-clock field."""
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]


def test_two_processes_bit_identical_to_one_over_200_steps(tmp_path):
    """2 processes x 2 devices vs 1 process x 4: every record value and every final parameter
    equal bit for bit over 200 steps (MLP [32] with ghost BatchNorm and dropout, B = 64, two
    replicas)."""
    from multiprocess import records, run

    run(1, 4, TINY, tmp_path / "one")
    run(2, 4, TINY, tmp_path / "two")
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["status"] == b["status"] == "finished"
        assert [r["step"] for r in a["history"]] == [0, 50, 100, 150, 200]
        assert _results(a["history"]) == _results(b["history"])
        assert _results([a["final"]]) == _results([b["final"]])
    for k in range(2):
        pa, pb = np.load(tmp_path / f"one/params_r{k}.npz"), np.load(tmp_path / f"two/params_r{k}.npz")
        for name in pa.files:
            assert pa[name].tobytes() == pb[name].tobytes(), name
