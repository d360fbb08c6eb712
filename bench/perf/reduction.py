"""Benchmark: the cost of ``parallel.deterministic_reduction`` (fixed-order gradient sums).

    python -m bench.perf.reduction [--devices 4] [--batch-size 128] [--steps 100] [--rounds 5]
                                   [--blocks 8]

Trains the default MNIST-1D CNN twice in one process on ``--devices`` simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``, set here before JAX starts), once with
XLA's all-reduce (the default) and once with the fixed-order sum over ``--blocks`` blocks;
compile time is excluded (one warm-up call each) and printed apart. Rounds alternate between
the two and the medians are compared: prints the on / off step-time ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps-per-call", type=int, default=25)
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    import jax

    from bench.core.job import Job
    from bench.data import load_dataset
    from bench.hydra_conf import compose_config
    from bench.perf.step import harness_seconds, tiled

    def job(deterministic: bool) -> Job:
        cfg = compose_config([f"batch_size={args.batch_size}", "budget=1000000steps", "logger=none",
                              "progress=false", f"steps_per_call={args.steps_per_call}",
                              f"parallel.deterministic_reduction={str(deterministic).lower()}",
                              f"parallel.reduction_blocks={args.blocks}"])
        return Job(cfg, tiled(load_dataset(cfg.dataset), args.batch_size * 4))

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
          f"B={args.batch_size} blocks={args.blocks}  load average {os.getloadavg()[0]:.1f}")
    jobs = {"off": job(False), "on": job(True)}
    states = {k: j.init_state() for k, j in jobs.items()}
    for k, j in jobs.items():   # compile and warm up
        states[k], _ = harness_seconds(j, states[k], args.steps_per_call, 0)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(args.rounds):
        start = args.steps_per_call + r * args.steps
        for k, j in jobs.items():
            states[k], seconds = harness_seconds(j, states[k], args.steps, start)
            times[k].append(seconds / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in jobs:
        print(f"deterministic_reduction={k:>3}: {med[k] * 1e3:.3f} ms/step (median of {args.rounds}), "
              f"compile {jobs[k].timings.compile_seconds:.1f} s")
    print(f"ratio on / off = {med['on'] / med['off']:.3f}")


if __name__ == "__main__":
    main()
