"""Benchmark: harness train-step time vs a minimal hand-written jax + optax loop, and throughput.

    python -m bench.perf.step [--model cnn|transformer] [--batch-size B] [--steps 300]
                              [--batch-sizes 32,64,...]

Both loops train the same model (``cnn``: the default MNIST-1D CNN with momentum SGD;
``transformer``: ``+experiment=lm_offline``'s tiny transformer with AdamW and its weight-decay
mask on byte-level pydoc text) on the same device-resident data, with the same optax optimizer
(the harness' own optimizer section, without its injected hyperparameters); compile time is
excluded (one warm-up call each) and printed apart; every timed region ends with
``block_until_ready``. Measurements alternate between the two loops in several rounds and report
medians, since this machine is noisy. Prints the harness / minimal time ratio (goal <= 1.10),
then examples/s (tokens/s for the transformer, also per CPU-second of this process, which moves
less with the machine's load) for each batch size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bench.data import ArrayDataset, load_dataset
from bench.rules.plan import epoch_permutation
from bench.hydra_conf import compose_config
from bench.core.job import Job

MODELS = {"cnn": ["model=cnn"],
          "transformer": ["+experiment=lm_offline"]}


def _config(model: str, batch_size: int, steps_per_call: int):
    return compose_config([*MODELS[model], f"batch_size={batch_size}", "budget=1000000steps",
                           f"steps_per_call={steps_per_call}", "logger=none", "progress=false",
                           "schedule=constant", "schedule.warmup_epochs=0"])


def tiled(data: ArrayDataset, min_examples: int) -> ArrayDataset:
    """The training set repeated until it holds ``min_examples`` examples (throughput only)."""
    reps = max(1, -(-min_examples // data.num_train))
    return ArrayDataset(data.name, np.concatenate([data.x_train] * reps),
                        np.concatenate([data.y_train] * reps), data.x_test, data.y_test,
                        data.num_classes, data.provenance)


class MinimalLoop:
    """What a careful person writes by hand: one jitted step, batch gathered on device."""

    def __init__(self, job: Job):
        model = job.build_model(jax.random.PRNGKey(0))
        graphdef, params = nnx.split(model, nnx.Param)
        tx = job.cfg.optimizer.transform(job.replicas[0].peak_lr, job.cfg.model.weight_decay_mask())

        def loss_fn(p, x, y):
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, opt_state, x_all, y_all, idx):
            loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        self.step, self.params, self.opt_state = step, params, tx.init(params)
        self.x, self.y = jnp.asarray(job.data.x_train), jnp.asarray(job.data.y_train)
        self.n, self.b = job.data.num_train, job.cfg.batch_size

    def run(self, steps: int, start: int = 0) -> float:
        steps_per_epoch = self.n // self.b
        t = time.perf_counter()
        for s in range(start, start + steps):
            epoch, pos = divmod(s, steps_per_epoch)
            idx = epoch_permutation(0, epoch, self.n)[pos * self.b:(pos + 1) * self.b]
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.x,
                                                          self.y, idx)
        loss.block_until_ready()
        return time.perf_counter() - t


def harness_seconds(job: Job, state, steps: int, start: int):
    before = job.timings.train_seconds
    step = start
    while step < start + steps:
        count = min(job.cfg.steps_per_call, start + steps - step)
        state, _ = job.train(state, step, count)
        step += count
    return state, job.timings.train_seconds - before  # Job.train syncs with the host


def compare(model: str, batch_size: int, steps: int, rounds: int, steps_per_call: int) -> dict[str, float]:
    cfg = _config(model, batch_size, steps_per_call)
    job = Job(cfg, tiled(load_dataset(cfg.dataset), batch_size * 4))
    minimal = MinimalLoop(job)
    state = job.init_state()
    state, _ = harness_seconds(job, state, steps_per_call, 0)   # compile + warm up
    t = time.perf_counter()
    minimal.run(2)
    compile_minimal = time.perf_counter() - t
    h, m = [], []
    for r in range(rounds):
        state, seconds = harness_seconds(job, state, steps, steps_per_call + r * steps)
        h.append(seconds / steps)
        m.append(minimal.run(steps, 2 + r * steps) / steps)
    return {"harness": statistics.median(h), "minimal": statistics.median(m),
            "compile_harness": job.timings.compile_seconds, "compile_minimal": compile_minimal}


def throughput(model: str, batch_sizes: list[int], steps: int) -> list[dict[str, float]]:
    out = []
    cfg = _config(model, max(batch_sizes), min(25, steps))
    data = tiled(load_dataset(cfg.dataset), max(batch_sizes) * 2)
    for b in batch_sizes:
        job = Job(_config(model, b, min(25, steps)), data)
        state = job.init_state()
        state, _ = harness_seconds(job, state, min(25, steps), 0)
        cpu = time.process_time()
        _, seconds = harness_seconds(job, state, steps, 25)
        cpu = time.process_time() - cpu
        per_example = data.tokens_per_example or 1
        out.append({"batch_size": b, "step_ms": 1e3 * seconds / steps,
                    "per_s": b * per_example * steps / seconds,
                    "per_cpu_s": b * per_example * steps / cpu,
                    "compile_s": job.timings.compile_seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="cnn")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (cnn), 16 (transformer)")
    parser.add_argument("--steps", type=int, default=None, help="default: 300 (cnn), 30 (transformer)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-call", type=int, default=25)
    parser.add_argument("--batch-sizes", default=None,
                        help="default: 32..4096 (cnn), 1,4,16,64,256,512 (transformer)")
    parser.add_argument("--throughput-steps", type=int, default=None)
    args = parser.parse_args()
    lm = args.model == "transformer"
    b = args.batch_size or (16 if lm else 128)
    steps = args.steps or (30 if lm else 300)
    sizes = args.batch_sizes or ("1,4,16,64,256,512" if lm else "32,64,128,256,512,1024,2048,4096")
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
          f"model {args.model}  load average {os.getloadavg()[0]:.1f}")
    for spc in sorted({1, args.steps_per_call}):
        res = compare(args.model, b, steps, args.rounds, spc)
        print(f"B={b} steps_per_call={spc:>3}: harness {res['harness'] * 1e3:.3f} ms/step, "
              f"minimal loop {res['minimal'] * 1e3:.3f} ms/step, "
              f"ratio harness/minimal = {res['harness'] / res['minimal']:.3f} (goal <= 1.10); "
              f"compile {res['compile_harness']:.1f} s vs {res['compile_minimal']:.1f} s")
    unit = "tokens" if lm else "examples"
    print(f"\nbatch size   ms/step   {unit}/s   {unit}/CPU-s   compile s")
    for row in throughput(args.model, [int(v) for v in sizes.split(",")],
                          args.throughput_steps or (10 if lm else 50)):
        print(f"{row['batch_size']:>10d}  {row['step_ms']:8.2f}  {row['per_s']:9.0f}  "
              f"{row['per_cpu_s']:12.0f}  {row['compile_s']:9.1f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
