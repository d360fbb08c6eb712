"""One command for a first look at an accelerator: throughput, MFU, compile, HVP cost, memory.

    python -m bench.perf.device_check [--out docs/perf/device_check.md] [--budget-s 480]
    python -m bench.perf.device_check --tiny          # seconds on a CPU (what the test runs)

For the transformer (GPT-2 small, 124M parameters, context 1024, vocabulary 50257) and
ResNet-50 (224 x 224 x 3, 1000 classes), each in bfloat16 and float32 compute, at a few batch
sizes, one line per case:

- examples/s (and tokens/s for the LM): the median step time of ``--steps`` timed steps after
  ``--warmup`` untimed ones, each step synchronized (``block_until_ready``), compile apart;
- MFU: the compiled program's FLOPs per step (XLA's cost analysis) / step time / the device's
  peak (bf16: dense bf16 tensor-core peak; fp32: the TF32 tensor-core peak, since XLA runs
  float32 matmuls on GPUs in TF32 at the default precision); ``--peak-tflops`` overrides;
- compile seconds (lower + compile) of the training step;
- peak memory of the compiled step (arguments + outputs + temporaries - aliased buffers, from
  XLA's memory analysis), so memory vs batch size can be read off the lines of one model;
- HVP / gradient: one Hessian-vector product (forward over reverse) against one gradient over
  the same batch, both as rolled ``lax.map`` loops over chunks (how the curvature code runs on
  accelerators), median of paired calls.

Data are random tokens / images made on the device: this measures the device, not input.
A case that does not fit (out of memory) is reported as such and the next one runs; cases stop
being started once ``--budget-s`` is spent. An MFU above 1 or an HVP below one gradient is
physically implausible and is flagged on its line as a bug in the measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench.models import MODELS
from bench.core.step import ModelFns, split_model

# Dense (no sparsity) peak FLOP/s per device from NVIDIA's datasheets (SXM parts): bf16
# tensor-core and TF32 tensor-core. Matched on jax's ``device_kind``; anything else needs
# --peak-tflops for an MFU.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float32": 494.7e12},
    "H100": {"bfloat16": 989e12, "float32": 494.7e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


@dataclass(frozen=True)
class Case:
    model: str                     # registry name
    dtype: str
    batch_size: int
    input_shape: tuple[int, ...]
    num_classes: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def tokens_per_example(self) -> int | None:
        return self.input_shape[0] if self.model == "transformer" else None

    def label(self) -> str:
        return f"{self.model} {self.dtype} B={self.batch_size}"


def cases(tiny: bool, models: tuple[str, ...] = ("transformer", "resnet50"),
          dtypes: tuple[str, ...] = ("bfloat16", "float32"), batch_sizes: tuple[int, ...] | None = None) -> list[Case]:
    if tiny:  # CPU-sized stand-ins of the same code paths
        lm = dict(input_shape=(32,), num_classes=256, overrides=(("preset", "tiny"), ("d_model", 32),
                                                                  ("num_layers", 1), ("num_heads", 2)))
        cnn = dict(input_shape=(32, 32, 3), num_classes=10, overrides=(("width", 8), ("stages", (1, 1, 1, 1))))
        sizes_lm, sizes_cnn = (2, 4), (2, 4)
    else:
        lm = dict(input_shape=(1024,), num_classes=50257, overrides=(("preset", "gpt2_small"),))
        cnn = dict(input_shape=(224, 224, 3), num_classes=1000)
        sizes_lm, sizes_cnn = (8, 16, 32), (64, 128, 256)
    settings = {"transformer": (lm, batch_sizes or sizes_lm), "resnet50": (cnn, batch_sizes or sizes_cnn)}
    return [Case(model, dtype, b, **settings[model][0])
            for dtype in dtypes for model in models for b in settings[model][1]]


def build(case: Case) -> tuple[ModelFns, Any, Any, optax.GradientTransformation]:
    section = MODELS.get(case.model)(**dict(case.overrides), dtype=case.dtype)
    model = section.build(case.input_shape, case.num_classes, nnx.Rngs(0))
    graphdef, params, stats = split_model(model)
    tx = optax.adamw(1e-4, weight_decay=0.1) if case.model == "transformer" else optax.sgd(0.1, momentum=0.9)
    return ModelFns(graphdef), params, stats, tx


def batch(case: Case, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(key)
    if case.model == "transformer":
        x = jax.random.randint(kx, (case.batch_size, *case.input_shape), 0, case.num_classes)
        return x, jnp.roll(x, -1, axis=1)
    return (jax.random.normal(kx, (case.batch_size, *case.input_shape)),
            jax.random.randint(ky, (case.batch_size,), 0, case.num_classes))


def train_step(fns: ModelFns, tx: optax.GradientTransformation) -> Callable:
    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, new_stats = fns.apply(p, stats, x, train=True)
            return fns.losses(logits, y).mean(), new_stats
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss
    return jax.jit(step, donate_argnums=(0, 1, 2))


def memory_bytes(compiled: Any) -> int | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def flops(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    value = (cost or {}).get("flops")
    return float(value) if value else None


def peak_flops(dtype: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def hvp_over_gradient(fns: ModelFns, params: Any, stats: Any, x: jax.Array, y: jax.Array,
                      chunks: int, repeats: int) -> float:
    """Median ratio of paired calls: one HVP / one gradient over the batch, rolled over chunks."""
    xs, ys = (a.reshape(chunks, a.shape[0] // chunks, *a.shape[1:]) for a in (x, y))

    def loss(p, xc, yc):
        logits, _ = fns.apply(p, stats, xc, train=False)
        return fns.losses(logits, yc).mean()

    def summed(per_chunk):
        return jax.tree.map(lambda a: a.sum(0), jax.lax.map(per_chunk, (xs, ys)))

    grad = jax.jit(lambda p: summed(lambda c: jax.grad(loss)(p, *c)))
    v = jax.tree.map(jnp.ones_like, params)
    hvp = jax.jit(lambda p, v: summed(lambda c: jax.jvp(lambda q: jax.grad(loss)(q, *c), (p,), (v,))[1]))
    jax.block_until_ready((grad(params), hvp(params, v)))  # compile both
    ratios = [_median_seconds(lambda: hvp(params, v), 1) / _median_seconds(lambda: grad(params), 1)
              for _ in range(repeats)]
    return statistics.median(ratios)


def run_case(case: Case, args: argparse.Namespace, measure_hvp: bool) -> dict[str, Any]:
    fns, params, stats, tx = build(case)
    opt_state = tx.init(params)
    x, y = batch(case, jax.random.key(1))
    step = train_step(fns, tx)
    t = time.perf_counter()
    compiled = step.lower(params, stats, opt_state, x, y).compile()
    out: dict[str, Any] = {"compile_s": time.perf_counter() - t, "memory_bytes": memory_bytes(compiled),
                           "flops_per_step": flops(compiled)}
    if measure_hvp:  # before the step donates these buffers
        out["hvp_over_gradient"] = hvp_over_gradient(fns, params, stats, x, y, args.hvp_chunks, args.repeats)
    state = (params, stats, opt_state)
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        *state, loss = compiled(*state, x, y)
        loss.block_until_ready()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    out["step_s"], out["examples_per_s"] = seconds, case.batch_size / seconds
    if case.tokens_per_example:
        out["tokens_per_s"] = out["examples_per_s"] * case.tokens_per_example
    peak = peak_flops(case.dtype, args.peak_tflops)
    out["mfu"] = out["flops_per_step"] / seconds / peak if peak and out["flops_per_step"] else None
    out["loss_finite"] = bool(jnp.isfinite(loss))
    return out


def format_line(case: Case, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {case.label()} | {r['error']} |||||||"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
    mem = f"{r['memory_bytes'] / 2**20:,.0f}" if r.get("memory_bytes") is not None else "n/a"
    tok = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else ""
    hvp = f"{r['hvp_over_gradient']:.2f}" if "hvp_over_gradient" in r else ""
    flags = [f for f, bad in (("MFU > 1: measurement bug", (r.get("mfu") or 0) > 1),
                              ("HVP < 1 gradient: measurement bug", 0 < r.get("hvp_over_gradient", 2) < 1),
                              ("non-finite loss", not r["loss_finite"])) if bad]
    return (f"| {case.label()} | {r['examples_per_s']:,.1f} | {tok} | {mfu} | {r['compile_s']:.1f} | "
            f"{mem} | {hvp} | {'; '.join(flags)} |")


HEADER = ("| case | examples/s | tokens/s | MFU | compile s | peak memory MiB | HVP / gradient | flags |\n"
          "|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.device_check", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU-sized models (a smoke test of every path)")
    p.add_argument("--models", default="transformer,resnet50")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default: per model)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="paired HVP / gradient calls")
    p.add_argument("--hvp-chunks", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=420.0, help="start no case after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: from PEAK_FLOPS)")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    start = time.perf_counter()
    dev = jax.devices()[0]
    lines = [f"device: {dev.device_kind} ({dev.platform}, {jax.device_count()} device(s)), jax {jax.__version__}",
             "", HEADER]
    print("\n".join(lines), flush=True)
    seen: set[tuple[str, str]] = set()
    sizes = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else None
    for case in cases(args.tiny, tuple(args.models.split(",")), tuple(args.dtypes.split(",")), sizes):
        if time.perf_counter() - start > args.budget_s:
            lines.append(f"| {case.label()} | skipped: --budget-s {args.budget_s:.0f} spent |||||||")
        else:
            first = (case.model, case.dtype) not in seen  # HVP cost once per model and dtype
            seen.add((case.model, case.dtype))
            try:
                lines.append(format_line(case, run_case(case, args, measure_hvp=first)))
            except Exception as e:  # one case out of memory must not end the check
                lines.append(format_line(case, {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}))
        print(lines[-1], flush=True)
    lines.append(f"\ntotal {time.perf_counter() - start:.0f} s")
    print(lines[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
