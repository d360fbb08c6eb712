"""Benchmark: the streamed input pipeline alone, and training streamed vs in memory.

    python -m bench.perf.input [--data <exported dir>] [--batch-size 128] [--steps 100]
                               [--threads 4] [--prefetch 8] [--workers 0]

On CIFAR-size data (default: 4,096 random 32 x 32 x 3 float32 images, 10 classes, exported as
ArrayRecord to a temporary directory; or ``--data``, any ``python -m bench.data.export``
directory) it prints

1. input pipeline examples/s alone (grain over ArrayRecord, one replica, the plan's order),
   without augmentation and with ``augment=cifar`` (pad-crop-flip per example);
2. training time per step at batch size B for the 2-D CNN (model=cnn) and the CIFAR ResNet-8
   (model=resnet), in memory and streamed from the same files (same seed, same batches), and
   their ratio (goal <= 1.10: the loader is never the bottleneck), and the loader's headroom
   (pipeline examples/s over the examples/s training consumes). Streamed time includes waiting
   for the next batches. Compile time is excluded and printed apart; calls alternate between
   the two loaders in rounds, and the ratio is the median over rounds of adjacent calls' ratios,
   since this machine is noisy.

The grain settings used (reader threads, prefetch buffer, worker processes) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.config import from_dict
from bench.data.base import ArrayDataset
from bench.data.export import export
from bench.rules.plan import BatchPlan
from bench.data.stream import LocalSlice, StreamOptions, TrainStream, exported_stream
from bench.data.augment import Augment


def cifar_like(num_train: int = 4096, num_test: int = 512, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_train + num_test, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, num_train + num_test).astype(np.int32)
    return ArrayDataset("cifar_like", x[:num_train], y[:num_train], x[num_train:], y[num_train:], 10)


def input_rate(path: str, batch: int, steps: int, options: StreamOptions, augment: Augment) -> float:
    """Examples/s of the pipeline alone: steps of one replica read and stacked on the host."""
    data = exported_stream(path, augment)
    plan = BatchPlan([0], data.num_train, batch, budget=(steps + 10, "steps"))
    stream = TrainStream(data, plan, LocalSlice(0, 1, 1), options)
    stream.take(0, 10)  # threads started, first reads done
    t = time.perf_counter()
    for s in range(10, steps + 10, 10):
        stream.take(s, 10)
    rate = steps * batch / (time.perf_counter() - t)
    stream.close()
    return rate


def step_times(path: str, model: dict, batch: int, steps_per_call: int, rounds: int,
               options: StreamOptions) -> dict[str, float]:
    """Median seconds per training step, in memory and streamed, alternating calls."""
    from bench.core.job import Job

    jobs, states, step = {}, {}, {}
    for loader in ("memory", "stream"):
        cfg = from_dict({
            "dataset": {"name": "arrayrecord", "path": path, "loader": loader,
                        "threads": options.threads, "prefetch": options.prefetch,
                        "workers": options.workers},
            "model": model, "batch_size": batch, "budget": "1000000steps",
            "steps_per_call": steps_per_call, "logger": {"name": "none"}, "progress": False})
        jobs[loader] = Job(cfg)
        states[loader], _ = jobs[loader].train(jobs[loader].init_state(), 0, steps_per_call)  # compiles
        step[loader] = steps_per_call
    times: dict[str, list[float]] = {"memory": [], "stream": []}
    for _ in range(rounds):
        for loader, job in jobs.items():
            t = time.perf_counter()
            states[loader], _ = job.train(states[loader], step[loader], steps_per_call)
            times[loader].append((time.perf_counter() - t) / steps_per_call)
            step[loader] += steps_per_call
    out = {loader: statistics.median(v) for loader, v in times.items()}
    # the ratio of adjacent calls, then the median: load drifting between rounds cancels
    out["ratio"] = statistics.median(s / m for s, m in zip(times["stream"], times["memory"]))
    out["compile"] = {loader: job.timings.compile_seconds for loader, job in jobs.items()}  # type: ignore[assignment]
    for job in jobs.values():
        job.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perf.input", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="an exported directory (default: CIFAR-size random)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="steps timed for the pipeline alone")
    parser.add_argument("--rounds", type=int, default=8, help="timed training calls per loader")
    parser.add_argument("--steps-per-call", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    options = StreamOptions(threads=args.threads, prefetch=args.prefetch, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or str(Path(tmp) / "cifar_like")
        if args.data is None:
            export(cifar_like(), path)
        data = exported_stream(path)
        print(f"data: {data.name}, {data.num_train} train examples of {data.input_shape}, B = {args.batch_size}")
        print(f"grain: threads={options.threads} prefetch={options.prefetch} (steps) workers={options.workers}")
        rates = {}
        for aug in (Augment(), Augment("cifar")):
            rates[aug.kind] = input_rate(path, args.batch_size, args.steps, options, aug)
            print(f"input pipeline alone, augment={aug.kind:5s}: {rates[aug.kind]:10,.0f} examples/s")
        models = {"cnn": {"name": "cnn"}, "resnet": {"name": "resnet", "depth": 8}}
        for name, model in models.items():
            t = step_times(path, model, args.batch_size, args.steps_per_call, args.rounds, options)
            used = args.batch_size / t["memory"]   # examples/s training consumes
            print(f"{name:6s} step: in memory {t['memory'] * 1e3:8.2f} ms, streamed {t['stream'] * 1e3:8.2f} ms, "
                  f"ratio {t['ratio']:.3f} (median of paired calls); loader headroom "
                  f"{rates['none'] / used:.1f}x  (compile s: memory {t['compile']['memory']:.1f}, "
                  f"streamed {t['compile']['stream']:.1f})")


if __name__ == "__main__":
    main()
