"""Benchmark honesty helpers (bench.perf.curvature): compile time only when it stands out of the
repeats' noise, and HVP timings that cannot be true are flagged."""

from __future__ import annotations

from bench.perf.curvature import compile_time, plausibility


def test_compile_time_is_a_number_only_outside_the_repeats_spread():
    assert compile_time(3.0, [1.0, 1.1, 0.9]) == "2.00 s"
    assert compile_time(1.1, [1.0, 1.3, 0.9]) == "unresolved (< 0.50 s: within the repeats' spread)"
    assert compile_time(0.5, [1.0, 1.3, 0.9]).startswith("unresolved (< 0.40 s")   # first call faster: noise
    assert compile_time(float("nan"), []) == "n/a"


def test_an_hvp_from_scratch_below_one_gradient_is_flagged_implausible():
    flops = {"gradient": 1e9, "hvp from scratch": 2.3e9, "hoisted hvp": 1.9e9}
    ok = plausibility("m", {"gradient": 1.0, "hvp from scratch": 2.2, "hoisted hvp": 1.8}, flops)
    assert ok == []
    (line,) = plausibility("m", {"gradient": 1.0, "hvp from scratch": 0.8}, flops)
    assert line.startswith("m: IMPLAUSIBLE: an HVP from scratch measured at 0.80 gradients")
    (note,) = plausibility("m", {"gradient": 1.0, "hvp from scratch": 2.0, "hoisted hvp": 0.9}, flops)
    assert note.startswith("m: note: the hoisted HVP measured below one gradient (0.90): its tangent "
                           "pass has 1.90 gradients of FLOPs at 2 GFLOP/s vs the gradient's 1 GFLOP/s")
