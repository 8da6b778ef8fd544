#!/usr/bin/env bash
# Usage: bash launch/test.sh [pytest args...]
#
# Installs ram_jax into .venv on first use, checks formatting and lint with
# ruff, then runs the test suite (CPU; 8 fake devices for sharding tests).
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/test_model.py -x`.
# Test files run in RAM_JAX_TEST_WORKERS processes (default 2; pytest-xdist, one
# file per process so module fixtures are built once); `-n 0` runs in this one.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

echo "[ram_jax] ruff format --check && ruff check"
ruff format --check --quiet .
ruff check --quiet .
python -m pytest -n "${RAM_JAX_TEST_WORKERS:-2}" --dist loadfile "$@"
