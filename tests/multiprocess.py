"""Launch ``python -m bench.train`` as N JAX processes on this machine (the ``distributed.*``
keys, gloo CPU collectives), each with its share of simulated CPU devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from conftest import REPO

EVAL_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(processes: int, devices: int, args: Sequence[str], out: Path,
          env: dict[str, str] | None = None, own_dirs: bool = False) -> list[subprocess.Popen]:
    """``processes`` processes with ``devices // processes`` CPU devices each, one job
    (``own_dirs``: process i > 0 is given ``<out>-p<i>`` as its output_dir, as unsynchronized
    Hydra timestamps would)."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices // processes}", **(env or {})}
    procs = []
    for i in range(processes):
        dist = ([f"distributed.coordinator=127.0.0.1:{port}", f"distributed.num_processes={processes}",
                 f"distributed.process_id={i}"] if processes > 1 else [])
        mine = out if i == 0 or not own_dirs else out.with_name(f"{out.name}-p{i}")
        cmd = [sys.executable, "-m", "bench.train", *args, *dist, f"output_dir={mine}",
               f"hydra.run.dir={out}/.hydra-run/p{i}"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    """Wait for every process; their stderr. A failure kills the others and raises."""
    errs = []
    deadline = time.time() + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        errs.append(err)
        if p.returncode != 0:
            for q in procs:
                q.kill()
            raise AssertionError(f"process exited with {p.returncode}:\n{err[-3000:]}")
    return errs


def run(processes: int, devices: int, args: Sequence[str], out: Path,
        env: dict[str, str] | None = None, own_dirs: bool = False) -> list[str]:
    return finish(start(processes, devices, args, out, env, own_dirs))


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("record_r*.json"))]


def eval_table(record: dict) -> np.ndarray:
    return np.array([[row[k] for k in EVAL_KEYS] for row in record["history"]])


def wait_for_history(out: Path, rows: int, timeout: float = 600) -> None:
    """Until process 0's record holds ``rows`` evaluations (training has visibly started)."""
    path, deadline = out / "record_r0.json", time.time() + timeout
    while time.time() < deadline:
        try:
            if len(json.loads(path.read_text())["history"]) >= rows:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not reach {rows} evaluations")
