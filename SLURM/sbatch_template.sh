#!/bin/bash
# batch-bench: a SLURM job array over a file of override lines, without the Hydra launcher.
#
# Each non-empty, non-comment line of JOBS_FILE holds the Hydra overrides of one job, e.g.
#     dataset=mnist1d model=mlp batch_size=32 optimizer.lr=0.05
#     dataset=mnist1d model=mlp batch_size=512 optimizer.lr=0.4
# Array task i runs line i (0-based) as
#     srun python -m bench.train <line i> hydra.run.dir=SWEEP_DIR/i
#
# Submit (N = number of job lines; %16 = at most 16 tasks at once):
#     N=$(grep -cvE '^[[:space:]]*(#|$)' jobs.txt)
#     sbatch --array=0-$((N - 1))%16 SLURM/sbatch_template.sh jobs.txt results/my_sweep
# Status, and re-submitting only what is missing (finished jobs exit at once):
#     python -m bench.tools.status results/my_sweep
#     sbatch --array=<missing task ids>%16 SLURM/sbatch_template.sh jobs.txt results/my_sweep
#
# Preemption / time limit: SLURM sends SIGUSR1 to the python process 120 s before the
# limit (--signal below). bench.core.preemption saves an orbax checkpoint, writes the record
# (status "running") and runs `scontrol requeue <array job>_<task>`; the requeued task
# reruns this script with the same arguments and resumes from the checkpoint in
# SWEEP_DIR/i. (SIGUSR2, submitit's choice because old NCCL builds caught USR1, works the
# same: write --signal=USR2@120.) --requeue makes the job eligible for requeue.
#
# EDIT for your cluster: partition, account (or export SBATCH_PARTITION / SBATCH_ACCOUNT,
# which sbatch reads), GPUs, memory, time. A command-line option overrides a #SBATCH line.
#SBATCH --job-name=batch-bench
#SBATCH --partition=gpu
##SBATCH --account=MY_ACCOUNT
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%A_%a.out
#SBATCH --error=slurm-%A_%a.err

set -euo pipefail

JOBS_FILE=${1:?usage: sbatch --array=0-N SLURM/sbatch_template.sh JOBS_FILE [SWEEP_DIR]}
SWEEP_DIR=${2:-results/sbatch_${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}}
TASK_ID=${SLURM_ARRAY_TASK_ID:-0}
PYTHON=${PYTHON:-python}

# The line is split like a shell command line (quoted values keep their spaces) by
# bench.tools.jobs_file, the parser bench.tools.status uses too; nothing in it is expanded or run:
# $(...), backticks, ; and $VAR reach bench.train as the text they are.
ARGS_FILE=$(mktemp)
trap 'rm -f "$ARGS_FILE"' EXIT
"$PYTHON" -m bench.tools.jobs_file args "$JOBS_FILE" "$TASK_ID" > "$ARGS_FILE"
mapfile -d '' -t OVERRIDES < "$ARGS_FILE"

# Record the expected jobs for `python -m bench.tools.status` (atomic rename; same content
# from every task).
mkdir -p "$SWEEP_DIR"
cp "$JOBS_FILE" "$SWEEP_DIR/.jobs.txt.$TASK_ID" && mv -f "$SWEEP_DIR/.jobs.txt.$TASK_ID" "$SWEEP_DIR/jobs.txt"
# ... and the array's id, so bench.tools.status can ask squeue about tasks still pending/requeued
# (one id per submission; appending the same id twice is harmless).
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]] && ! grep -qx "$SLURM_ARRAY_JOB_ID" "$SWEEP_DIR/.slurm_array_ids" 2>/dev/null; then
    echo "$SLURM_ARRAY_JOB_ID" >> "$SWEEP_DIR/.slurm_array_ids"
fi

export WANDB_MODE=${WANDB_MODE:-offline}
echo "batch-bench: job ${SLURM_JOB_ID:-?} task $TASK_ID restart ${SLURM_RESTART_COUNT:-0} on $(hostname)"
echo "batch-bench: overrides: ${OVERRIDES[*]}"

# srun: the --signal above reaches job steps (not the batch shell), i.e. this python.
# Multi-node (--nodes>1, one task per node): each task is one JAX process;
# jax.distributed.initialize() reads SLURM's variables.
srun --unbuffered "$PYTHON" -m bench.train "${OVERRIDES[@]}" "hydra.run.dir=$SWEEP_DIR/$TASK_ID"
