"""Benchmark: curvature at gradient cost, per model family.

    python -m bench.perf.curvature [--models mlp,cnn,cnn2d,resnet] [--repeats 7] [--suite-repeats 3]
    python -m bench.perf.curvature --models transformer   # not in the default list: ~25 min on 2 cores

For each model, on the curvature subset and chunking of the default ``metrics.hessian=true``
settings (the model at initialization, eval mode), prints one line

    <model>: gradient <ms> ms, HVP <ms> ms, HVP = <ratio> gradients, default suite <s> s

- gradient: one full-subset gradient, chunked and formulated as the curvature code runs it;
- HVP: one full-subset Hessian-vector product, the same way; gradient and HVP calls alternate
  and each is the median of ``--repeats`` (the ratio is the median of the paired ratios);
- default suite: one ``metrics.hessian=true`` measurement with every estimator at its default
  settings (``CurvatureProbe.measure``, as training calls it), median of ``--suite-repeats``.

Compile time (first call minus the steady-state median) is printed apart on its own line, and
with ``--breakdown`` (default on) each estimator's time per HVP (or per gradient) in gradients,
including the measures that are off by default: batch sharpness (one gradient + one HVP per
minibatch of ``--batch-size``) and Adam's preconditioned sharpness (Lanczos iterations + k HVPs
of the transformed operator).
An HVP measured below one gradient is physically implausible and flagged as a bug. The load
average is printed before and after each model; with load above the core count the ratios are
still paired but absolute times are inflated.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from bench.metrics import hessian as hs
from bench.metrics.batch_sharpness import batch_sharpness
from bench.metrics.preconditioned import preconditioned_top_eigenvalues
from bench.metrics import noise_scale as ns
from bench.metrics.curvature import measure
from bench.metrics.noise_tracking import KEY_NOISE
from bench.metrics.operator import HessianOperator
from bench.metrics.sharpness import keskar_sharpness
from bench.metrics.probe import CurvatureProbe

# Model name -> command-line overrides (image-shaped digits 8x8 for the 2-D models).
MODELS: dict[str, tuple[str, ...]] = {
    "mlp": ("model=mlp",),
    "cnn": ("model=cnn",),  # the default experiment: MNIST-1D, Greydanus' 1-D CNN
    "cnn2d": ("model=cnn", "dataset=digits"),
    "resnet": ("model=resnet", "dataset=digits"),
    # ~1M parameters; the default 10,000-sequence subset (1.3M tokens) would take minutes per
    # gradient on CPU, so 16 sequences (2,048 tokens), in chunks of 8.
    "transformer": ("model=transformer", "dataset=markov", "metrics.subset_size=16", "metrics.chunk_size=8"),
}
DEFAULT_MODELS = ("mlp", "cnn", "cnn2d", "resnet")


@dataclasses.dataclass
class Problem:
    probe: CurvatureProbe  # the job's probe: what training measures with
    state: Any  # params / stats with a leading replica axis
    lr: float
    description: str


def build_problem(model: str, *, convs: str = "lax", train_steps: int = 0) -> Problem:
    """The one use of the core: the default job for ``model`` with ``metrics.hessian=true``,
    its curvature probe and its initial (optionally trained) state."""
    from bench.hydra_conf import compose_config
    from bench.core.job import Job

    # No persistent compile cache: compile times are measured, not read from disk.
    cfg = compose_config([*MODELS[model], "metrics.hessian=true", "logger=none", "progress=false",
                          "compile_cache_dir=null"])
    job = Job(cfg)
    probe = CurvatureProbe(cfg.metrics, job.fns, job.data.x_train, job.data.y_train,
                           [jax.random.PRNGKey(0)], job.mesh, convs=convs)  # type: ignore[arg-type]
    state = job.init_state()
    if train_steps:
        state, _ = job.train(state, 0, train_steps)
    num_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(state.params))
    desc = (f"{cfg.model.name} on {cfg.dataset.name} {tuple(job.data.x_train.shape[1:])}, {num_params} params, "
            f"{train_steps} training steps")
    return Problem(probe, state, float(job.replicas[0].peak_lr), desc)


def _grad_on_batch(loss: Any, params: Any, batch: dict) -> Any:
    return jax.grad(loss)(params, batch)


def _program_flops(fn: Callable, *args: Any) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def chunk_flops(op: HessianOperator, hoisted: HessianOperator, v: jax.Array) -> dict[str, float]:
    """XLA's FLOP counts for one chunk (parameters, data and v as arguments): a gradient, an HVP
    from scratch (jvp of grad) and, when hoisted, the tangent pass alone (the primal pass runs
    once per measurement, so a hoisted HVP may cost less than a gradient)."""
    from bench.metrics.operator import _chunking, _hvp_flat_on_batch, _take

    chunk, q, _ = _chunking(hs.num_examples(op.data), op.chunk_size)
    batch = _take(op.data, 0, chunk, q) if q else op.data
    out = {"gradient": _program_flops(_grad_on_batch, op.loss, op.params, batch),
           "hvp from scratch": _program_flops(_hvp_flat_on_batch, op.loss, op.params, batch, v)}
    if hoisted.linear is not None and hoisted.linear.main:
        out["hoisted hvp"] = _program_flops(lambda linear, v: linear(v), hoisted.linear.main[0], v)
    return out


def plausibility(name: str, seconds: dict[str, float], flops: dict[str, float]) -> list[str]:
    """Lines on HVP timings (``seconds`` per call of "gradient", "hvp from scratch", "hoisted hvp")
    that a reader must not take at face value. An HVP from scratch contains a whole gradient, so
    measured below one it is a measurement bug. A hoisted HVP is the tangent pass alone: below one
    gradient is possible when it runs at a higher FLOP rate (shown) than the gradient does."""
    g, lines = seconds["gradient"], []
    rate = {k: flops[k] / t / 1e9 for k, t in seconds.items() if k in flops and t > 0}
    if seconds.get("hvp from scratch", g) < g:
        lines.append(f"{name}: IMPLAUSIBLE: an HVP from scratch measured at {seconds['hvp from scratch'] / g:.2f} "
                     "gradients: it contains a gradient, so this is a measurement bug, not a result")
    if seconds.get("hoisted hvp", g) < g:
        lines.append(f"{name}: note: the hoisted HVP measured below one gradient "
                     f"({seconds['hoisted hvp'] / g:.2f}): its tangent pass has {flops['hoisted hvp'] / flops['gradient']:.2f} "
                     f"gradients of FLOPs at {rate['hoisted hvp']:.0f} GFLOP/s vs the gradient's {rate['gradient']:.0f} "
                     "GFLOP/s (primal pass once per measurement); check before quoting it")
    return lines


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def paired(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """First-call seconds, then ``repeats`` rounds alternating the calls: (first, median, all)."""
    first = {k: _timed(f) for k, f in fns.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(_timed(f))
    return first, {k: statistics.median(v) for k, v in times.items()}, times


def spread(values: list[float]) -> float:
    """(max - min) / median of the middle half: how far repeats disagree."""
    v = sorted(values)
    q = v[len(v) // 4 : len(v) - len(v) // 4] or v
    return (q[-1] - q[0]) / statistics.median(v)


def compile_time(first: float, repeats: list[float]) -> str:
    """First call minus the median of the repeats, or, when that difference is within the
    repeats' own spread (a loaded machine), an upper bound instead of a number made of noise."""
    if not repeats or first != first:
        return "n/a"
    med = statistics.median(repeats)
    noise = (max(repeats) - min(repeats)) if len(repeats) > 1 else 0.0
    if first - med <= noise:
        return f"unresolved (< {max(first - med, 0) + noise:.2f} s: within the repeats' spread)"
    return f"{first - med:.2f} s"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def bench_model(name: str, args: argparse.Namespace) -> None:
    prob = build_problem(name, convs=args.convs, train_steps=args.train_steps)
    probe, cfg = prob.probe, prob.probe.cfg
    op = probe.operator(prob.state, 0, rolled=args.rolled)
    n = hs.num_examples(op.data)
    print(f"\n{name}: {prob.description}; subset {n}, chunk {cfg.chunk_size}, "
          f"{'rolled lax loops' if op.rolled else 'host-driven loops'}, convs={probe.convs} ({load()})", flush=True)
    flat = ravel_pytree(op.params)[0]
    v = jax.random.normal(jax.random.PRNGKey(1), flat.shape, flat.dtype)
    t0 = time.perf_counter()
    hoisted = op.hoisted()  # what the many-HVP estimators use (itself when rolled or over budget)
    t_hoist = time.perf_counter() - t0
    calls: dict[str, Callable[[], Any]] = {
        "gradient": lambda: op.mean(_grad_on_batch, op.params),
        "hvp": lambda: hoisted.matvec(v),
    }
    if hoisted.linear is not None:
        calls["hvp from scratch"] = lambda: op.matvec(v)
        print(f"{name}: HVPs hoisted, residuals {hoisted.linear.nbytes / 1e6:.0f} MB "
              f"(linearize: {t_hoist:.2f} s incl. compile)")
    else:
        print(f"{name}: HVPs not hoisted ({'rolled loops' if op.rolled else 'residuals over the memory budget'})")
    if op.rolled:  # one program per call, as the rolled estimators run them
        calls = {"gradient": _jit_call(lambda o: o.mean(_grad_on_batch, o.params), op),
                 "hvp": _jit_call(lambda o, v: o.matvec(v), op, v)}
    first, med, times = paired(calls, args.repeats)
    ratios = [h / g for g, h in zip(times["gradient"], times["hvp"])]
    ratio = statistics.median(ratios)

    params, stats = probe.replica(prob.state, 0)

    def suite() -> dict:  # what CurvatureProbe.measure runs at each measurement
        return measure(cfg, probe.loss_fn(params, stats), params, probe.data, probe.keys[0], lr=prob.lr,
                       rolled=args.rolled)[0]

    suite_first = _timed(suite) if args.suite else float("nan")
    suite_times = [_timed(suite) for _ in range(args.suite_repeats if args.suite else 0)]
    suite_med = statistics.median(suite_times) if suite_times else suite_first
    print(f"{name}: gradient {med['gradient'] * 1e3:.1f} ms, HVP {med['hvp'] * 1e3:.1f} ms, "
          f"HVP = {ratio:.2f} gradients, default suite {suite_med:.1f} s", flush=True)
    print(f"{name} compile: gradient {compile_time(first['gradient'], times['gradient'])}, "
          f"HVP {compile_time(first['hvp'], times['hvp'])}, default suite {compile_time(suite_first, suite_times)} "
          "(first call minus steady state)")
    print(f"{name} spread of repeats: gradient {spread(times['gradient']):.0%}, HVP {spread(times['hvp']):.0%}, "
          f"ratio {spread(ratios):.0%}, suite {spread(suite_times) if len(suite_times) > 1 else float('nan'):.0%} "
          f"({args.repeats} and {args.suite_repeats} repeats; {load()})")
    flops = chunk_flops(op, hoisted, v)
    print(f"{name} compiled FLOPs per chunk, in gradients: HVP from scratch "
          f"{flops['hvp from scratch'] / flops['gradient']:.2f}"
          + (f", hoisted HVP (tangent pass) {flops['hoisted hvp'] / flops['gradient']:.2f}" if "hoisted hvp" in flops else ""))
    share = min(cfg.chunk_size or n, n) / n  # FLOPs are per chunk: time per chunk's worth of examples
    per_chunk = {"gradient": med["gradient"] * share,
                 "hoisted hvp" if hoisted.linear is not None else "hvp from scratch": med["hvp"] * share}
    if "hvp from scratch" in med:
        per_chunk["hvp from scratch"] = med["hvp from scratch"] * share
        scratch = statistics.median(h / g for g, h in zip(times["gradient"], times["hvp from scratch"]))
        print(f"{name} HVP from scratch (not hoisted): {med['hvp from scratch'] * 1e3:.1f} ms = {scratch:.2f} gradients")
    for line in plausibility(name, per_chunk, flops):
        print(line)
    if args.breakdown:
        breakdown(name, op, probe, args)


