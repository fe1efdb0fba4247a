"""zlayer's hosts files (``reconciler.drivers.hosts``): rewritten in place, and only
when what they say changes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reconciler.drivers import hosts
from reconciler.errors import PermanentDriverError

PAST = (1_000_000_000, 1_000_000_000)  # 2001: no write of this test can carry it


def entries_of(text: bytes) -> list[str]:
    """The lines a resolver reads: neither blank nor comments."""
    lines = text.decode().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def entries(path: Path) -> list[str]:
    return entries_of(path.read_bytes())


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
    assert entries(path) == entries_of(hosts.render([]))
    os.utime(path, ns=(PAST[0] * 10**9, PAST[1] * 10**9))
    hosts.rewrite(path, [])  # the padded shorter text is recognised as unchanged
    assert path.stat().st_mtime_ns == PAST[1] * 10**9


def test_a_file_with_more_after_the_entries_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_bytes(hosts.render([]) + b"10.9.9.9 stale\n")
    hosts.rewrite(path, [])
    assert entries(path) == entries_of(hosts.render([]))
    assert b"stale" not in path.read_bytes()


def test_a_reader_never_sees_an_empty_file_nor_loses_a_stable_line(tmp_path: Path) -> None:
    """Workloads resolve names while the file changes. During a stream of rewrites
    (longer and shorter texts in turn) every read holds the lines that are the same,
    at the same place, in every text: the localhost lines and the first entry (the
    proxy's address, lowest of the deployment's, which is where a proxied service's
    name lives). A truncate-then-write showed readers an empty file."""
    path = tmp_path / "c"
    texts = [
        [("10.0.0.1", ["api"]), ("10.0.0.2", ["api-1", "db"])],
        [("10.0.0.1", ["api"])],
        [("10.0.0.1", ["api"]), ("10.0.0.3", ["api-2"]), ("10.0.0.4", ["a-long-name"] * 9)],
    ]
    stable = entries_of(hosts.render([("10.0.0.1", ["api"])]))
    hosts.rewrite(path, texts[0])
    stop = threading.Event()
    seen: list[list[str]] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(entries(path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for turn in range(3000):
            hosts.rewrite(path, texts[turn % 3])
    finally:
        stop.set()
        reader.join(timeout=30)
    assert seen, "the reader read nothing"
    wrong = [found for found in seen if found[: len(stable)] != stable]
    assert not wrong, (len(wrong), len(seen), wrong[:3])
    assert entries(path) == entries_of(hosts.render(texts[2]))


def test_a_file_that_cannot_be_written_is_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file, not a directory")
    with pytest.raises(PermanentDriverError, match="cannot write"):
        hosts.rewrite(tmp_path / "f" / "c", [])
