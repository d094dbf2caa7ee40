#!/bin/bash
# Eight workers write one checkpoint into a shared folder: sbatch examples/slurm-array.sh
# Worker K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; the array must be
# a contiguous range (a %limit such as --array=0-7%4 is fine). Whichever task finishes last writes
# the index. A failed task can simply be resubmitted (sbatch --array=5 ...): it skips its complete
# files. Every task must run the same netinit and numpy versions.
#SBATCH --job-name=netinit
#SBATCH --array=0-7
#SBATCH --cpus-per-task=8
#SBATCH --output=netinit-%A_%a.log
set -euo pipefail
mkdir -p ckpt
export NETINIT_THREADS="${SLURM_CPUS_PER_TASK:-8}"
netinit --like manifest.json -o ckpt/model.safetensors.index.json --seed 1234 --shard auto
