#!/usr/bin/env bash
# Reproduce one row of the paper's tables: every stage, with the paper's settings.
#
# Usage:
#   launch/reproduce.sh --list                      # the row names
#   launch/reproduce.sh ROW --dry_run               # print every command, run nothing
#   CKPT=/ckpt DATA=/data OUT=/runs launch/reproduce.sh ROW [--launcher='launch/gpu.sh']
#   launch/reproduce.sh ROW --runlocal              # the row in miniature on a CPU (~2 min)
#
#   CKPT  HF model directories Llama-3.1-8B, Llama-3.2-1B, Qwen2.5-14B, Qwen2.5-3B
#   DATA  the datasets' manual directories hh-rlhf/, tldr/, ultrachat/, alpaca_eval/
#         (file names: ram_jax/datasets/*.py, README "Reproducing the paper")
#   OUT   outputs (default ./runs/paper); finished stages are skipped on rerun
#   --launcher  prefix for every command: launch/gpu.sh (one GPU node),
#               'launch/tpu_vm.sh --name=N --zone=Z --' (every TPU VM worker)
#   PYTHON      interpreter running the planner (default .venv/bin/python, else python3)
#
# Stages: data -> proposal warm-up/SFT/DPO -> negatives -> aligner -> generate -> export.
# Example: launch/reproduce.sh uc-llama8b-wup-ram1b --dry_run
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m experiments.paper.reproduce "$@"
