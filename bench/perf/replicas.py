"""Benchmark: K replicas vectorized in one job vs K separate processes (a plain multirun).

    python -m bench.perf.replicas [--model cnn|mlp] [--k 8] [--batch-size 128] [--budget 500steps]
                                  [--formulations-only | --skip-formulations] [--all-variants]
                                  [--formulation-batch-sizes 32,128,1024]

About 5 minutes on 2 shared CPU cores with the defaults (part 1: 9 processes; part 2: the
unrolled replica loop alone compiles for about a minute).

Part 1, end to end and like with like. Wall time from process start to exit of
  (a) ONE ``python -m bench.train replicas.lr=[K values]`` process (K replicas, vmapped), and
  (b) K sequential ``python -m bench.train optimizer.lr=<value>`` processes (what
      ``python -m bench.train -m optimizer.lr=v1,...,vK`` runs, one job after the other),
with the same model, data, budget, eval cadence, ``logger=none progress=false``. Both sides pay
their own interpreter start-up, imports, data generation, compilation, training and evaluation.
Printed: the total wall-time ratio (b)/(a) (goal >= 4 for K = 8), where each side's time goes
(from the records' ``timings``; start-up = wall - the loop's ``total_seconds``), the per-step
train time of K replicas vs 1 (``train_seconds / steps``) and the ratio extrapolated to longer
budgets from those measured parts. Replica k and process k are the same run: their step-0
evaluation agrees to float rounding (later rows drift apart as SGD amplifies rounding).

Part 2, in one process: formulations of the replica axis of the training step (same state,
same batches, ``steps_per_call`` steps per jitted call): bench.core.step's (``jax.vmap``; on CPU with
K > 1 the 1-D convolutions as im2col + matmul, ``bench.models.matmul_conv``), ``jax.vmap`` with the
plain convolution (on XLA:CPU a vmapped convolution becomes a grouped convolution), an unrolled
Python loop over replicas inside the jitted call (``--all-variants``: also with 5 instead of 25
steps per call, since its compile time grows with K x steps per call) and ``jax.lax.map`` over
replicas. Each is checked against bench.core.step's (max |param difference| after one step from the
same state), its compile time is measured, and it is timed after compilation (medians over
rounds). The same for one full evaluation: bench.core.step's (a loop
over replicas on CPU, vmap elsewhere) vs a vmap over replicas.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ part 1


def _train_args(model: str, batch_size: int, budget: str) -> list[str]:
    return [f"model={model}", f"batch_size={batch_size}", f"budget={budget}", "logger=none",
            "progress=false"]


def _run_process(args: list[str], out: Path, cache: Path | None = None) -> dict[str, Any]:
    """One ``python -m bench.train`` process; wall time from before its start to its exit.
    ``cache``: the persistent compilation cache directory (None: no cache)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cache_arg = ["compile_cache_dir=null"] if cache is None else [f"compile_cache_dir={cache}"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.train", *args, *cache_arg, f"output_dir={out}"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bench.train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in sorted(out.glob("record_r*.json"),
                                                          key=lambda p: int(p.stem[8:]))]
    return {"wall": wall, "records": records, "timings": records[0]["timings"],
            "steps": records[0]["experiment"]["total_steps"], "evals": len(records[0]["history"])}


def _parts(run: dict[str, Any]) -> dict[str, float]:
    t = run["timings"]
    return {"wall": run["wall"], "startup": run["wall"] - t["total_seconds"],
            "compile": t["compile_seconds"], "train": t["train_seconds"], "eval": t["eval_seconds"],
            "other": t["total_seconds"] - t["compile_seconds"] - t["train_seconds"] - t["eval_seconds"]}


