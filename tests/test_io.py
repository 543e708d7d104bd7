"""Atomic writes honour the umask and never leave a partial file; text reads are one-line errors
(nas.io)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from nas.errors import UsageError
from nas.io import atomic_write, atomic_write_json, read_text, truncate_jsonl


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode
    # the same as a plain open() would give
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = atomic_write_json(tmp_path / "x.json", {"old": True})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"old": True}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]


def test_paths_that_cannot_be_written_are_usage_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="a parent is a file|a file is in the way"):
        atomic_write_json(tmp_path / "file" / "sub" / "x.json", {})
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError, match="is a folder, expected a file path"):
        atomic_write_json(tmp_path / "dir", {})


def test_read_text_errors(tmp_path):
    with pytest.raises(UsageError, match="no such config file"):
        read_text(tmp_path / "x", "config file")
    with pytest.raises(UsageError, match="is a folder"):
        read_text(tmp_path, "config file")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(UsageError, match=r"not a text ArchSpec file \(invalid UTF-8 at byte 0\)"):
        read_text(tmp_path / "bin", "ArchSpec file")


def test_truncate_jsonl_drops_later_and_torn_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_jsonl(p, 2)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2]
