#!/usr/bin/env bash
# The checks and benchmarks that need an NVIDIA GPU, in one run (planned for 8 minutes on an
# H200; never run yet with the decode step; each step has its own timeout).
#
# Usage:
#   bash experiments/gpu_check.sh [OUT_DIR]      # PYTHON=... to pick the interpreter
#
# Needs a JAX with CUDA (pip install "jax[cuda12]"). Runs, from the repository root:
#   1. experiments/gpu_attention_check.py   cuDNN attention (training: logits and
#      gradients; cached prefill) and int8 weights against their references, bf16
#   2. experiments/bench_train.py --model=llama-3.2-1b   the aligner's ram_sft step at
#      length 2048, bf16, batch 4: MFU (target >= 0.40)
#   3. experiments/paper/check_plan_gpu.py --cases=1b,1b-naive,1b-remat   allocator peak
#      against the memory plan (target: within 10%), and fused against naive attention
#      (target: at least 3x less activation memory)
#   4. experiments/bench_decode.py --pair=llama-3.1-8b+llama-3.2-1b --int8 --batches=1,64
#      random bf16 weights at the real shapes, 1,024-token prompts: par_kl at batch 1
#      >= 0.70 of the HBM roofline, proposal-only >= 0.75, batch-64 step <= 1.5x batch 1,
#      TTFT par_kl / proposal-only <= 1.2, int8-proposal step <= 0.65x bf16 at batch 1
#      (batches 8 and 32, and qwen2.5-14b+qwen2.5-3b, by hand: the budget holds two)
# Each writes its log to OUT_DIR; the last line printed is one JSON summary with every
# step's last JSON line, the targets met, and the elapsed seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/gpu_check}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
START=$(date +%s)

run() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $? after $(($(date +%s) - START)) s" >&2
}

run attention 120 "$PY" experiments/gpu_attention_check.py
run train_mfu 180 "$PY" experiments/bench_train.py --model=llama-3.2-1b --batch=4 --length=2048 \
  --steps=3 --rounds=3
run memory 300 "$PY" experiments/paper/check_plan_gpu.py --cases=1b,1b-naive,1b-remat --length=2048
run decode 300 "$PY" experiments/bench_decode.py --pair=llama-3.1-8b+llama-3.2-1b --int8 \
  --batches=1,64 --prompt=1024 --new=64

"$PY" - "$OUT" "$START" <<'EOF'
import json, os, sys, time

out, start = sys.argv[1], float(sys.argv[2])


def last_json(name):
    try:
        lines = open(os.path.join(out, f"{name}.log")).read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"error": "\n".join(lines[-20:])}


summary = {k: last_json(k) for k in ("attention", "train_mfu", "memory", "decode")}
targets = {}
if summary["attention"] and "passed" in summary["attention"]:
    targets["attention_matches_naive"] = summary["attention"]["passed"]
mfu = (summary["train_mfu"] or {}).get("mfu")
if mfu is not None:
    targets["mfu_1b_ge_0.40"] = mfu >= 0.40
cases = {r["case"]: r for r in (summary["memory"] or {}).get("results", []) if "case" in r}
for name, r in cases.items():
    if r.get("peak_bytes_in_use", -1) > 0:
        targets[f"plan_within_10pct_{name}"] = abs(r["plan_total_bytes"] / r["peak_bytes_in_use"] - 1) <= 0.10


def measured_activations(r):  # the peak less what the plan counts besides activations
    return r["peak_bytes_in_use"] - (r["plan_total_bytes"] - r["plan_activation_bytes"])


if all(c in cases and cases[c].get("peak_bytes_in_use", -1) > 0 for c in ("1b", "1b-naive")):
    ratio = measured_activations(cases["1b-naive"]) / max(measured_activations(cases["1b"]), 1)
    summary["naive_over_fused_activation_bytes"] = ratio
    targets["fused_attention_3x_less_activations"] = ratio >= 3
for name, met in (summary["decode"] or {}).get("targets", {}).items():
    targets[f"decode_8b_1b_{name}"] = met
summary["targets"] = targets
summary["elapsed_s"] = round(time.time() - start)
print(json.dumps(summary))
EOF