def end_to_end(model: str, k: int, batch_size: int, budget: str, eval_every: int, workdir: Path) -> None:
    lrs = [round(0.01 * 1.5 ** i, 6) for i in range(k)]
    common = _train_args(model, batch_size, budget) + [f"eval.every_steps={eval_every}"]
    print(f"\n== Part 1: K={k} replicas in one process vs {k} separate processes "
          f"(model={model}, B={batch_size}, budget={budget}, eval every {eval_every} steps)")
    print(f"   LRs: {lrs}; each side is timed from process start to exit", flush=True)
    vec = _run_process(common + [f"replicas.lr=[{','.join(map(str, lrs))}]"], workdir / "vectorized")
    print(f"   vectorized (1 process, K={k}): {vec['wall']:.1f} s", flush=True)
    sep = []
    for i, lr in enumerate(lrs):
        sep.append(_run_process(common + [f"optimizer.lr={lr}"], workdir / f"separate_{i}"))
        print(f"   separate process {i + 1}/{k} (lr={lr}): {sep[-1]['wall']:.1f} s", flush=True)

    steps, evals = vec["steps"], vec["evals"]
    pv = _parts(vec)
    ps = {key: sum(_parts(r)[key] for r in sep) for key in pv}
    print(f"\n   {'seconds':<22}{'1 process, K=' + str(k):>18}{str(k) + ' processes, K=1':>20}")
    for key in ("wall", "startup", "compile", "train", "eval", "other"):
        label = {"wall": "total wall time", "startup": "start-up (imports...)",
                 "other": "other (data, init...)"}.get(key, key)
        print(f"   {label:<22}{pv[key]:>18.1f}{ps[key]:>20.1f}")
    ratio = ps["wall"] / pv["wall"]
    print(f"\n   total wall-time ratio ({k} processes / 1 vectorized process): {ratio:.2f}x "
          f"(goal >= 4x) {'MET' if ratio >= 4 else 'MISSED'}")

    t_k = pv["train"] / steps
    t_1 = statistics.mean(_parts(r)["train"] / r["steps"] for r in sep)
    print(f"   per training step (train_seconds / {steps} steps): K={k}: {t_k * 1e3:.2f} ms, "
          f"K=1: {t_1 * 1e3:.2f} ms (mean of the {k} processes)")
    print(f"   -> one K={k} step costs {t_k / t_1:.2f} single-replica steps; per replica-step "
          f"vectorization is {k * t_1 / t_k:.2f}x {'faster' if k * t_1 >= t_k else 'SLOWER'} than "
          f"separate runs")
    e_k, e_1 = pv["eval"] / evals, statistics.mean(_parts(r)["eval"] / r["evals"] for r in sep)
    print(f"   per full evaluation (train + test sets): K={k}: {e_k * 1e3:.0f} ms, K=1: {e_1 * 1e3:.0f} ms")

    fixed_v = pv["wall"] - pv["train"] - pv["eval"]
    fixed_1 = statistics.mean(_parts(r)["wall"] - _parts(r)["train"] - _parts(r)["eval"] for r in sep)

    def predicted(s: int) -> float:
        n_eval = s // eval_every + 1
        return k * (fixed_1 + s * t_1 + n_eval * e_1) / (fixed_v + s * t_k + n_eval * e_k)

    per_step_limit = k * (t_1 + e_1 / eval_every) / (t_k + e_k / eval_every)
    print(f"   fixed cost per process (start-up + compile + other): K={k}: {fixed_v:.1f} s, "
          f"K=1: {fixed_1:.1f} s")
    print("   ratio extrapolated from these parts to longer budgets: " + ", ".join(
        f"{s} steps {predicted(s):.2f}x" for s in (steps, 2 * steps, 5 * steps, 20 * steps))
        + f", limit (training + eval only) {per_step_limit:.2f}x")

    def max_diff(row: int, key: str) -> float:
        return max(abs(rv["history"][row][key] - rs["records"][0]["history"][row][key])
                   for rv, rs in zip(vec["records"], sep))

    print(f"   same runs: replica k vs process k, max |train loss difference| at step 0 "
          f"{max_diff(0, 'train_loss'):.1e} (same init, same data), after {steps} steps "
          f"{max_diff(-1, 'train_loss'):.1e}, test accuracy {max_diff(-1, 'test_accuracy'):.3f}")
    print("   (vmapped and plain ops reduce in different orders; SGD amplifies the rounding over the steps)")
    warm_cache(common, lrs, workdir, pv["wall"], ps["wall"])


def warm_cache(common: list[str], lrs: list[float], workdir: Path, vec_cold: float,
               sep_cold: float) -> None:
    """Part 1 again with JAX's persistent compilation cache warm for both sides (one untimed run
    of each fills it): what vectorizing saves beyond compile time."""
    cache = workdir / "compile-cache"
    vec_args = common + [f"replicas.lr=[{','.join(map(str, lrs))}]"]
    _run_process(vec_args, workdir / "warmup_vectorized", cache)
    _run_process(common + [f"optimizer.lr={lrs[0]}"], workdir / "warmup_separate", cache)
    vec = _run_process(vec_args, workdir / "vectorized_warm", cache)
    sep = [_run_process(common + [f"optimizer.lr={lr}"], workdir / f"separate_warm_{i}", cache)
           for i, lr in enumerate(lrs)]
    hits = [r["records"][0]["environment"]["compile_cache"] for r in (vec, *sep)]
    sep_wall = sum(r["wall"] for r in sep)
    print(f"\n   with a warm compilation cache (both sides): 1 process {vec['wall']:.1f} s "
          f"(compile {vec['timings']['compile_seconds']:.1f} s, was {vec_cold:.1f} s in all cold), "
          f"{len(lrs)} processes {sep_wall:.1f} s (compile "
          f"{sum(r['timings']['compile_seconds'] for r in sep):.1f} s, was {sep_cold:.1f} s in all cold)")
    print(f"   cache hits / misses per process: {[(h['hits'], h['misses']) for h in hits]}")
    print(f"   ratio beyond compile ({len(lrs)} warm processes / 1 warm vectorized process): "
          f"{sep_wall / vec['wall']:.2f}x (cold: {sep_cold / vec_cold:.2f}x)")


