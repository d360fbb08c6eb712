"""A job's clocks and its programs compiled ahead of time, shared by every part of the build.

Timing follows AlgoPerf: programs are compiled ahead of time (:class:`Programs`) and that time
is counted apart; training time is the wall time of the jitted training calls only
(synchronized with the host before the clock stops); evaluation and curvature time are counted
apart as well. Streamed, the wait for the next batches counts as training time: the device
would be idle then. ``startup_seconds`` is the process's life before the job was set up
(interpreter, imports, Hydra composition, pre-flight checks) and ``data_seconds`` the loading
of the dataset; what no clock covers (placing arrays, tracking, writing records and
checkpoints) is ``total_seconds`` minus the named parts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timings:
    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics_seconds: float = 0.0
    data_seconds: float = 0.0
    startup_seconds: float = field(default_factory=lambda: process_age())
    resumed_at_steps: list[int] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        return {"compile_seconds": self.compile_seconds, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "metrics_seconds": self.metrics_seconds,
                "data_seconds": self.data_seconds, "startup_seconds": self.startup_seconds,
                "total_seconds": time.perf_counter() - self.start,
                "resumed_at_steps": list(self.resumed_at_steps)}

    def restore(self, saved: dict[str, Any], step: int) -> None:
        """Continue the clocks of a checkpointed run (compile time adds up over attempts)."""
        self.compile_seconds += saved["compile_seconds"]
        self.train_seconds = saved["train_seconds"]
        self.eval_seconds = saved["eval_seconds"]
        self.metrics_seconds = saved.get("metrics_seconds", 0.0)
        self.data_seconds += saved.get("data_seconds", 0.0)  # like compile: every attempt loads
        self.startup_seconds += saved.get("startup_seconds", 0.0)
        self.start -= saved["total_seconds"]
        self.resumed_at_steps = [*saved.get("resumed_at_steps", []), step]


def process_age() -> float:
    """Seconds since this process started (the operating system's start time; 0.0 where it
    cannot be read)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process(os.getpid()).create_time())
    except Exception:  # noqa: BLE001 -- no psutil, or no access: the clock is only unknown
        return 0.0


class Programs:
    """Jitted functions compiled for their arguments once per key, compile time counted in
    ``timings.compile_seconds`` (so no compile lands in a training or evaluation clock)."""

    def __init__(self, timings: Timings):
        self.timings = timings
        self._compiled: dict[Any, Callable] = {}

    def compile(self, key: Any, fn: Callable, *args: Any) -> Callable:
        if key not in self._compiled:
            t = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile()
            self.timings.compile_seconds += time.perf_counter() - t
        return self._compiled[key]

    def keys(self) -> list[Any]:
        return list(self._compiled)
