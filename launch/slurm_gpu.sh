#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task (process) per node, all GPUs of a node in it.
# jax.distributed configures itself from SLURM's environment (parallel.distributed='auto').
#
#   sbatch --nodes=2 launch/slurm_gpu.sh --config=configs/hopadiff.py:features=blip2 \
#       --workdir=/shared/runs/hopadiff --config.data.root=/shared/data/rhas133
#
# Install once on the shared file system: python3 -m venv .venv && .venv/bin/pip install -e '.[text]'
# 'jax[cuda12]'. The workdir and data must be on a file system every node sees.
#SBATCH --job-name=polyseg
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=polyseg-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
srun --kill-on-bad-exit=1 "${PYTHON:-.venv/bin/python}" -m polyseg.main "$@"
