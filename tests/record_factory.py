"""Constructed run records for tests and demos (no training): ``bench.record`` schema,
written with ``bench.record.write_record``.

``make_record`` builds one record from explicit eval rows; ``eval_rows`` draws a plausible
learning curve; ``synthetic_sweep`` writes a whole batch-size sweep whose answers are known:
steps-to-target follows ``S = s_min (1 + b_noise / B)`` at the best LR, the test accuracy
drops and the sharpness grows with B, and the sharpness in the history rises to 2/lr and
stays there (edge of stability).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import config_hash, empty_record, record_filename, write_record

SCALING_RULES = {"none": lambda b, ref: 1.0, "linear": lambda b, ref: b / ref,
                 "sqrt": lambda b, ref: math.sqrt(b / ref)}


def make_record(*, batch_size: int, history: Sequence[dict[str, Any]], seed: int = 0,
                base_lr: float = 0.1, peak_lr: float | None = None, scaling: str = "linear",
                status: str = "finished", curvature: dict[str, Any] | None = None,
                dataset: str = "mnist1d", model: str = "mlp", optimizer: str = "sgd",
                schedule: str = "constant", num_train: int = 4000, num_test: int = 1000,
                replica_index: int = 0, replica_count: int = 1,
                target_test_accuracy: float | None = None) -> dict[str, Any]:
    """A complete run record; ``final`` is the last eval row, convergence is filled from
    ``target_test_accuracy`` when given."""
    peak_lr = base_lr if peak_lr is None else peak_lr
    config = {"dataset": {"name": dataset}, "model": {"name": model},
              "optimizer": {"name": optimizer}, "scaling": {"name": scaling},
              "schedule": {"name": schedule}, "batch_size": batch_size,
              "lrs": [base_lr], "seeds": [seed]}
    history = [dict(h) for h in history]
    rec = empty_record()
    steps_per_epoch = num_train // batch_size
    rec.update(
        run_id=f"{config_hash({**config, 'peak_lr': peak_lr, 'seed': seed})}-r{replica_index}",
        status=status, config=config,
        replica={"index": replica_index, "count": replica_count, "seed": seed,
                 "base_lr": base_lr, "peak_lr": peak_lr},
        experiment={"dataset": dataset, "model": model, "optimizer": optimizer,
                    "scaling": scaling, "schedule": schedule, "batch_size": batch_size,
                    "num_train": num_train, "num_test": num_test, "num_params": 12345,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": int(history[-1]["step"]) if history else 0},
        environment={"python": "3.11", "platform": "cpu"},
        history=history, final=history[-1] if history else None, curvature=curvature,
        timings={"compile_seconds": 1.0, "train_seconds": 10.0, "eval_seconds": 2.0,
                 "total_seconds": 13.0},
    )
    conv = {"target_test_accuracy": target_test_accuracy, "steps_to_target": None,
            "examples_to_target": None, "seconds_to_target": None, "target_train_loss": None,
            "steps_to_train_loss": None, "examples_to_train_loss": None,
            "seconds_to_train_loss": None}
    if target_test_accuracy is not None:
        hit = next((h for h in history if h["test_accuracy"] >= target_test_accuracy), None)
        if hit is not None:
            conv.update(steps_to_target=hit["step"], examples_to_target=hit["step"] * batch_size,
                        seconds_to_target=hit.get("train_seconds"))
    rec["convergence"] = conv
    if status == "diverged":
        rec["diverged_at_step"] = int(history[-1]["step"]) if history else 0
    return rec


def eval_rows(steps: Iterable[int], *, batch_size: int, lr: float, test_final: float,
              train_final: float, tau: float, sharpness_final: float | None = None,
              sharpness_tau: float | None = None, acc0: float = 0.1) -> list[dict[str, Any]]:
    """Eval rows of a saturating learning curve: accuracy ``final - (final - acc0) e^(-t/tau)``;
    with ``sharpness_final`` the rows carry ``hessian_top_eigenvalue`` rising as
    ``sharpness_final (1 - e^(-t/sharpness_tau))`` and ``two_over_lr``."""
    rows = []
    for t in steps:
        decay = math.exp(-t / tau)
        test_acc = test_final - (test_final - acc0) * decay
        train_acc = train_final - (train_final - acc0) * decay
        train_loss = 0.05 + 2.25 * decay
        test_loss = train_loss + 0.1 + 2.0 * (train_acc - test_acc)
        row = {"step": int(t), "epoch": t * batch_size / 4000, "examples": int(t * batch_size),
               "train_seconds": 0.01 * t, "lr": lr, "batch_size": batch_size,
               "train_loss": train_loss, "train_accuracy": train_acc, "test_loss": test_loss,
               "test_accuracy": test_acc, "gap_loss": test_loss - train_loss,
               "gap_accuracy": train_acc - test_acc}
        if sharpness_final is not None:
            row["hessian_top_eigenvalue"] = sharpness_final * (1 - math.exp(-(t + 1) / (sharpness_tau or tau)))
            row["two_over_lr"] = 2.0 / lr
        rows.append(row)
    return rows


def write_records(root: Path | str, records: Iterable[dict[str, Any]]) -> list[Path]:
    """Write each record as ``<root>/<job>/record_r<i>.json`` (job = run_id sans replica)."""
    paths = []
    for rec in records:
        job = rec["run_id"].rsplit("-r", 1)[0]
        path = Path(root) / job / record_filename(rec["replica"]["index"])
        write_record(path, rec)
        paths.append(path)
    return paths


def sweep_steps(batch_size: float, s_min: float = 200.0, b_noise: float = 256.0) -> float:
    """McCandlish steps-to-target at the best LR used by ``synthetic_sweep``."""
    return s_min * (1 + b_noise / batch_size)


def synthetic_sweep(root: Path | str, *, batch_sizes: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024),
                    seeds: Sequence[int] = (0, 1, 2), rules: Sequence[str] = ("none", "linear", "sqrt"),
                    base_lrs: Sequence[float] = (0.05, 0.1), target: float = 0.9,
                    s_min: float = 200.0, b_noise: float = 256.0, evals: int = 60,
                    accuracy_drop_per_doubling: float = 0.005) -> list[Path]:
    """Write a sweep (every rule x base LR x B x seed) of finished runs into ``root``.

    Known answers: at base LR 0.1 with the linear rule the steps to ``target`` test
    accuracy are ``sweep_steps(B)`` (other settings are slower); the final test accuracy
    falls by ``accuracy_drop_per_doubling`` per doubling of B; the sharpness
    (``hessian_top_eigenvalue`` final) grows as ``10 sqrt(B / B0)``; ``noise_scale_simple``
    is ``b_noise`` (x seed noise). The history sharpness is an independent knob: it rises to
    ``2.05 / lr`` (edge of stability), while the final ``curvature`` holds the values above.
    """
    rng = np.random.default_rng(0)
    b0, records = min(batch_sizes), []
    worst = 0.95 - accuracy_drop_per_doubling * math.log2(max(batch_sizes) / b0) - 0.005
    if worst <= target:
        raise ValueError(f"target {target} is not reachable at the largest batch size "
                         f"(final test accuracy ~{worst + 0.005:.3f}); lower the drop or the target")
    for rule in rules:
        for base_lr in base_lrs:
            for b in batch_sizes:
                lr = base_lr * SCALING_RULES[rule](b, b0)
                slow = (1.0 if rule == "linear" else 1.6) * (1.0 if base_lr == 0.1 else 1.3)
                doublings = math.log2(b / b0)
                for seed in seeds:
                    noise = 1 + 0.02 * abs(rng.standard_normal())  # >= 1: seed 0 is the fastest
                    test_final = 0.95 - accuracy_drop_per_doubling * doublings + 0.001 * rng.standard_normal()
                    s_target = sweep_steps(b, s_min, b_noise) * slow * (1 if seed == seeds[0] else noise)
                    # choose tau so that the curve crosses `target` exactly at s_target
                    tau = (s_target - 1e-6) / math.log((test_final - 0.1) / (test_final - target))
                    total = int(3 * sweep_steps(b, s_min, b_noise))
                    grid = np.unique(np.linspace(0, total, evals).astype(int))
                    grid = np.unique(np.concatenate([grid, [math.ceil(s_target)]]))
                    sharp = 10 * math.sqrt(b / b0) * noise
                    rows = eval_rows(grid, batch_size=b, lr=lr, test_final=test_final,
                                     train_final=0.995, tau=tau, sharpness_final=2.05 / lr,
                                     sharpness_tau=total / 8)
                    curvature = {"hessian_top_eigenvalue": sharp, "hessian_trace": 40 * sharp,
                                 "sharpness_full_eps1e-03": 5 * sharp * math.sqrt(b / b0),
                                 "noise_scale_simple": b_noise * noise}
                    records.append(make_record(
                        batch_size=b, history=rows, seed=seed, base_lr=base_lr, peak_lr=lr,
                        scaling=rule, curvature=curvature, target_test_accuracy=target,
                        replica_index=seeds.index(seed), replica_count=len(seeds)))
    return write_records(root, records)


def interruption_invariant(record: dict) -> dict:
    """What must not depend on an interruption (signal, requeue, resume): everything but wall
    times, the environment and the output directory."""
    def untimed(x):
        if isinstance(x, dict):
            return {k: untimed(v) for k, v in x.items() if "seconds" not in k}
        return [untimed(v) for v in x] if isinstance(x, list) else x
    config = {k: v for k, v in record["config"].items() if k != "output_dir"}
    return untimed({k: record[k] for k in ("run_id", "status", "history", "final", "convergence",
                                          "curvature")} | {"config": config})
