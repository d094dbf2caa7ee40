#!/bin/bash
# Eight workers write one new model folder (as save_pretrained would) into a shared folder, from a
# transformers config: sbatch examples/slurm-array.sh
# Worker K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; the array must be
# a contiguous range (a %limit such as --array=0-7%4 is fine). Each task writes its weight files into
# ckpt/ (the first creates it); whichever finishes last writes config.json and then the index. A failed
# task can simply be resubmitted (sbatch --array=5 ...): it skips its complete files. Every task must
# run the same netinit, numpy and transformers versions (pip install 'netinit[hf]').
#SBATCH --job-name=netinit
#SBATCH --array=0-7
#SBATCH --cpus-per-task=8
#SBATCH --output=netinit-%A_%a.log
set -euo pipefail
export NETINIT_THREADS="${SLURM_CPUS_PER_TASK:-8}"
netinit --like config.json -o ckpt/ --dtype bf16 --max-shard-size 5GB --seed 1234 --shard auto
