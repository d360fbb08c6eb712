"""Benchmark: training-step time and tokens/s of the transformer LM with a minimal jax + optax loop.

    python -m bench.perf.lm_step [--preset tiny] [--context 128] [--batch-sizes 1,4,16,64]

A hand-written loop (one jitted AdamW step with the weight-decay mask, batch gathered on
device from byte-level markov data), so the number is the model's cost, not the harness's.
Compile time is reported apart (the first call); each timed region ends with
``block_until_ready``; per batch size, several rounds of at least ``--seconds`` each, median.
Prints the load average and tokens per CPU-second of this process too: on a shared machine
wall-clock numbers move with the load; CPU time moves much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench.data.markov import load_markov
from bench.models.transformer import from_preset, num_params, weight_decay_mask


def make_step(graphdef, tx):
    def loss_fn(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, opt_state, x_all, y_all, idx):
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    return step


def measure(preset: str, context: int, batch_size: int, seconds: float, rounds: int) -> dict:
    data, _ = load_markov(context=context, num_train=max(1024, 4 * batch_size), num_test=16)
    x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    model = from_preset(preset, vocab_size=data.num_classes, context=context, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1, mask=weight_decay_mask)
    opt_state = tx.init(params)
    step = make_step(graphdef, tx)
    key = jax.random.key(1)

    def batch(i):
        return jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, len(x_all))

    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, x_all, y_all, batch(0))
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    indices = [batch(i) for i in range(1, 64)]
    jax.block_until_ready(indices)
    per_step, cpu_per_step = [], []
    for _ in range(rounds):
        n, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while True:
            params, opt_state, loss = step(params, opt_state, x_all, y_all, indices[n % len(indices)])
            n += 1
            if n >= 3 and time.perf_counter() - start >= seconds:
                jax.block_until_ready((params, loss))
                break
        per_step.append((time.perf_counter() - start) / n)
        cpu_per_step.append((time.process_time() - cpu_start) / n)
    step_s, cpu_s = statistics.median(per_step), statistics.median(cpu_per_step)
    return {"batch_size": batch_size, "compile_s": compile_s, "step_ms": 1e3 * step_s,
            "tokens_per_s": batch_size * context / step_s,
            "tokens_per_cpu_s": batch_size * context / cpu_s, "params": num_params(params),
            "final_loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
          f"load average {os.getloadavg()[0]:.1f}; preset {args.preset}, T = {args.context}")
    print(f"{'B':>5} {'params':>10} {'compile s':>10} {'step ms':>9} {'tokens/s':>10} "
          f"{'tokens/CPU-s':>13}")
    for b in (int(v) for v in args.batch_sizes.split(",")):
        r = measure(args.preset, args.context, b, args.seconds, args.rounds)
        print(f"{b:>5} {r['params']:>10,} {r['compile_s']:>10.1f} {r['step_ms']:>9.1f} "
              f"{r['tokens_per_s']:>10,.0f} {r['tokens_per_cpu_s']:>13,.0f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
