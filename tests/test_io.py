"""The one JSON/JSONL reader and the one atomic writer: locations, errors, permissions."""

import gzip
import json
import os
import stat

import pytest

from ram_jax import io


def test_records_carry_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(io.read_records(str(p))) == [(f"{p}:1", {"a": 1}), (f"{p}:3", {"a": 2})]
    # JSON lists: each item's own starting line.
    q = tmp_path / "b.json"
    q.write_text('[\n  {"a": 1},\n  {\n    "a": 2\n  }\n]\n')
    assert [w for w, _ in io.read_records(str(q))] == [f"{q}:2", f"{q}:3"]
    g = tmp_path / "c.jsonl.gz"
    g.write_bytes(gzip.compress(b'{"a": 3}\n'))
    assert list(io.read_records(str(g))) == [(f"{g}:1", {"a": 3})]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.jsonl", b'{"a": 1}\n{"a": \n', r"x\.jsonl:2: invalid JSON"),
        ("x.json", b'[\n {"a": 1},\n {"a" 2}\n]', r"x\.json:3:7: invalid JSON"),
        ("x.jsonl", b'{\n  "a": 1,\n  "b": [1,\n}\n', r"x\.jsonl:4:1: invalid JSON"),
        ("x.jsonl", b'{"a": "\xff"}\n', r"x\.jsonl:1: not UTF-8 text"),
        ("x.jsonl", b"", r"holds no records"),
        ("x.jsonl", b"[1, 2]", r"x\.jsonl:1: each record must be a JSON object"),
    ],
)
def test_bad_files_name_the_place(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(io.DataError, match=message):
        io.read_objects(str(tmp_path / name))


def test_missing_and_directory_inputs(tmp_path):
    with pytest.raises(io.DataError, match="not found"):
        list(io.read_records(str(tmp_path / "nope.jsonl")))
    with pytest.raises(io.DataError, match="a directory"):
        list(io.read_records(str(tmp_path)))


def test_atomic_writes_use_the_umask_and_leave_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_json(str(tmp_path / "sub" / "o.json"), {"k": "é"})
        n = io.write_jsonl(str(tmp_path / "o.jsonl"), [{"a": 1}, {"a": 2}])
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "sub" / "o.json").st_mode)
    assert mode == 0o644, oct(mode)
    assert json.loads((tmp_path / "sub" / "o.json").read_text(encoding="utf-8")) == {"k": "é"}
    assert n == 2 and (tmp_path / "o.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert sorted(os.listdir(tmp_path)) == ["o.jsonl", "sub"]


def test_output_paths_are_checked_before_work(tmp_path):
    io.check_output_path(str(tmp_path / "new" / "deeper" / "o.json"))
    with pytest.raises(ValueError, match="is a directory"):
        io.check_output_path(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        io.check_output_path(str(tmp_path / "f" / "o.json"))
