#!/usr/bin/env bash
# Run one command on one GPU node, all its GPUs in one JAX process.
#
# Usage:
#   launch/gpu.sh [--dry_run] [--gpus=0,1,...] -- python -m ram_jax.main --config=... --workdir=...
#
# One process sees every local GPU (jax.devices()); the config's mesh splits
# them. XLA flags live here, not in Python: the latency-hiding scheduler
# overlaps FSDP all-gathers with compute; JAX may take 90% of GPU memory.
# Several nodes: use launch/slurm.sbatch.
set -euo pipefail
DRY_RUN=0
GPUS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) DRY_RUN=1; shift ;;
    --gpus=*) GPUS="${1#--gpus=}"; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch/gpu.sh: no command given; see launch/gpu.sh --help" >&2
  exit 2
fi
ENV=(
  "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer="
  "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"
)
[[ -n "$GPUS" ]] && ENV+=("CUDA_VISIBLE_DEVICES=$GPUS")
if [[ $DRY_RUN == 1 ]]; then
  printf 'env'; printf " '%s'" "${ENV[@]}"; printf ' %q' "$@"; printf '\n'
  exit 0
fi
exec env "${ENV[@]}" "$@"
