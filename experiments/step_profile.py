"""Where a compiled JAX step's time goes: a profiler trace summed by kind of work.

Used by `bench_train.py --profile`. Each XLA operation that ran (a thunk in the
trace) is put in one bucket by its output shape and its HLO metadata:

  attention      outputs with a T x T (query x key) block: scores, masks, softmax
  vocabulary     outputs with a vocabulary-wide axis: logits, log-softmax, their gradients
  optimizer      operations outside the microbatch loop: gradient finish, clip, update
  matmuls        dots (XLA CPU's library fusions, or plain dots)
  copies         copies and transposes that re-lay data out for the next op
  layer scan     the layer loop's slicing of stacked weights, residuals and gradients
  other          the remaining elementwise work and reductions
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax

BUCKETS = ("matmuls", "attention", "vocabulary", "copies", "layer scan", "optimizer", "other")


def _ops(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """HLO instruction name -> (output shape, opcode, metadata op_name)."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w-]+)\(", line)
        if m:
            name, shape, opcode = m.groups()
            op_name = re.search(r'op_name="([^"]*)"', line)
            out[name] = (shape, opcode, op_name.group(1) if op_name else "")
    return out


def bucket(name: str, shape: str, opcode: str, op_name: str, *, t: int, vocab: int) -> str:
    if f"{t},{t}]" in shape:
        return "attention"
    if re.search(rf"[\[,]{vocab}[\],]", shape):
        return "vocabulary"
    if "while" not in op_name:
        return "optimizer"
    if opcode == "dot" or "dot" in name or name.startswith(("ynn_fusion", "xnn_fusion")):
        return "matmuls"
    if "dynamic" in name or "broadcast" in name:
        return "layer scan"
    if "copy" in name or "transpose" in name:
        return "copies"
    return "other"


def profile(compiled, run_steps, steps: int, *, t: int, vocab: int) -> dict[str, float]:
    """Milliseconds per step in each bucket while `run_steps()` runs `steps` steps.

    `compiled` is the `jax.stages.Compiled` step (its HLO names the trace's ops).
    """
    ops = _ops(compiled.as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run_steps()
        (path,) = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            totals[bucket(e["name"], *ops[e["name"]], t=t, vocab=vocab)] += e.get("dur", 0)
    return {k: round(totals[k] / steps / 1e3, 1) for k in BUCKETS}


def torch_profile(run_steps, steps: int, top: int = 12) -> dict[str, float]:
    """Milliseconds per step of torch's `top` most expensive operators (self CPU time)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_steps()
    rows = sorted(prof.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
    return {r.key: round(r.self_cpu_time_total / steps / 1e3, 1) for r in rows[:top]}
