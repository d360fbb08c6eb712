"""A job's clocks and its programs compiled ahead of time, shared by every part of the build.

Timing follows AlgoPerf: programs are compiled ahead of time (:class:`Programs`) and that time
is counted apart; training time is the wall time of the jitted training calls only
(synchronized with the host before the clock stops); evaluation and curvature time are counted
apart as well. Streamed, the wait for the next batches counts as training time: the device
would be idle then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timings:
    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics_seconds: float = 0.0
    resumed_at_steps: list[int] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        return {"compile_seconds": self.compile_seconds, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "metrics_seconds": self.metrics_seconds,
                "total_seconds": time.perf_counter() - self.start,
                "resumed_at_steps": list(self.resumed_at_steps)}

    def restore(self, saved: dict[str, Any], step: int) -> None:
        """Continue the clocks of a checkpointed run (compile time adds up over attempts)."""
        self.compile_seconds += saved["compile_seconds"]
        self.train_seconds = saved["train_seconds"]
        self.eval_seconds = saved["eval_seconds"]
        self.metrics_seconds = saved.get("metrics_seconds", 0.0)
        self.start -= saved["total_seconds"]
        self.resumed_at_steps = [*saved.get("resumed_at_steps", []), step]


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
