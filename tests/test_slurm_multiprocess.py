"""JAX's multi-controller runtime under a real SLURM: ``srun -n 2 python -m bench.train``
starts two processes that find each other from SLURM's step variables alone (no
``distributed.*`` keys) and give the record of one process with all four devices.

CI starts a one-node cluster (``SLURM/local_cluster.sh start``); where none answers, the test
is skipped with the reason (tests/test_slurm_cluster.py's check).
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO
from multiprocess import records, run
from test_multiprocess import ARGS, _same, exported, streamed  # noqa: F401 -- fixture
from test_slurm_cluster import partition  # noqa: F401 -- fixture


def test_srun_two_tasks_equal_one_process(tmp_path, exported, partition):  # noqa: F811
    run(1, 4, [*ARGS, *streamed(exported)], tmp_path / "one")
    out = tmp_path / "srun"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cmd = ["srun", f"--partition={partition}", "--nodes=1", "--ntasks=2", "--cpus-per-task=1",
           "--mem-per-cpu=1500M", "--time=15", "--kill-on-bad-exit=1",
           sys.executable, "-m", "bench.train", *ARGS, *streamed(exported), f"output_dir={out}",
           f"hydra.run.dir={out}/.hydra-run"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same(tmp_path / "one", out)
    env = records(out)[0]["environment"]   # one job of two processes, not two jobs of one
    assert (env["process_count"], env["device_count"], env["local_device_count"]) == (2, 4, 2)
    assert env["slurm_job_id"]
