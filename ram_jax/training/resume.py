"""Stopping a run so that it can resume, and what a rerun finds in its workdir.

SIGTERM (a preemption notice) and a first Ctrl-C set a flag the loop polls:
it saves a checkpoint at the current step and returns. A rerun of the same
command resumes from that checkpoint; when the workdir already holds the
finished run (`summary.json` at the config's last step) the rerun does
nothing and changes no file.
"""

from __future__ import annotations

import json
import os
import signal

from ram_jax.training.metrics import read_metrics

SUMMARY_FILE = "summary.json"


class Preemption:
    """Turns SIGTERM and a first Ctrl-C into `requested`; `restore()` puts the handlers back.

    A second Ctrl-C stops at once (KeyboardInterrupt), without saving.
    """

    def __init__(self):
        self.requested = False
        self._previous = {
            sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def finished_summary(workdir: str, latest_step: int | None, steps: int) -> dict | None:
    """The summary of a run that already finished `steps` steps here (None otherwise)."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if latest_step != steps or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    return summary if summary.get("step") == steps else None


def logged(workdir: str, step: int, name: str) -> float | None:
    """A scalar an earlier, interrupted run already wrote to metrics.jsonl at `step`."""
    for m in read_metrics(workdir):
        if m.get("step") == step and name in m:
            return m[name]
    return None
