"""jax.distributed from SLURM's variables: what srun sets for each task, and the known pitfalls
(job-level variables without srun, partial variables, one task driving several GPUs,
--gpus-per-task)."""

from __future__ import annotations

import re

import pytest

from bench.core.parallel import first_host, local_gpu_ids, slurm_distributed_args, tasks_on_node
from test_slurm import conf_dir  # noqa: F401 -- fixture

# srun -N 2 --ntasks-per-node=4 --gpus-per-node=4 (every GPU visible to every task)
STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[017-018]",
        "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2", "SLURM_NODEID": "1", "SLURM_NTASKS": "8",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_one_process_per_gpu():
    args = slurm_distributed_args(STEP)
    assert args == {"coordinator_address": "gpu017:" + args["coordinator_address"].split(":")[1],
                    "num_processes": 8, "process_id": 6, "local_device_ids": [2]}
    assert 61440 <= int(args["coordinator_address"].split(":")[1]) < 65536


def test_one_process_per_node_drives_every_gpu():
    env = {**STEP, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    assert slurm_distributed_args(env)["local_device_ids"] is None   # JAX alone: [0], one GPU


def test_gpus_per_task_narrowed_visibility():
    # --gpus-per-task=1: SLURM sets CUDA_VISIBLE_DEVICES to the task's one GPU
    env = {**STEP, "CUDA_VISIBLE_DEVICES": "2", "SLURM_GPUS_PER_TASK": "1"}
    assert slurm_distributed_args(env)["local_device_ids"] is None   # JAX alone: [2], absent
    env = {**STEP, "CUDA_VISIBLE_DEVICES": "4,5", "SLURM_GPUS_PER_TASK": "gpu:2"}
    assert slurm_distributed_args(env)["local_device_ids"] is None


def test_two_gpus_per_task_all_visible():
    assert local_gpu_ids({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, 4, 3) == [6, 7]
    assert local_gpu_ids({}, 4, 3) is None   # CPU nodes: every local device


@pytest.mark.parametrize("missing", ["SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                                     "SLURM_LOCALID", "SLURM_JOB_ID"])
def test_partially_set_variables_are_not_a_step(missing):
    env = {k: v for k, v in STEP.items() if k != missing}
    assert slurm_distributed_args(env) is None


def test_batch_shell_or_single_task_step_is_not_distributed():
    # python run in the sbatch script itself: the job has 8 tasks, this step has one
    batch_shell = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP_")}
    assert slurm_distributed_args(batch_shell) is None
    assert slurm_distributed_args({**STEP, "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_steps_of_one_job_get_different_ports_and_the_override_wins():
    ports = {slurm_distributed_args({**STEP, "SLURM_STEP_ID": str(s)})["coordinator_address"]
             for s in range(3)}
    assert len(ports) == 3
    env = {**STEP, "JAX_COORDINATOR_PORT": "12345"}
    assert slurm_distributed_args(env)["coordinator_address"] == "gpu017:12345"


def test_node_lists_and_task_counts():
    assert first_host("node[003-005,9],gpu1") == "node003"
    assert first_host("a1,b2") == "a1" and first_host("solo") == "solo"
    assert tasks_on_node("2(x3),1", 3) == 1 and tasks_on_node("4", 0) == 4


def test_multinode_launcher_preset_sbatch_lines(conf_dir, tmp_path, monkeypatch):
    """The preset through hydra-submitit-launcher up to `sbatch`: nodes, one task per GPU, srun."""
    from test_slurm import LAUNCHERS, _sbatch_lines, _sbatch_text

    monkeypatch.setenv("SBATCH_PARTITION", "h100")
    text = _sbatch_text(conf_dir, tmp_path, "slurm_multinode", 2, monkeypatch,
                        extra=["hydra.launcher.nodes=4", "hydra.launcher.tasks_per_node=8"])
    sb = _sbatch_lines(text)
    assert (sb["partition"], sb["nodes"], sb["ntasks-per-node"], sb["gpus-per-task"]) == ("h100", "4", "8", "1")
    assert "gpus-per-node" not in sb and "requeue" in sb and sb["signal"].endswith("@300")
    assert re.search(r"^srun .* -m submitit\.core\._submit ", text, flags=re.M)
    head = (LAUNCHERS / "slurm_multinode.yaml").read_text().split("defaults:")[0]
    assert "hydra/launcher=slurm_multinode" in head and "python -m bench.train -m" in head
