#!/usr/bin/env bash
# Usage: bash launch/demo.sh [--out=DIR] [--quick] [--seeds=N]
#
# The main job: installs ram_jax into .venv on first use, then runs the
# embedded end-to-end RAM experiment on this machine's CPU (no downloads) and
# writes results.json, results.md and plots into --out (default runs/demo).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python -m experiments.demo "$@"
