"""Benchmark: harness train-step time vs a minimal hand-written jax + optax loop.

    python -m bench.perf.step [--batch-size 128] [--steps 300] [--batch-sizes 32,64,...,4096]

Both loops train the same model (the default MNIST-1D CNN) on the same device-resident data
with the same optimizer; compile time is excluded (one warm-up call each) and every timed
region ends with ``block_until_ready``. Measurements alternate between the two loops in
several rounds and report medians, since this machine is noisy. Prints the harness / minimal
time ratio (goal <= 1.10) and examples per second for each batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bench.config import from_dict
from bench.data import ArrayDataset, load_dataset
from bench.data.plan import epoch_permutation
from bench.job import Job


def _config(batch_size: int, steps_per_call: int):
    return from_dict({
        "model": {"name": "cnn"},  # the default: Greydanus' CNN
        "batch_size": batch_size, "budget": "1000000steps", "steps_per_call": steps_per_call,
        "logger": {"name": "none"}, "progress": False})


def tiled_mnist1d(min_examples: int) -> ArrayDataset:
    """MNIST-1D repeated until it holds ``min_examples`` training examples (for throughput only)."""
    data = load_dataset(from_dict({}).dataset)
    reps = max(1, -(-min_examples // data.num_train))
    return ArrayDataset("mnist1d", np.concatenate([data.x_train] * reps),
                        np.concatenate([data.y_train] * reps), data.x_test, data.y_test, 10)


class MinimalLoop:
    """What a careful person writes by hand: one jitted step, batch gathered on device."""

    def __init__(self, job: Job):
        model = job.build_model(jax.random.PRNGKey(0))
        graphdef, params = nnx.split(model, nnx.Param)
        tx = optax.sgd(job.replicas[0].peak_lr, momentum=0.9)

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
        spe = self.n // self.b
        t = time.perf_counter()
        for s in range(start, start + steps):
            epoch, pos = divmod(s, spe)
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


def compare(batch_size: int, steps: int, rounds: int, steps_per_call: int) -> dict[str, float]:
    data = tiled_mnist1d(batch_size * 4)
    job = Job(_config(batch_size, steps_per_call), data)
    minimal = MinimalLoop(job)
    state = job.init_state()
    state, _ = harness_seconds(job, state, steps_per_call, 0)   # compile + warm up
    minimal.run(2)
    h, m = [], []
    for r in range(rounds):
        state, seconds = harness_seconds(job, state, steps, steps_per_call + r * steps)
        h.append(seconds / steps)
        m.append(minimal.run(steps, 2 + r * steps) / steps)
    return {"harness": statistics.median(h), "minimal": statistics.median(m)}


def throughput(batch_sizes: list[int], steps: int) -> list[tuple[int, float, float]]:
    out = []
    data = tiled_mnist1d(max(batch_sizes) * 2)
    for b in batch_sizes:
        job = Job(_config(b, min(25, steps)), data)
        state = job.init_state()
        state, _ = harness_seconds(job, state, min(25, steps), 0)
        _, seconds = harness_seconds(job, state, steps, 25)
        out.append((b, seconds / steps, b * steps / seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-call", type=int, default=25)
    parser.add_argument("--batch-sizes", default="32,64,128,256,512,1024,2048,4096")
    parser.add_argument("--throughput-steps", type=int, default=50)
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}")
    for spc in sorted({1, args.steps_per_call}):
        res = compare(args.batch_size, args.steps, args.rounds, spc)
        print(f"B={args.batch_size} steps_per_call={spc:>3}: harness {res['harness'] * 1e3:.3f} ms/step, "
              f"minimal loop {res['minimal'] * 1e3:.3f} ms/step, "
              f"ratio harness/minimal = {res['harness'] / res['minimal']:.3f} (goal <= 1.10)")
    print("\nbatch size   ms/step   examples/s")
    for b, sec, eps in throughput([int(b) for b in args.batch_sizes.split(",")], args.throughput_steps):
        print(f"{b:>10d}  {sec * 1e3:8.2f}  {eps:11.0f}")


if __name__ == "__main__":
    main()
