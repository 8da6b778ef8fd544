"""Scalar metrics: TensorBoard event files plus a JSONL copy, written by process 0 only.

`WORKDIR/tb/` opens in TensorBoard; `WORKDIR/metrics.jsonl` holds one
`{"step": n, "<name>": value, ...}` object per write for scripts. A resumed
run continues both from the restored step: lines after it (written by the
interrupted run, and about to be redone) are dropped from `metrics.jsonl`,
and the new TensorBoard file starts with a purge marker at the next step, so
TensorBoard hides the old events from there on (a run restarting at step 0
drops them all). Neither shows a step twice.
"""

from __future__ import annotations

import json
import os

from ram_jax import io

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    """The lines of `WORKDIR/metrics.jsonl` (a cut-off last line, from a kill, is skipped)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _ends_cleanly(path: str) -> bool:
    """False when the file's last line was cut off (a kill mid-write)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class MetricsWriter:
    """Writes scalars at a step; `start_step` > 0 continues a resumed run (see module docstring)."""

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self._tb = self._jsonl = None
        self._written: set[tuple[int, str]] = set()
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        path = os.path.join(workdir, METRICS_FILE)
        lines = read_metrics(workdir)
        # A fresh start (step 0) keeps nothing of a run killed before its first checkpoint.
        kept = [m for m in lines if m.get("step", 0) <= start_step] if start_step > 0 else []
        if os.path.exists(path) and (len(kept) < len(lines) or not _ends_cleanly(path)):
            io.write_jsonl(path, kept)
        self._written = {(m["step"], k) for m in kept for k in m if k != "step"}
        tb = os.path.join(workdir, "tb")
        purge = start_step + 1 if start_step > 0 else (0 if os.path.isdir(tb) else None)
        self._tb = SummaryWriter(logdir=tb, purge_step=purge)
        self._jsonl = open(path, "a", encoding="utf-8")

    def has(self, step: int, name: str) -> bool:
        """Whether `name` was already written at `step` (by this run or the one it resumes)."""
        return (step, name) in self._written

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
            self._written.add((step, name))
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
