"""The accelerator check runs every path (both models, training step, HVP cost, memory) on
CPU-sized stand-ins; its numbers are checked for presence and, on constructed values, its
plausibility flags (no speed is asserted)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bench.perf import device_check as dc


def check(tmp_path, models: str) -> list[str]:
    out = tmp_path / "check.md"
    assert dc.main(["--tiny", "--models", models, "--dtypes", "float32", "--batch-sizes", "2",
                    "--steps", "1", "--warmup", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines()
            if line.startswith(("| transformer", "| resnet50"))]
    assert len(rows) == len(models.split(","))
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "Error" not in row and float(cells[1].replace(",", "")) > 0  # examples/s
        # timings of tiny programs on a shared CPU are noise: their presence is checked, not
        # their size (the plausibility flags are tested on constructed numbers below)
        assert float(cells[6]) > 0 and int(cells[5].replace(",", "")) > 0
        assert "non-finite" not in cells[7]
    return rows


def test_tiny_check_of_the_transformer(tmp_path):
    check(tmp_path, "transformer")


@pytest.mark.slow  # ResNet-50's compile takes ~30 s on 2 cores
def test_tiny_check_runs_every_path(tmp_path):
    rows = check(tmp_path, "transformer,resnet50")
    assert rows[1].startswith("| resnet50")


def test_flops_and_mfu_against_a_matmul():
    """XLA's FLOP count for one [m, k] x [k, n] matmul is 2mkn; MFU divides by the peak given."""
    m, k, n = 64, 32, 16
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert dc.flops(compiled) == 2 * m * k * n
    assert dc.peak_flops("float32", 2.0) == 2e12
    assert dc.memory_bytes(compiled) >= 4 * (m * k + k * n + m * n)


def test_implausible_numbers_are_flagged():
    case = dc.Case("transformer", "float32", 2, (8,), 16)
    line = dc.format_line(case, {"examples_per_s": 1.0, "tokens_per_s": 8.0, "mfu": 1.5, "compile_s": 1.0,
                                 "memory_bytes": 2**20, "hvp_over_gradient": 0.5, "loss_finite": True})
    assert "MFU > 1" in line and "HVP < 1 gradient" in line
