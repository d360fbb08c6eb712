"""bench.core.checkpoint: bit-identical round trips, retention, sharded restore, JSON extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.core.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]


def _state() -> dict:
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "dense": {"w": jax.random.normal(k1, (4, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)},
        "head": {"w": jax.random.normal(k2, (3, 2), jnp.float32)},
    }
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    opt_state = tx.init(params)
    # one real update so the momentum trace is non-zero
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(17, jnp.int32),
        "examples": jnp.asarray(17 * 64, jnp.int32),
        "key": jax.random.key(42),                                  # typed key (threefry)
        "replica_keys": jax.random.split(jax.random.key(7), 3),     # typed key array
        "rbg_key": jax.random.key(3, impl="rbg"),                   # another impl
        "raw_key": jax.random.key_data(jax.random.key(5)),          # raw uint32 key data
    }


def _assert_bit_identical(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_round_trip_bit_identical_with_optax_state_and_keys(tmp_path):
    state = _state()
    extra = {"history": [{"step": 10, "test_loss": 0.5, "nan_probe": float("nan")}],
             "epoch": 3, "permutation_seed": np.int64(11), "lr": np.float32(0.25)}
    with Checkpointer(tmp_path / "ckpt", every_steps=10) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(17, state, extra, force=True)
        ckpt.wait_until_finished()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                state)
        restored, got_extra = ckpt.restore(17, abstract)
    _assert_bit_identical(state, restored)
    # optax state comes back as the same namedtuple structure, usable by the optimizer
    assert type(restored["opt_state"]) is type(state["opt_state"])
    assert float(restored["opt_state"].hyperparams["momentum"]) == pytest.approx(0.9)
    # typed keys still behave as keys: same stream after restore
    np.testing.assert_array_equal(jax.random.uniform(restored["key"], (4,)),
                                  jax.random.uniform(state["key"], (4,)))
    # extra: JSON metadata, numpy scalars become Python values, NaN survives
    assert got_extra["epoch"] == 3 and got_extra["permutation_seed"] == 11
    assert got_extra["lr"] == 0.25
    assert got_extra["history"][0]["step"] == 10
    assert np.isnan(got_extra["history"][0]["nan_probe"])


def test_restore_onto_concrete_arrays_and_latest(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, every_steps=None) as ckpt:
        ckpt.save(3, state, {"a": 1}, force=True)
        ckpt.wait_until_finished()
        zeros = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                             else jnp.zeros_like(x), state)
        restored, extra = ckpt.restore(None, zeros)   # None: latest step
    _assert_bit_identical(state, restored)
    assert extra == {"a": 1}


def test_every_steps_latest_step_and_max_to_keep(tmp_path):
    state = {"w": jnp.arange(4.0)}
    ckpt = Checkpointer(tmp_path, every_steps=5, max_to_keep=2)
    written = [s for s in range(1, 23) if ckpt.save(s, {"w": state["w"] + s}, {"step": s})]
    ckpt.wait_until_finished()
    assert written == [5, 10, 15, 20]
    assert ckpt.latest_step() == 20
    assert ckpt.all_steps() == [15, 20]                  # older ones deleted
    # a forced (preemption) save off the interval is written and becomes the latest
    assert ckpt.save(22, {"w": state["w"] + 22}, {"step": 22}, force=True)
    # saving an already-saved step is a no-op, not an error (periodic + forced at one step)
    assert not ckpt.save(22, {"w": state["w"]}, {"step": -1}, force=True)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 22 and ckpt.all_steps() == [20, 22]
    restored, extra = ckpt.restore(22, state)
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) + 22)
    assert extra == {"step": 22}
    ckpt.close()
    # a new manager on the same directory (the requeued job) sees the same steps
    again = Checkpointer(tmp_path, every_steps=5, max_to_keep=2)
    assert again.latest_step() == 22
    again.close()


def test_every_steps_with_multi_step_calls(tmp_path):
    """A loop fusing 25 steps per call still saves once per 40-step interval."""
    with Checkpointer(tmp_path, every_steps=40, max_to_keep=10) as ckpt:
        written = [s for s in range(0, 201, 25) if ckpt.save(s, {"x": jnp.ones(2) * s}, {})]
        assert written == [50, 100, 125, 175, 200]
        assert ckpt.all_steps() == written


def test_every_steps_none_saves_only_forced(tmp_path):
    with Checkpointer(tmp_path, every_steps=None) as ckpt:
        assert not any(ckpt.save(s, {"x": jnp.ones(2)}, {}) for s in range(1, 10))
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError):
            ckpt.restore(None, {"x": jnp.ones(2)})


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from bench.core.checkpoint import Checkpointer

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    row = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    state = {
        "batch_like": jax.device_put(jnp.arange(32.0).reshape(8, 4), row),
        "params": jax.device_put(jnp.linspace(0.0, 1.0, 6, dtype=jnp.float32), rep),
        "key": jax.device_put(jax.random.key(1), rep),
    }
    ckpt = Checkpointer(sys.argv[1], every_steps=None)
    ckpt.save(1, state, {"mesh": list(mesh.shape.items())}, force=True)
    ckpt.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, extra = ckpt.restore(1, abstract)
    # restoring onto a different (replicated) layout is honoured too
    replicated = {**abstract, "batch_like": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=rep)}
    as_rep, _ = ckpt.restore(1, replicated)
    ckpt.close()
    out = {
        "row_sharding_kept": restored["batch_like"].sharding == row,
        "rep_sharding_kept": restored["params"].sharding == rep,
        "key_sharding_kept": restored["key"].sharding == rep,
        "shards": sorted(s.data.shape[0] for s in restored["batch_like"].addressable_shards),
        "values_equal": bool(np.array_equal(restored["batch_like"], state["batch_like"])
                             and np.array_equal(restored["params"], state["params"])
                             and np.array_equal(jax.random.key_data(restored["key"]),
                                                jax.random.key_data(state["key"]))),
        "relayout_sharding": as_rep["batch_like"].sharding == rep,
        "relayout_equal": bool(np.array_equal(as_rep["batch_like"], state["batch_like"])),
        "extra": extra,
    }
    print("RESULT" + json.dumps(out))
""")


