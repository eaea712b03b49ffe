"""famus.atomic: whole files or none, fsync-ed, with the permissions ``open`` would give."""

import os
import stat

import pytest

from famus import atomic


def test_writes_replace_the_file_whole(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    atomic.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    atomic.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_a_failing_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_data_is_fsynced_before_the_replace(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    assert calls == ["fsync", "replace"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


def test_truncate_jsonl_keeps_whole_records_up_to_a_key(tmp_path):
    from famus.jsonl import truncate_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2}\n[1]\n{"epoch": 3}\n{"epo')  # the last line cut by a kill
    assert truncate_jsonl(path, "epoch", 2) == [{"epoch": 1, "a": 1}, {"epoch": 2}]
    assert path.read_text() == '{"epoch": 1, "a": 1}\n{"epoch": 2}\n'
    assert truncate_jsonl(tmp_path / "missing.jsonl", "step", 5) == [] and not (tmp_path / "missing.jsonl").exists()
