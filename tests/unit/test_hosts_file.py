"""zlayer's hosts files (``reconciler.drivers.hosts``): rewritten in place, and only
when what they say changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.drivers import hosts
from reconciler.errors import PermanentDriverError

PAST = (1_000_000_000, 1_000_000_000)  # 2001: no write of this test can carry it


def test_a_changed_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = hosts.rewrite(tmp_path / "d" / "c", [("10.0.0.1", ["api"])])
    inode = path.stat().st_ino
    hosts.rewrite(path, [("10.0.0.2", ["api", "db"])])
    assert path.read_bytes().endswith(b"10.0.0.2 api db\n")
    assert b"10.0.0.1" not in path.read_bytes()
    assert path.stat().st_ino == inode  # a bind mount of it sees the change


def test_an_unchanged_file_is_not_written_again(tmp_path: Path) -> None:
    path = hosts.rewrite(tmp_path / "c", [("10.0.0.1", ["api"])])
    os.utime(path, ns=(PAST[0] * 10**9, PAST[1] * 10**9))
    hosts.rewrite(path, [("10.0.0.1", ["api"])])
    assert path.stat().st_mtime_ns == PAST[1] * 10**9
    hosts.rewrite(path, [])  # a shorter content is a change, not a prefix match
    assert path.stat().st_mtime_ns != PAST[1] * 10**9
    assert path.read_bytes() == hosts.render([])


def test_a_file_with_more_after_the_entries_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_bytes(hosts.render([]) + b"10.9.9.9 stale\n")
    hosts.rewrite(path, [])
    assert path.read_bytes() == hosts.render([])


def test_a_file_that_cannot_be_written_is_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file, not a directory")
    with pytest.raises(PermanentDriverError, match="cannot write"):
        hosts.rewrite(tmp_path / "f" / "c", [])
