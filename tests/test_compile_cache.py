"""The persistent compilation cache: a second identical run loads every program, same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.core import compile_cache
from conftest import REPO

QUICK = ["dataset=synthetic", "dataset.synthetic_train=256", "dataset.synthetic_test=128",
         "model=mlp", "model.hidden=[16]", "budget=10steps", "eval.every_steps=5", "logger=none",
         "progress=false"]


def _train(out, *args: str, env_extra: dict[str, str]) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **env_extra}
    proc = subprocess.run([sys.executable, "-m", "bench.train", *QUICK, f"output_dir={out}", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "record_r0.json").read_text())


def test_second_run_hits_the_cache_for_every_program_and_gives_the_same_record(tmp_path):
    cache = tmp_path / "cache"
    env = {compile_cache.ENV_VAR: str(cache)}
    cold = _train(tmp_path / "a", env_extra=env)
    warm = _train(tmp_path / "b", env_extra=env)
    assert cold["environment"]["compile_cache"]["dir"] == str(cache)
    assert cold["environment"]["compile_cache"]["atomic_writes"] is True
    assert cold["environment"]["compile_cache"]["hits"] == 0
    assert cold["environment"]["compile_cache"]["misses"] >= 3      # init, train, two evals
    assert warm["environment"]["compile_cache"]["misses"] == 0
    assert warm["environment"]["compile_cache"]["hits"] == cold["environment"]["compile_cache"]["misses"]
    assert warm["history"] == [{**r, "train_seconds": w["train_seconds"]}
                               for r, w in zip(cold["history"], warm["history"])]
    entries = [p.name for p in cache.iterdir()]
    assert entries and not [n for n in entries if n.endswith(".tmp")]   # whole entries only


def test_null_disables_the_cache(tmp_path):
    record = _train(tmp_path / "a", "compile_cache_dir=null", env_extra={})
    assert record["environment"]["compile_cache"]["dir"] is None
    assert record["environment"]["compile_cache"]["hits"] == 0


def test_atomic_put_writes_whole_entries_and_never_replaces_one(tmp_path):
    from jax._src import compilation_cache as cc

    compile_cache._install_atomic_writes()
    cache, _ = cc.get_file_cache(str(tmp_path))
    assert type(cache).__name__ == "AtomicLRUCache"
    cache.put("k", b"first")
    cache.put("k", b"second")               # an existing entry stays (JAX's rule)
    assert cache.get("k") == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k-cache"]


def test_resolve_auto_uses_the_environment_variable_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "x"))
    assert compile_cache.resolve("auto") == str(tmp_path / "x")
    monkeypatch.delenv(compile_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.resolve("auto") == str(tmp_path / "batch-bench" / "jax-compile")
    assert compile_cache.resolve(None) is None and compile_cache.resolve("/c") == "/c"