# ------------------------------------------------------------------------------ part 2


def _replica_block(job, how: str) -> Callable:
    """A train block like ``bench.core.step.make_train_block`` with another replica formulation
    (``loop``, ``map`` or ``vmap``), always with the plain convolution (``job.fns``)."""
    import jax

    from bench.core.parallel import batch_sharded
    from bench.core.step import make_replica_step, over_replicas

    step = make_replica_step(job.fns, job.tx, job.lr_multiplier, job.cfg.accumulate)
    mesh = job.mesh

    def mapped(state, x, y):
        return jax.lax.map(lambda a: step(*a), (state, x, y))

    rstep = {"loop": over_replicas(step, (0, 0, 0), loop=True), "map": mapped,
             "vmap": over_replicas(step, (0, 0, 0), loop=False)}[how]

    def block(state, data, idx):
        x_all, y_all = data

        def body(state, idx_t):
            x = jax.lax.with_sharding_constraint(x_all[idx_t], batch_sharded(mesh, 1, x_all.ndim + 1))
            y = jax.lax.with_sharding_constraint(y_all[idx_t], batch_sharded(mesh, 1, 2))
            return rstep(state, x, y)
        if idx.shape[0] == 1:
            state, metrics = body(state, idx[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(body, state, idx, unroll=job.policy.scan_unroll())

    return jax.jit(block, donate_argnums=(0,))


class _VmapEval:
    """``job.evaluate`` with one ``jax.vmap`` over the K replicas, whatever the backend (on CPU
    the execution policy loops over replicas instead)."""

    def __init__(self, job):
        import jax

        from dataclasses import replace

        from bench.core.step import make_evaluate

        self.job, self.replicas, self.timings = job, job.replicas, job.timings
        self._evaluate = jax.jit(make_evaluate(job.fns, job.mesh, replace(job.policy, loop_over_replicas=False)))

    def init_state(self):
        return self.job.init_state()

    def evaluate(self, state):
        import jax

        out = {}
        for split, (x, y) in (("train", (self.job.x_train, self.job.y_train)),
                              ("test", (self.job.x_test, self.job.y_test))):
            idx, mask = self.job.source.sets[split]
            key = ("vmap-eval", split)
            fn = self.job.compile(key, self._evaluate, state.params, state.stats, x, y, idx, mask)
            t = time.perf_counter()
            out[split] = jax.device_get(fn(state.params, state.stats, x, y, idx, mask))
            self.timings.eval_seconds += time.perf_counter() - t
        return out


def formulations(model: str, k: int, batch_size: int, steps: int, rounds: int,
                 all_variants: bool = False) -> None:
    import jax
    import numpy as np

    from bench.config import from_dict
    from bench.data import load_dataset
    from bench.core.job import Job

    print(f"\n== Part 2: replica-axis formulations (model={model}, K={k}, B={batch_size}, one process, "
          f"compile excluded, median of {rounds} rounds of {steps} steps)", flush=True)
    models = {"cnn": {"name": "cnn"},  # the default: Greydanus' CNN
              "mlp": {"name": "mlp", "hidden": [256, 256]}}

    def config(kk: int):
        return from_dict({"model": models[model], "batch_size": batch_size, "budget": "1000000steps",
                          "replicas": {"lr": [round(0.01 * 1.5 ** i, 6) for i in range(kk)]},
                          "logger": {"name": "none"}, "progress": False})

    data = load_dataset(config(1).dataset)
    job, single = Job(config(k), data), Job(config(1), data)
    spc = job.cfg.steps_per_call
    loop_block = _replica_block(job, "loop")
    current = "bench.core.step (current)"
    variants: dict[str, tuple[Any, Callable, int]] = {
        current: (job, job.train_call, spc),
        "vmap, plain convolutions": (job, _replica_block(job, "vmap"), spc),
        "unrolled loop over replicas": (job, loop_block, spc)}
    if all_variants:
        variants["  the same, 5 steps per call"] = (job, loop_block, 5)
    variants["lax.map over replicas"] = (job, _replica_block(job, "map"), spc)
    variants["K=1 (reference)"] = (single, single.train_call, spc)
    if model == "cnn":
        matmul_1 = Job(config(1), data, convs_as_matmul=True)
        variants["K=1, convs as im2col + matmul"] = (matmul_1, matmul_1.train_call, spc)

    def idx(jb, start: int, count: int):
        return jb.source.train_inputs(start, count)[0]

    results: dict[str, dict[str, Any]] = {}
    for name, (jb, fn, spc) in variants.items():
        # one step from the initial state: the formulations must agree to float rounding
        one_step, _ = fn(jb.init_state(), jb.source.train_data(), idx(jb, 0, 1))
        state = jb.init_state()
        t = time.perf_counter()
        compiled = fn.lower(state, jb.source.train_data(), idx(jb, 0, spc)).compile()
        compile_s = time.perf_counter() - t
        state, m = compiled(state, jb.source.train_data(), idx(jb, 0, spc))
        jax.block_until_ready(m)
        calls, times, s = max(steps // spc, 1), [], spc  # the same number of steps per round
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(calls):
                state, m = compiled(state, jb.source.train_data(), idx(jb, s, spc))
                s += spc
            jax.device_get(m)
            times.append((time.perf_counter() - t) / (calls * spc))
        results[name] = {"compile": compile_s, "step": statistics.median(times), "k": len(jb.replicas),
                         "one_step": jax.device_get(one_step.params)}
        print(f"   {name:<34} compile {compile_s:6.1f} s   {results[name]['step'] * 1e3:8.2f} ms/step",
              flush=True)

    ref, one = results[current], results["K=1 (reference)"]
    print(f"\n   {'train step, K=' + str(k):<34}{'ms/step':>9}{'vs current':>11}{'vs ' + str(k) + 'x K=1':>10}"
          f"{'compile s':>11}{'1-step max|dparam|':>20}")
    for name, r in results.items():
        base = ref if r["k"] == k else one
        diff = max(float(np.max(np.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(base["one_step"]), jax.tree.leaves(r["one_step"])))
        per_replica = r["step"] / r["k"]                    # ms per replica-step
        print(f"   {name:<34}{r['step'] * 1e3:>9.2f}{ref['step'] / k / per_replica:>10.2f}x"
              f"{one['step'] / per_replica:>9.2f}x{r['compile']:>11.1f}{diff:>20.1e}")
    print("   (per replica-step: vs current > 1 = faster than bench.core.step; vs Kx K=1 > 1 = faster "
          "than K separate single-replica steps; max|dparam| after one step vs bench.core.step, K=1 rows "
          "vs K=1)")

    evals = {"bench.core.step (current)": (job, None), "vmap over replicas": (job, "vmap"),
             "K=1 (reference)": (single, None)}
    print(f"\n   {'full evaluation (train + test sets)':<34}{'ms':>9}{'vs vmap':>9}{'compile s':>11}")
    ev_times: dict[str, tuple[float, float, int]] = {}
    for name, (jb, how) in evals.items():
        if how == "vmap":
            jb = _VmapEval(jb)
        st = jb.init_state()
        compile_before = jb.timings.compile_seconds
        jb.evaluate(st)                                     # compiles
        compile_s = jb.timings.compile_seconds - compile_before
        before = jb.timings.eval_seconds
        for _ in range(rounds):
            jb.evaluate(st)
        ev_times[name] = ((jb.timings.eval_seconds - before) / rounds, compile_s, len(jb.replicas))
    vmap_eval = ev_times["vmap over replicas"][0]
    for name, (sec, compile_s, kk) in ev_times.items():
        print(f"   {name + ' (K=' + str(kk) + ')':<34}{sec * 1e3:>9.0f}"
              f"{vmap_eval / k / (sec / kk):>8.2f}x{compile_s:>11.1f}   (per replica)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--budget", default="500steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50, help="part 2: timed steps per round")
    parser.add_argument("--formulation-batch-sizes", default=None,
                        help="part 2: comma-separated batch sizes (default: --batch-size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--all-variants", action="store_true",
                        help="part 2: also the replica loop with 5 steps per call (one more long compile)")
    parser.add_argument("--skip-formulations", action="store_true")
    parser.add_argument("--formulations-only", action="store_true")
    args = parser.parse_args()

    import jax
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__}, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    if not args.formulations_only:
        with tempfile.TemporaryDirectory(prefix="bench-perf-replicas-") as tmp:
            end_to_end(args.model, args.k, args.batch_size, args.budget, args.eval_every, Path(tmp))
    if not args.skip_formulations:
        for b in (args.formulation_batch_sizes or str(args.batch_size)).split(","):
            formulations(args.model, args.k, int(b), args.steps, args.rounds, args.all_variants)
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s, load average now "
          f"{os.getloadavg()[0]:.1f} (other users share these cores: compare numbers within one run)")


if __name__ == "__main__":
    main()
