"""The record the loop writes is exactly the typed schema of bench.record (and analysis reads it)."""

from __future__ import annotations

import json
import stat

import types
import typing

from bench.config import from_dict
from bench.record import (Convergence, EvalRow, Experiment, Environment, Replica, RunRecord,
                          Timings, curvature_row_keys, keys_of)
from bench.core.loop import run
from conftest import small_config

CURVATURE = {"metrics": {"hessian": True, "every": 10, "subset_size": 128, "chunk_size": 64,
                         "lanczos_iters": 5, "power_iters": 2, "hutchinson_probes": 2,
                         "density": False, "sharpness": False, "noise_num_small": 2,
                         "noise_small_batch": 16}}


def test_written_record_has_exactly_the_typed_keys(tmp_path):
    (returned,) = run(small_config(budget="20steps", **CURVATURE), tmp_path)
    record = json.loads((tmp_path / "record_r0.json").read_text())
    assert list(record) == list(keys_of(RunRecord))
    for key, schema in (("replica", Replica), ("experiment", Experiment), ("convergence", Convergence),
                        ("timings", Timings), ("environment", Environment)):
        assert set(record[key]) == set(keys_of(schema)), key
    curvature_keys = set(record["curvature"])
    declared = curvature_row_keys(from_dict(record["config"]).metrics)
    assert curvature_keys <= set(declared), curvature_keys - set(declared)
    for key in curvature_keys:
        assert _has_type(record["curvature"][key], declared[key]), key
    for row in record["history"]:
        assert set(keys_of(EvalRow)) <= set(row)
        assert set(row) - set(keys_of(EvalRow)) in (set(), curvature_keys)  # measured rows: + curvature
    assert record["final"] == record["history"][-1]
    assert returned["config_hash"] == record["config_hash"] and record["run_id"].startswith(record["config_hash"])
    assert len(record["experiment"]["data_sha256"]) == 64


def test_records_respect_the_umask(tmp_path):
    """Group members read results on a shared filesystem (not 0600 like mkstemp)."""
    run(small_config(budget="5steps"), tmp_path)
    import os

    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "record_r0.json").stat().st_mode)
    assert mode == 0o666 & ~umask


def _has_type(value, tp) -> bool:
    """``value`` (as read from JSON) is of the declared record type (float | None, list[...], ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)
