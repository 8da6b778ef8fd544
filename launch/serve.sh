#!/usr/bin/env bash
# Usage: bash launch/serve.sh [--demo=runs/demo] [--seed=0] [any python -m ram_jax.serve flag]
#
# Serves the embedded experiment's trained models (run `bash launch/demo.sh`
# first) behind an OpenAI-compatible API on http://127.0.0.1:8000: the
# proposal as model "proposal", the ram_sft residual aligner as "style" and
# the citation aligner as "format" (prompts rendered with the demo's
# human_assistant template). Other flags go to python -m ram_jax.serve,
# e.g. --port=8080 --slots=16. Stop it with Ctrl-C or SIGTERM (graceful).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

demo=runs/demo
seed=0
rest=()
for arg in "$@"; do
  case "$arg" in
    --demo=*) demo="${arg#--demo=}" ;;
    --seed=*) seed="${arg#--seed=}" ;;
    *) rest+=("$arg") ;;
  esac
done
for dir in "$demo/proposal/export" "$demo/seed$seed/ram_sft/export" "$demo/seed$seed/format/export"; do
  if [ ! -d "$dir" ]; then
    echo "error: $dir not found; run 'bash launch/demo.sh --out=$demo' first (or pass --demo=DIR)." >&2
    exit 2
  fi
done

export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec python -m ram_jax.serve \
  --proposal="$demo/proposal/export" \
  --aligner=style="$demo/seed$seed/ram_sft/export" \
  --aligner=format="$demo/seed$seed/format/export" \
  --template=human_assistant --max_length=128 --max_tokens=32 \
  ${rest[@]+"${rest[@]}"}
