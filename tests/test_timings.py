"""The wall-time breakdown: start-up is the process's age when the job is set up, and the
summary line's parts add up to the wall it reports."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.core.progress import time_line
from bench.core.timings import Timings


def test_startup_clock_counts_the_process_before_the_job():
    code = ("import time; time.sleep(0.5); from bench.core.timings import Timings; "
            "print(Timings().startup_seconds)")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert age >= 0.5  # the sleep happened before the job's clocks began


def test_time_line_parts_add_up_to_the_wall():
    t = {"startup_seconds": 4.0, "data_seconds": 1.0, "compile_seconds": 2.0,
         "train_seconds": 5.0, "eval_seconds": 1.5, "metrics_seconds": 0.5, "total_seconds": 12.0}
    line = time_line(t)
    seconds = [float(x) for x in re.findall(r"(?:start-up|data|compile|train|eval|metrics|other) "
                                            r"([\d.]+)s", line)]
    assert len(seconds) == 7 and sum(seconds) == pytest.approx(16.0)
    assert "wall 16.0s" in line and "train 31%" in line and "eval 9%" in line


def test_restore_adds_the_attempts_loading_and_startup():
    t = Timings(data_seconds=1.0, startup_seconds=2.0)
    t.restore({"compile_seconds": 3.0, "train_seconds": 4.0, "eval_seconds": 0.5,
               "data_seconds": 1.5, "startup_seconds": 2.5, "total_seconds": 9.0}, step=10)
    d = t.as_dict()
    assert d["data_seconds"] == 2.5 and d["startup_seconds"] == 4.5 and d["train_seconds"] == 4.0
    assert d["total_seconds"] >= 9.0 and d["resumed_at_steps"] == [10]
