"""Scalar metrics: TensorBoard event files plus a JSONL copy, written by process 0 only.

`WORKDIR/tb/` opens in TensorBoard; `WORKDIR/metrics.jsonl` holds one
`{"step": n, "<name>": value, ...}` object per write for scripts.
"""

from __future__ import annotations

import json
import os


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tb"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
