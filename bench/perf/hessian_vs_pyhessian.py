"""Top Hessian eigenvalue: bench.metrics.hessian (JAX) vs PyHessian (PyTorch), one run.

Trains a 40-100-100-10 ReLU MLP (Flax NNX) briefly on MNIST-1D with Adam, copies the
weights into an identical torch module (Linear weights transposed), and on the same
4,000 training examples (float32, full-data mean cross-entropy) prints:

1. eigenvalue agreement: our Lanczos top eigenvalue vs PyHessian's converged power
   iteration (relative difference), with our Lanczos residual;
2. steady-state wall time at EQUAL iteration counts (PyHessian's power iteration with tol=0
   runs exactly ``--iters`` HVPs; ours: Lanczos and power iteration with ``--iters`` HVPs);
   compile time apart;
3. the cost of one HVP and of one Lanczos iteration in units of one full-data gradient, run
   as the estimators run them (parameters and data are ARGUMENTS of the compiled programs, as
   in the real Lanczos: closed over as constants, XLA folds part of the work), with the
   compiled FLOPs of a gradient and an HVP; an HVP below one gradient is flagged implausible;
4. time to an eigenvalue within ``--rtol`` (1e-3, PyHessian's default tolerance) of the
   converged value, each library with its own algorithm (the fewest iterations that reach it
   and stay there, read off one long run of each): (a) one measurement end to end, compile
   included (JAX caches cleared first), and (b) amortized over ``--measurements`` measurements
   of a training run (compiled once, then reused);
5. each estimator's cost in HVPs (and gradients).

Timing: calls alternate between the compared programs round by round (load that comes and goes
hits both), each ends with ``block_until_ready``, and rounds repeat until the interquartile
spread of every compared call is within ``--stable`` of its median (at most ``--max-repeats``
rounds); medians are reported, and a comparison that never settles is marked UNRELIABLE.

Needs the ``[torch]`` extra (torch, pyhessian); run:
    python -m bench.perf.hessian_vs_pyhessian [--iters 30] [--steps 1000] [--measurements 14]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from bench.core.compile_log import logged_compiles
from bench.metrics import hessian as hs
from bench.metrics.linearize import clear_programs
from bench.metrics.operator import HessianOperator
from bench.perf.curvature import chunk_flops, plausibility

HIDDEN = (100, 100)


class MLP(nnx.Module):
    def __init__(self, sizes: tuple[int, ...], rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def load_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int32)}


def train(data: dict[str, jax.Array], steps: int, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    model = MLP((data["x"].shape[1], *HIDDEN, 10), nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    def loss(p, batch):
        logits = nnx.merge(graphdef, p)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    @jax.jit
    def step(p, o, batch):
        g = jax.grad(loss)(p, batch)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o

    n, rng = data["x"].shape[0], np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(n, 100, replace=False)
        params, opt = step(params, opt, {"x": data["x"][idx], "y": data["y"][idx]})
    return graphdef, params


@dataclasses.dataclass
class Timing:
    first: float  # seconds of the first call (compile included when not yet compiled)
    median: float  # median seconds of the steady-state repeats
    spread: float  # interquartile range / median of the repeats
    repeats: int
    stable: bool  # spread within the tolerance

    def ms(self) -> str:
        return f"{self.median * 1e3:8.1f} ms" + ("" if self.stable else f" (UNRELIABLE: spread {self.spread:.0%})")


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def _spread(times: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def time_until_stable(calls: dict[str, Callable[[], Any]], args: argparse.Namespace) -> dict[str, Timing]:
    """First call of each, then rounds alternating the calls until every spread is within
    ``args.stable`` (after at least ``args.min_repeats`` rounds, at most ``args.max_repeats``)."""
    first = {k: _seconds(f) for k, f in calls.items()}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(args.max_repeats):
        for k, f in calls.items():
            times[k].append(_seconds(f))
        if r + 1 >= args.min_repeats and all(_spread(t) <= args.stable for t in times.values()):
            break
    return {k: Timing(first[k], statistics.median(t), _spread(t), len(t), _spread(t) <= args.stable)
            for k, t in times.items()}


def to_torch(graphdef: nnx.GraphDef, params: nnx.State):
    import torch

    model = nnx.merge(graphdef, params)
    sizes = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    mods: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(model.layers[i].kernel[...]).T.copy()))  # (in,out)->(out,in)
            lin.bias.copy_(torch.from_numpy(np.asarray(model.layers[i].bias[...]).copy()))
        mods += [lin, torch.nn.ReLU()] if i < len(sizes) - 2 else [lin]
    return torch.nn.Sequential(*mods).eval()


def _grad_on_batch(loss: Any, params: Any, batch: dict) -> Any:
    return jax.grad(loss)(params, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30, help="HVPs per eigenvalue run (both libraries)")
    ap.add_argument("--steps", type=int, default=1000, help="Adam steps before measuring")
    ap.add_argument("--rtol", type=float, default=1e-3, help="[4] target relative accuracy")
    ap.add_argument("--measurements", type=int, default=14,
                    help="[4b] measurements per training run (14: the default experiment, 1,240 steps, "
                         "with metrics.every=100)")
    ap.add_argument("--chunk-size", type=int, default=None, help="our HVP chunk (default: all 4000 at once)")
    ap.add_argument("--stable", type=float, default=0.10, help="accepted interquartile spread / median")
    ap.add_argument("--min-repeats", type=int, default=5)
    ap.add_argument("--max-repeats", type=int, default=30)
    args = ap.parse_args()

    import torch
    from pyhessian import hessian as PyHessian

    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")  # PyHessian's own
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # same cores as XLA's CPU client

    np_data = load_mnist1d()
    data = {k: jnp.asarray(v) for k, v in np_data.items()}
    graphdef, params = train(data, args.steps)
    n_params = ravel_pytree(params)[0].size

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    tmodel = to_torch(graphdef, params)
    criterion = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(np_data["x"]), torch.from_numpy(np_data["y"].astype(np.int64))
    with torch.no_grad():
        loss_torch = float(criterion(tmodel(tx), ty))
    print(f"MLP 40-{'-'.join(map(str, HIDDEN))}-10, {n_params} params, N={len(np_data['y'])}, "
          f"{args.steps} Adam steps; loss jax={float(loss_fn(params, data)):.6f} torch={loss_torch:.6f}")
    print(f"threads: torch={torch.get_num_threads()}, jax devices={jax.devices()}, loops "
          f"{'rolled (lax)' if hs.rolled_loops() else 'host-driven'}; persistent compile cache: "
          f"{jax.config.jax_compilation_cache_dir or 'off'}")
    print(f"load average before timing: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; timings alternate, "
          f"median of repeats until the spread is within {args.stable:.0%} ({args.min_repeats}-{args.max_repeats} rounds)")

    key, chunk, it = jax.random.PRNGKey(0), args.chunk_size, args.iters
    ctx = dict(loss_fn=loss_fn, params=params, data=data, key=key, chunk=chunk, tmodel=tmodel,
               criterion=criterion, tdata=(tx, ty), PyHessian=PyHessian)

    def lanczos(n: int) -> Callable[[], Any]:
        return lambda: hs.lanczos_top_eigenvalues(loss_fn, params, data, key, k=1, num_iters=n, chunk_size=chunk)

    def pyhessian(n: int) -> Callable[[], float]:
        def run() -> float:  # includes its create_graph backward
            return PyHessian(tmodel, criterion, data=(tx, ty), cuda=False).eigenvalues(maxIter=n, tol=0.0, top_n=1)[0][0]
        return run

    agreement(ctx, it, lanczos(it))
    per_iteration(ctx, it, lanczos, pyhessian, args)
    hvp_cost(ctx, it, lanczos, args)
    time_to_accuracy(ctx, lanczos, pyhessian, args)
    estimator_costs()
    print(f"\nload average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def agreement(ctx: dict, it: int, lanczos_it: Callable[[], Any]) -> None:
    loss_fn, params, data, key, chunk = (ctx[k] for k in ("loss_fn", "params", "data", "key", "chunk"))
    ours = lanczos_it()
    ref = hs.lanczos_top_eigenvalues(loss_fn, params, data, key, k=1, num_iters=max(2 * it, 60), chunk_size=chunk)
    pw_eig, _ = hs.power_iteration_top_eigenvalue(loss_fn, params, data, key, num_iters=it - 2, tol=0.0, chunk_size=chunk)
    torch_pw = ctx["PyHessian"](ctx["tmodel"], ctx["criterion"], data=ctx["tdata"], cuda=False)
    ph_eq = torch_pw.eigenvalues(maxIter=it, tol=0.0, top_n=1)[0][0]
    ph_conv = ctx["PyHessian"](ctx["tmodel"], ctx["criterion"], data=ctx["tdata"], cuda=False).eigenvalues(
        maxIter=1000, tol=1e-7)[0][0]
    top = float(ours.eigenvalues[0])
    ctx["converged"] = float(ref.eigenvalues[0])
    print("\n[1] top eigenvalue")
    print(f"  ours Lanczos ({it} it):        {top:.6f}  residual ||Hv - lv|| = {float(ours.residuals[0]):.2e}")
    print(f"  ours Lanczos ({max(2 * it, 60)} it):        {ctx['converged']:.6f}  residual = {float(ref.residuals[0]):.2e}")
    print(f"  ours power ({it} HVPs):       {float(pw_eig):.6f}")
    print(f"  PyHessian power ({it} it):    {ph_eq:.6f}")
    print(f"  PyHessian power (converged): {ph_conv:.6f}  (tol 1e-7, max 1000 it)")
    print(f"  relative difference, ours Lanczos ({it}) vs PyHessian converged: {abs(top - ph_conv) / abs(ph_conv):.2e}")


def per_iteration(ctx: dict, it: int, lanczos: Callable, pyhessian: Callable, args: argparse.Namespace) -> None:
    loss_fn, params, data, key, chunk = (ctx[k] for k in ("loss_fn", "params", "data", "key", "chunk"))
    # optax runs num_iters + 1 HVPs (+1 for our residual): num_iters = it - 2 gives `it` HVPs.
    power = lambda: hs.power_iteration_top_eigenvalue(loss_fn, params, data, key, num_iters=it - 2, tol=0.0,  # noqa: E731
                                                      chunk_size=chunk)
    t = time_until_stable({"pyhessian": pyhessian(it), "lanczos": lanczos(it), "power": power}, args)
    ph = t["pyhessian"].median
    print(f"\n[2] steady-state wall time for {it} HVPs on all {ctx['data']['x'].shape[0]} examples "
          f"(median of {t['lanczos'].repeats} alternating rounds)")
    print(f"  PyHessian power iteration: {t['pyhessian'].ms()}  (incl. its create_graph backward)")
    print(f"  ours Lanczos (k=1):        {t['lanczos'].ms()}  -> PyHessian/ours = {ph / t['lanczos'].median:.2f}x"
          f"   (first call {t['lanczos'].first:.2f} s: compile apart)")
    print(f"  ours power iteration:      {t['power'].ms()}  -> PyHessian/ours = {ph / t['power'].median:.2f}x"
          f"   (first call {t['power'].first:.2f} s: compile apart)")
    ctx["iteration_times"] = t


def hvp_cost(ctx: dict, it: int, lanczos: Callable, args: argparse.Namespace) -> None:
    loss_fn, params, data, chunk = (ctx[k] for k in ("loss_fn", "params", "data", "chunk"))
    op = HessianOperator.of(loss_fn, params, data, chunk)
    hoisted = op.hoisted()  # what our Lanczos uses (itself when rolled or over budget)
    flat = ravel_pytree(params)[0]
    v = jax.random.normal(jax.random.PRNGKey(1), flat.shape, flat.dtype)
    grad = lambda: op.mean(_grad_on_batch, op.params)  # noqa: E731
    short = max(it // 3, 2)
    calls = {"gradient": grad, "hvp": lambda: hoisted.matvec(v), "hvp from scratch": lambda: op.matvec(v),
             "lanczos": lanczos(it), "lanczos short": lanczos(short)}
    if op.rolled:  # each call one program, as the rolled estimators run them
        calls["gradient"] = _jitted(lambda o: o.mean(_grad_on_batch, o.params), op)
        calls["hvp"] = calls["hvp from scratch"] = _jitted(lambda o, v: o.matvec(v), op, v)
    t = time_until_stable(calls, args)
    g = t["gradient"].median
    flops = chunk_flops(op, hoisted, v)  # params, data and v are arguments of the programs
    print(f"\n[3] cost in units of one full-data gradient ({'hoisted HVPs' if hoisted.linear is not None else 'HVPs'}, "
          f"as our estimators run them; params and data are arguments; median of {t['gradient'].repeats} rounds)")
    print(f"  gradient: {t['gradient'].ms()}   HVP: {t['hvp'].ms()}   -> HVP = {t['hvp'].median / g:.2f} gradients")
    print(f"  HVP from scratch (jvp of grad, not hoisted): {t['hvp from scratch'].ms()} = "
          f"{t['hvp from scratch'].median / g:.2f} gradients")
    per_iter = (t["lanczos"].median - t["lanczos short"].median) / (it - short)
    print(f"  one Lanczos iteration (HVP + full reorthogonalisation; {it} vs {short} iterations): "
          f"{per_iter * 1e3:.2f} ms = {per_iter / g:.2f} gradients")
    print(f"  compiled FLOPs: gradient {flops['gradient']:.3g}, HVP from scratch {flops['hvp from scratch']:.3g} "
          f"(= {flops['hvp from scratch'] / flops['gradient']:.2f} gradients)"
          + (f", hoisted HVP (tangent pass) {flops['hoisted hvp']:.3g} (= {flops['hoisted hvp'] / flops['gradient']:.2f})"
             if "hoisted hvp" in flops else ""))
    kind = "hoisted hvp" if hoisted.linear is not None else "hvp from scratch"
    n = ctx["data"]["x"].shape[0]
    share = min(chunk or n, n) / n  # FLOPs are per chunk: time per chunk's worth of examples
    per_chunk = {"gradient": g * share, kind: t["hvp"].median * share, "hvp from scratch": t["hvp from scratch"].median * share}
    for line in plausibility("  HVP", per_chunk, flops):
        print(line)
    if per_iter < g and kind == "hvp from scratch":
        print(f"  IMPLAUSIBLE: a Lanczos iteration measured below one gradient ({per_iter / g:.2f}): a measurement bug")


def _jitted(fn: Callable, *args: Any) -> Callable[[], Any]:
    jitted = jax.jit(fn)
    return lambda: jitted(*args)


def time_to_accuracy(ctx: dict, lanczos: Callable, pyhessian: Callable, args: argparse.Namespace) -> None:
    target = ctx["converged"]
    n_ph = _iterations_to(_pyhessian_trajectory(ctx["PyHessian"], ctx["tmodel"], ctx["criterion"], ctx["tdata"], 300),
                          target, args.rtol)
    n_lz = _iterations_to(_lanczos_trajectory(ctx["loss_fn"], ctx["params"], ctx["data"], ctx["key"], 60, ctx["chunk"]),
                          target, args.rtol)
    print(f"\n[4] time to the top eigenvalue within {args.rtol:g} (relative) of the converged {target:.6f}")
    if n_ph is None or n_lz is None:
        print(f"  not reached within the longest runs (PyHessian {n_ph}, Lanczos {n_lz} iterations)")
        return
    # (a) one measurement, end to end: JAX's compiled programs are dropped first, so our time
    # includes tracing and compiling everything the measurement runs.
    jax.clear_caches()
    clear_programs()
    with logged_compiles() as compiled:
        ours_cold = _seconds(lanczos(n_lz))
    ph_first = _seconds(pyhessian(n_ph))
    t = time_until_stable({"pyhessian": pyhessian(n_ph), "lanczos": lanczos(n_lz)}, args)
    ph, lz = t["pyhessian"].median, t["lanczos"].median
    print(f"  PyHessian power iteration: {n_ph:3d} iterations, steady {t['pyhessian'].ms()}")
    print(f"  ours Lanczos (+1 residual HVP): {n_lz:3d} iterations, steady {t['lanczos'].ms()}, "
          f"first call (compile included) {ours_cold:.2f} s")
    print(f"  (a) one measurement, end to end (compile included): PyHessian {ph_first * 1e3:.0f} ms, ours "
          f"{ours_cold * 1e3:.0f} ms ({len(compiled)} programs compiled) -> PyHessian/ours = {ph_first / ours_cold:.2f}x")
    m = args.measurements
    ours_run, ph_run = ours_cold + (m - 1) * lz, ph_first + (m - 1) * ph
    print(f"  (b) amortized over {m} measurements (compiled once, reused): PyHessian {ph_run:.2f} s, ours "
          f"{ours_run:.2f} s -> PyHessian/ours = {ph_run / ours_run:.2f}x")
    print(f"      steady state alone (compile excluded): PyHessian/ours = {ph / lz:.2f}x"
          + ("" if t["pyhessian"].stable and t["lanczos"].stable else "  (UNRELIABLE: timings did not settle)"))


def estimator_costs() -> None:
    """Each estimator's cost in HVPs at the metrics defaults (what one measurement runs)."""
    from bench.config import MetricsConfig  # the defaults; the one use of the core here

    c = MetricsConfig()
    m = c.lanczos_iters
    print("\n[5] cost of each estimator (metrics defaults; HVP = forward-over-reverse Hessian-vector product)")
    print(f"  Lanczos top-k (m = {m}, k = {c.top_k}):       m + k = {m + c.top_k} HVPs")
    print(f"  power iteration (n = {c.power_iters}):          1 + <= n + 1 = <= {c.power_iters + 2} HVPs")
    print(f"  Hutchinson trace (p = {c.hutchinson_probes}):          p = {c.hutchinson_probes} HVPs")
    print(f"  SLQ density (p = {c.slq_probes} probes x m = {m}):   p m = {c.slq_probes * m} HVPs")
    print(f"  Keskar sharpness ({len(c.sharpness_eps)} eps x full + subspace): per run 1 + L-BFGS-B evaluations "
          f"(<= ~{c.sharpness_iters} iterations) full-data gradients, no HVPs")
    print(f"  noise scale: {c.noise_num_small} gradients of {c.noise_small_batch} examples (no HVPs)")
    print("  PyHessian eigenvalues(maxIter=n, top_n=1): 1 create_graph backward + <= n HVPs (double backward)")