def test_sharded_restore_keeps_sharding_on_4_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "ckpt")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["row_sharding_kept"] and out["rep_sharding_kept"] and out["key_sharding_kept"]
    assert out["shards"] == [2, 2, 2, 2]          # 8 rows over 4 devices
    assert out["values_equal"]
    assert out["relayout_sharding"] and out["relayout_equal"]
    assert out["extra"] == {"mesh": [["data", 4]]}


# ---------------------------------------------------------------- damaged checkpoints


def _two_steps(directory: Path) -> tuple[dict, dict]:
    """Steps 10 and 20 of two different states; returns them."""
    first = _state()
    second = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x + 1,
                          first)
    with Checkpointer(directory, every_steps=None, max_to_keep=5) as ckpt:
        ckpt.save(10, first, {"at": 10}, force=True)
        ckpt.save(20, second, {"at": 20}, force=True)
    return first, second


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "sha256.json"),
               key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "unsealed"])
def test_a_damaged_newest_step_falls_back_to_the_previous_verified_one(tmp_path, capsys, damage):
    """Flipped bytes (same size), a truncated or deleted file, or no checksum (killed after
    orbax's commit) in the newest step: it is moved aside with a message naming what is
    wrong, and the previous step is restored bit for bit -- never the damaged one."""
    first, _ = _two_steps(tmp_path / "ckpt")
    step_dir = tmp_path / "ckpt" / "20"
    victim = _largest_file(step_dir)
    data = victim.read_bytes()
    if damage == "flip":
        middle = len(data) // 2
        victim.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        victim.unlink()
    else:
        (step_dir / "sha256.json").unlink()
    capsys.readouterr()
    ckpt = Checkpointer(tmp_path / "ckpt", every_steps=None)
    err = capsys.readouterr().err
    assert ckpt.latest_step() == 10 and list(ckpt.rejected) == [20]
    assert "checkpoint step 20 rejected: " in err and "resuming from step 10" in err
    assert not step_dir.exists() and len(list((tmp_path / "ckpt.rejected").iterdir())) == 1
    state, extra = ckpt.restore(None, first)
    _assert_bit_identical(state, first)
    assert extra == {"at": 10}
    ckpt.close()


def test_intact_steps_verify_and_a_rerun_keeps_them(tmp_path, capsys):
    _, second = _two_steps(tmp_path / "ckpt")
    with Checkpointer(tmp_path / "ckpt", every_steps=None) as ckpt:
        assert ckpt.all_steps() == [10, 20] and ckpt.rejected == {}
        _assert_bit_identical(ckpt.restore(None, second)[0], second)
    assert "rejected" not in capsys.readouterr().err


def test_a_step_that_cannot_be_restored_stops_with_one_line(tmp_path):
    """A verified step restored onto another state's structure (another model): one
    CheckpointError line naming the step instead of an orbax traceback."""
    from bench.core.checkpoint import CheckpointError

    with Checkpointer(tmp_path / "ckpt", every_steps=None) as ckpt:
        ckpt.save(10, _state(), {"at": 10}, force=True)
    ckpt = Checkpointer(tmp_path / "ckpt", every_steps=None)
    with pytest.raises(CheckpointError, match="checkpoint step 10 .* cannot be restored") as info:
        ckpt.restore(None, {"other": jnp.zeros((5, 5))})
    assert "\n" not in str(info.value)
    ckpt.close()
