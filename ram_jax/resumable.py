"""Resumable outputs: a long job's finished records, kept across kills, for one input and settings.

A job that writes one record per input row (proposal sampling, decoding)
appends each finished batch to `OUTPUT.partial` and, at the end, writes
OUTPUT atomically and deletes the partial file. A rerun continues after the
last whole batch, but only if the partial file was made by the same job: its
first line is a header holding the job's *fingerprint* (a content hash of the
input rows, the model and tokenizer identities, and every setting that changes
the records, the batch size included when it seeds the randomness). A partial
file with another fingerprint, or none, is refused with the differences and
the fix, `--restart` (`restart=True`), instead of mixing two jobs' records.

  fingerprint = {"input": content_hash(objects), "settings": {...}}
  out = PartialOutput("out.jsonl", fingerprint, unit=batch_size, restart=False)
  for start in range(out.done, len(rows), batch_size):
      out.append(records_of(rows[start : start + batch_size]))
  out.finish(lambda records: io.write_jsonl("out.jsonl", records))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

PARTIAL_SUFFIX = ".partial"
_HEADER_KEY = "ram_jax.partial_output"


class FingerprintMismatch(ValueError):
    """A partial output was made by another job (other input, model or settings)."""


def content_hash(objects: Iterable[Any]) -> str:
    """SHA-256 of JSON values in order (key order and formatting do not matter)."""
    h = hashlib.sha256()
    for obj in objects:
        h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def files_fingerprint(path: str) -> dict[str, list[int]]:
    """`{relative path: [size, mtime_ns]}` of a file or of every file under a directory.

    Cheap (no file is read) and enough to tell a retrained or replaced model
    from the one a partial output was started with.
    """
    if os.path.isfile(path):
        st = os.stat(path)
        return {os.path.basename(path): [st.st_size, st.st_mtime_ns]}
    out = {}
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = [st.st_size, st.st_mtime_ns]
    return dict(sorted(out.items()))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(saved: dict, current: dict) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        top = key.split(".")[0]
        if top == "input":
            out.append("the input rows changed")
        elif top in ("proposal", "model", "tokenizer"):
            out.append(f"the {top} files changed ({key})")
        else:
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return list(dict.fromkeys(out))


class PartialOutput:
    """`OUTPUT.partial`: the finished records of one fingerprinted job, in whole units.

    Opening validates an existing partial file (refusing another job's),
    drops an unfinished last line and any incomplete unit of `unit` records,
    and sets `done`. Nothing is created until the first `append`.
    """

    def __init__(
        self,
        output_path: str,
        fingerprint: dict,
        *,
        unit: int = 1,
        restart: bool = False,
    ):
        if unit < 1:
            raise ValueError(f"unit={unit} must be >= 1.")
        self.output_path = output_path
        self.path = output_path + PARTIAL_SUFFIX
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
        self.unit = unit
        self._records: list[Any] = []
        if restart and os.path.exists(self.path):
            os.remove(self.path)
        if os.path.exists(self.path):
            self._load()
        self.done = len(self._records)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            *lines, unfinished = f.read().split(b"\n")  # after the last newline: cut off
        if not lines:
            if unfinished:
                os.remove(self.path)  # killed while writing the header
            return
        try:
            header = json.loads(lines[0])[_HEADER_KEY]
        except (ValueError, KeyError, TypeError):
            header = None
        if not isinstance(header, dict) or header.get("fingerprint") != self.fingerprint:
            why = (
                "; ".join(_differences(header["fingerprint"], self.fingerprint))
                if isinstance(header, dict) and isinstance(header.get("fingerprint"), dict)
                else "it has no fingerprint header (made by an older version or another tool)"
            )
            raise FingerprintMismatch(
                f"{self.path} holds {len(lines) - 1} finished record(s) of a different job "
                f"({why}); rerun with --restart to discard them and start over, or with the "
                "original input and settings to continue."
            )
        body = lines[1:]
        keep = (len(body) // self.unit) * self.unit
        self._records = [json.loads(line) for line in body[:keep]]
        if keep != len(body) or unfinished:
            self._rewrite()

    def _header(self) -> bytes:
        return json.dumps({_HEADER_KEY: {"version": 1, "fingerprint": self.fingerprint}}).encode()

    def _rewrite(self) -> None:
        """The partial file as kept: header and whole units only (the rest is redone)."""
        with open(self.path, "wb") as f:
            f.write(self._header() + b"\n")
            f.writelines(_line(r) for r in self._records)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[Any]:
        """Every finished record so far (kept ones first)."""
        return list(self._records)

    def append(self, records: Sequence[Any]) -> None:
        """Adds one unit's records (or several units) durably."""
        if not os.path.exists(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._rewrite()
        with open(self.path, "ab") as f:
            f.write(b"".join(_line(r) for r in records))
            f.flush()
            os.fsync(f.fileno())
        self._records.extend(json.loads(json.dumps(r)) for r in records)
        self.done = len(self._records)

    def finish(self, write: Callable[[list[Any]], None]) -> None:
        """`write(all records)` makes the final output; then the partial file is removed."""
        write(self.records())
        if os.path.exists(self.path):
            os.remove(self.path)


def _line(record: Any) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
