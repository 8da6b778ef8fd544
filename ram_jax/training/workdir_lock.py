"""One training run per workdir: an OS file lock on `WORKDIR/.lock`.

Two runs on one workdir would both train to the end and then fight over the
same checkpoint steps, interleaving `metrics.jsonl`. The lock is `flock(2)`:
the kernel releases it when its holder exits or crashes, so a lock left by a
dead process is simply taken over; the file itself only records who holds it,
for the message the second run prints. Only JAX process 0 takes it (every
host of a multi-host run shares the workdir).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

LOCK_FILE = ".lock"


class WorkdirInUseError(ValueError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """Context manager holding `WORKDIR/.lock`; raises `WorkdirInUseError` if taken."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise WorkdirInUseError(
                f"--workdir={self.workdir} is in use by another training run ({holder}); wait "
                "for it to finish or stop it, or pass another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
