#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU VM slice (creating it and installing if asked).
#
# Usage:
#   launch/tpu_vm.sh --name=NAME --zone=ZONE [--accelerator=v5litepod-8] [--version=RUNTIME]
#                    [--project=P] [--create] [--install] [--dry_run] -- python -m ram_jax.main ...
#
#   --create    create the slice if it does not exist (gcloud compute tpus tpu-vm create)
#   --install   copy this checkout to ~/ram_jax on every worker, pip install it with jax[tpu]
#   --dry_run   print the gcloud commands, run nothing
# The command runs from ~/ram_jax on all workers at once (--worker=all); on a
# multi-host slice ram_jax.main calls jax.distributed.initialize() itself.
# libtpu flags live here (LIBTPU_INIT_ARGS), not in Python.
set -euo pipefail
NAME="" ZONE="" PROJECT="" ACCEL="v5litepod-8" VERSION="v2-alpha-tpuv5-lite"
CREATE=0 INSTALL=0 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}"; shift ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --accelerator=*) ACCEL="${1#*=}"; shift ;;
    --version=*) VERSION="${1#*=}"; shift ;;
    --create) CREATE=1; shift ;;
    --install) INSTALL=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "launch/tpu_vm.sh: unknown option $1 (put the command after --)" >&2; exit 2 ;;
  esac
done
if [[ -z "$NAME" || -z "$ZONE" ]]; then
  echo "launch/tpu_vm.sh: --name and --zone are required; see --help" >&2
  exit 2
fi
GC=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=("--project=$PROJECT")
LIBTPU_INIT_ARGS="--xla_tpu_enable_latency_hiding_scheduler=true --xla_enable_async_all_gather=true --xla_enable_async_reduce_scatter=true"

run() {
  if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

if [[ $CREATE == 1 ]]; then
  if [[ $DRY_RUN == 1 ]] || ! "${GC[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    run "${GC[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCEL" "--version=$VERSION"
  fi
fi
if [[ $INSTALL == 1 ]]; then
  ROOT="$(cd "$(dirname "$0")/.." && pwd)"
  # The tracked sources only (no .venv, no runs/), as one archive.
  run git -C "$ROOT" archive --format=tar.gz -o /tmp/ram_jax_src.tgz HEAD
  run "${GC[@]}" scp /tmp/ram_jax_src.tgz "$NAME:/tmp/ram_jax_src.tgz" --worker=all "${WHERE[@]}"
  run "${GC[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" \
    "--command=mkdir -p ~/ram_jax && tar -xzf /tmp/ram_jax_src.tgz -C ~/ram_jax && cd ~/ram_jax && python3 -m pip install -q -e . 'jax[tpu]'"
fi
if [[ $# -gt 0 ]]; then
  CMD="cd ~/ram_jax && LIBTPU_INIT_ARGS='$LIBTPU_INIT_ARGS' $(printf '%q ' "$@")"
  run "${GC[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" "--command=$CMD"
fi