def _jit_call(fn: Callable, *args: Any) -> Callable[[], Any]:
    jitted = jax.jit(fn)
    return lambda: jitted(*args)


def breakdown(name: str, op: HessianOperator, probe: CurvatureProbe, args: argparse.Namespace) -> None:
    """Each estimator of the default suite alone (compiled first): seconds, HVPs, cost per HVP."""
    cfg, key, r = probe.cfg, jax.random.PRNGKey(2), args.rolled
    loss, params, data, chunk = op.loss, op.params, op.data, op.chunk_size
    m = cfg.lanczos_iters
    runs: dict[str, tuple[Callable[[], Any], float, str]] = {
        "Lanczos": (lambda: hs.lanczos_top_eigenvalues(loss, params, data, key, k=cfg.top_k, num_iters=m,
                                                      chunk_size=chunk, rolled=r), m + cfg.top_k, "HVP"),
        # tol=0: exactly num_iters iterations (float32 never meets the default 1e-6 anyway)
        "power iteration": (lambda: hs.power_iteration_top_eigenvalue(
            loss, params, data, key, num_iters=cfg.power_iters, tol=0.0, chunk_size=chunk, rolled=r),
            cfg.power_iters + 2, "HVP"),
        "Hutchinson": (lambda: hs.hutchinson_trace(loss, params, data, key, num_probes=cfg.hutchinson_probes,
                                                   chunk_size=chunk, rolled=r), cfg.hutchinson_probes, "HVP"),
        "SLQ": (lambda: hs.slq_ritz(loss, params, data, key, num_probes=cfg.slq_probes, num_iters=m,
                                    chunk_size=chunk, rolled=r), cfg.slq_probes * m, "HVP"),
    }
    evals: list[int] = []

    def sharp() -> float:
        res = keskar_sharpness(loss, params, data, key, eps=float(cfg.sharpness_eps[0]), max_iter=cfg.sharpness_iters,
                               chunk_size=chunk, rolled=r)
        evals.append(res.evaluations)
        return res.phi

    def noise() -> Any:
        return ns.gradient_noise_scale(loss, params, probe.data, jax.random.fold_in(key, KEY_NOISE),
                                       small_batch=cfg.noise_small_batch, num_small=cfg.noise_num_small)

    grad = lambda: op.mean(_grad_on_batch, op.params)  # noqa: E731

    def cost(fn: Callable[[], Any]) -> tuple[float, float]:
        """(median seconds of ``fn``, median of its time over the median of 3 gradients timed
        just before and 3 just after it): paired, so load that comes and goes hits both alike."""
        _timed(fn)
        secs, rel = [], []
        for _ in range(args.breakdown_repeats):
            before = [_timed(grad) for _ in range(3)]
            t = _timed(fn)
            beside = statistics.median(before + [_timed(grad) for _ in range(3)])
            secs.append(t)
            rel.append(t / beside)
        return statistics.median(secs), statistics.median(rel)

    print(f"{name} breakdown (compile excluded; each estimator alone, median of {args.breakdown_repeats}, "
          f"in gradients timed beside it):")
    for label, (fn, count, unit) in runs.items():
        t, grads = cost(fn)
        flag = "  IMPLAUSIBLE (below one gradient per HVP)" if grads / count < 1 else ""
        print(f"  {label:16s} {t:7.2f} s  {count:4d} {unit}s  {t / count * 1e3:7.1f} ms per {unit} = "
              f"{grads / count:.2f} gradients{flag}")
    t, grads = cost(sharp)
    print(f"  {'sharpness (full)':16s} {t:7.2f} s  {evals[-1]:4d} gradients {t / evals[-1] * 1e3:7.1f} ms per gradient = "
          f"{grads / evals[-1]:.2f} gradients (incl. L-BFGS-B on the host)")
    t, grads = cost(noise)
    examples = cfg.noise_num_small * cfg.noise_small_batch
    print(f"  {'noise scale':16s} {t:7.2f} s  {cfg.noise_num_small} gradients of {cfg.noise_small_batch} examples = "
          f"{grads:.2f} subset gradients ({examples} of {hs.num_examples(data)} examples)")
    # Issue 15's measures (off by default): their cost at the sizes a run would use.
    num, size = cfg.batch_sharpness_batches or 20, min(args.batch_size, hs.num_examples(data))
    t, grads = cost(lambda: batch_sharpness(loss, params, data, key, batch_size=size, num_batches=num))
    print(f"  {'batch sharpness':16s} {t:7.2f} s  {num:4d} minibatches of {size}, each 1 gradient + 1 HVP = "
          f"{grads:.2f} subset gradients ({num * size} examples seen)")
    # an Adam-like preconditioner (sqrt of squared gradients + eps): the cost does not depend on its values
    g = op.mean(_grad_on_batch, params)
    pre = jax.tree.map(lambda x: jnp.sqrt(x * x) + 1e-8, g)
    t, grads = cost(lambda: preconditioned_top_eigenvalues(loss, params, data, key, pre, k=cfg.top_k,
                                                           num_iters=m, chunk_size=chunk, rolled=r))
    print(f"  {'preconditioned':16s} {t:7.2f} s  {m + cfg.top_k:4d} HVPs  {t / (m + cfg.top_k) * 1e3:7.1f} ms per HVP = "
          f"{grads / (m + cfg.top_k):.2f} gradients (Lanczos on P^-1/2 H P^-1/2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=7, help="paired gradient/HVP rounds")
    ap.add_argument("--batch-size", type=int, default=32, help="minibatch size for the batch-sharpness cost")
    ap.add_argument("--suite-repeats", type=int, default=3, help="steady-state default-suite measurements")
    ap.add_argument("--breakdown-repeats", type=int, default=1, help="runs of each estimator alone")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    ap.add_argument("--no-suite", dest="suite", action="store_false", help="skip the default-suite timing")
    ap.add_argument("--convs", choices=("lax", "matmul"), default="lax",
                    help="curvature convolutions: the model's own (lax, the probe's default) or im2col + matmul")
    ap.add_argument("--loops", choices=("auto", "rolled", "host"), default="auto",
                    help="loop style (auto: host-driven on CPU, rolled lax loops elsewhere)")
    ap.add_argument("--train-steps", type=int, default=0, help="train this many steps before measuring")
    args = ap.parse_args()
    args.rolled = None if args.loops == "auto" else args.loops == "rolled"
    print(f"jax {jax.__version__}, devices {jax.devices()}; {load()}")
    for name in args.models.split(","):
        bench_model(name, args)
        print(f"({load()})")


if __name__ == "__main__":
    main()