def _iterations_to(trajectory: list[float], target: float, rtol: float) -> int | None:
    """Fewest iterations n after which every estimate is within rtol of target (1-based)."""
    ok = [abs(e - target) <= rtol * abs(target) for e in trajectory]
    for n in range(len(ok)):
        if all(ok[n:]):
            return n + 1
    return None


def _pyhessian_trajectory(PyHessian: Any, model: Any, criterion: Any, data: Any, iters: int) -> list[float]:
    """PyHessian's eigenvalue estimate after each power iteration (one run, tol=0)."""
    ph_module = sys.modules["pyhessian.hessian"]  # the package attribute is the class

    seen: list[float] = []
    original = ph_module.group_product

    def recording(xs, ys):  # PyHessian's estimate at each iteration is group_product(Hv, v)
        value = original(xs, ys)
        seen.append(float(value))
        return value

    ph_module.group_product = recording
    try:
        PyHessian(model, criterion, data=data, cuda=False).eigenvalues(maxIter=iters, tol=0.0, top_n=1)
    finally:
        ph_module.group_product = original
    return seen


def _lanczos_trajectory(loss_fn: Any, params: Any, data: Any, key: jax.Array, iters: int,
                        chunk: int | None) -> list[float]:
    """Top Ritz value after j = 1..iters Lanczos iterations, from one run: T_j is the leading
    j x j block of T_iters (same start vector as ``lanczos_top_eigenvalues``)."""
    op = HessianOperator.of(loss_fn, params, data, chunk).hoisted()
    flat = ravel_pytree(params)[0]
    _, alpha, beta = hs.lanczos_from_key(op, flat, iters, key)
    alpha, beta = np.asarray(alpha), np.asarray(beta)
    return [float(np.asarray(hs.ritz(alpha[:j], beta[: j - 1])[0])[-1]) for j in range(1, iters + 1)]


if __name__ == "__main__":
    main()
