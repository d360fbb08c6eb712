"""Generated datasets on disk (bench.data.disk_cache): a cached read is the generated arrays
bit for bit; a broken entry is made again; ``off`` writes nothing."""

from __future__ import annotations

import numpy as np

from bench.data import disk_cache
from bench.data.mnist1d import load_mnist1d


def _maker(calls: list[int]):
    def make() -> dict[str, np.ndarray]:
        calls.append(1)
        rng = np.random.default_rng(len(calls))
        return {"x": rng.normal(size=(5, 3)).astype(np.float32), "y": np.arange(5)}
    return make


def test_second_read_is_the_stored_arrays_and_a_broken_entry_is_remade(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENV_VAR, str(tmp_path))
    calls: list[int] = []
    first = disk_cache.cached_arrays("toy", {"v": 1}, _maker(calls))
    second = disk_cache.cached_arrays("toy", {"v": 1}, _maker(calls))
    assert len(calls) == 1
    for k in first:
        assert second[k].dtype == first[k].dtype and np.array_equal(second[k], first[k])
    [entry] = tmp_path.glob("toy-*.npz")
    assert not list(tmp_path.glob(".*.tmp"))
    disk_cache.cached_arrays("toy", {"v": 2}, _maker(calls))  # another key: another entry
    assert len(calls) == 2 and len(list(tmp_path.glob("toy-*.npz"))) == 2
    entry.write_bytes(entry.read_bytes()[:40])  # a truncated file, as a killed writer leaves
    again = disk_cache.cached_arrays("toy", {"v": 1}, _maker(calls))
    assert len(calls) == 3 and set(again) == {"x", "y"}


def test_off_makes_every_time_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENV_VAR, disk_cache.OFF)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[int] = []
    disk_cache.cached_arrays("toy", {}, _maker(calls))
    disk_cache.cached_arrays("toy", {}, _maker(calls))
    assert len(calls) == 2 and not list(tmp_path.rglob("*"))


def test_mnist1d_from_the_cache_equals_the_generated_split(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.ENV_VAR, str(tmp_path))
    generated = load_mnist1d()  # empty cache: generated, then stored
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    cached = load_mnist1d()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(generated, name), getattr(cached, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
