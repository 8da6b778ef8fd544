"""Reading JSON / JSONL records and writing outputs atomically: the one home for both.

Readers yield `(where, object)` pairs, where `where` is `path:line` (JSONL,
or the line an item of a JSON list starts on) so every later message can say
where a bad row sits. Errors raise `DataError` naming the file and line, for
malformed JSON, non-UTF-8 bytes and missing files alike. Layouts:

  .jsonl / .jsonl.gz / any other name   one JSON value per line (blank lines skipped);
                                        a file whose first line is not a whole JSON
                                        value is read as one JSON document instead
  .json, or text starting with '['      one JSON document: a list of records
                                        (a single object counts as one record)
  .parquet                              rows of the table (needs pyarrow)

Writers go through a temporary file in the destination folder and
`os.replace`, so a reader never sees half a file, and the result gets the
permissions `open()` would give (the process umask).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any


class DataError(ValueError):
    """A data file is missing, empty or malformed (the message says where)."""


def _read_text(path: str) -> str:
    if not os.path.isfile(path):
        what = "a directory, not a file" if os.path.isdir(path) else "not found"
        raise DataError(f"{path}: {what}; pass the path of a JSON or JSONL file.")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {e.start} is {raw[e.start : e.start + 1]!r}); "
            "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _document_error(path: str, e: json.JSONDecodeError) -> DataError:
    return DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}).")


def _json_items(path: str, text: str) -> Iterator[tuple[str, Any]]:
    """Items of a JSON document with the line each starts on (a non-list is one item)."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise _document_error(path, e) from None
        yield f"{path}:{_line_of(text, start)}", obj
        return
    try:
        json.loads(text)  # one pass for the error position of a malformed document
    except json.JSONDecodeError as e:
        raise _document_error(path, e) from None
    i = start + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "]":
            return
        obj, end = decoder.raw_decode(text, i)
        yield f"{path}:{_line_of(text, i)}", obj
        i = end


def read_records(path: str) -> Iterator[tuple[str, Any]]:
    """Yields `(where, parsed JSON value)` for each record of a JSON, JSONL or parquet file."""
    if path.endswith(".parquet"):
        if not os.path.isfile(path):
            raise DataError(f"{path}: not found; pass the path of a parquet file.")
        import pyarrow.parquet as pq  # only for the parquet layouts

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row
        return
    text = _read_text(path)
    stripped = text.lstrip()
    if path.endswith(".json") or stripped.startswith("["):
        yield from _json_items(path, text)
        return
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == 1 or all(not ln.strip() for ln in lines[: lineno - 1]):
                # The first record does not fit its line: a pretty-printed document.
                yield from _json_items(path, text)
                return
            raise DataError(
                f"{path}:{lineno}: invalid JSON ({e.msg}); one value per line."
            ) from None
        yield f"{path}:{lineno}", obj


def read_objects(path: str) -> list[tuple[str, dict]]:
    """All records of `path`, each required to be a JSON object; refuses an empty file."""
    out = []
    for where, obj in read_records(path):
        if not isinstance(obj, dict):
            raise DataError(
                f"{where}: each record must be a JSON object, got {type(obj).__name__}."
            )
        out.append((where, obj))
    if not out:
        raise DataError(f"{path}: the file holds no records.")
    return out


def _check_creatable(path: str, what: str, folder: str) -> None:
    """`folder` exists as a writable directory, or can be made under one."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{what} {path}: {probe} is a file, so no folder can be made under it.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {probe}.")


def check_output_path(path: str, what: str = "output") -> None:
    """Refuses, before any work, an output path that cannot be written as a file."""
    if not path:
        raise ValueError(f"{what} is empty; pass a file path.")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory; pass a file path.")
    _check_creatable(path, what, os.path.dirname(os.path.abspath(path)))


def check_output_dir(path: str, what: str = "output directory") -> None:
    """Refuses, before any work, a path that cannot be (or become) a writable directory."""
    if not path:
        raise ValueError(f"{what} is empty; pass a directory.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} is a file; pass a directory (new or existing).")
    _check_creatable(path, what, os.path.abspath(path))


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` through a temporary sibling and `os.replace`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        binary = isinstance(data, bytes)
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
    """One JSON document, atomically (UTF-8, non-ASCII kept)."""
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(path: str, rows: Iterable[Any]) -> int:
    """JSON values one per line, atomically; returns how many."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_atomic(path, "".join(lines))
    return len(lines)
