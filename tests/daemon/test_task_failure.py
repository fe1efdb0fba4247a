"""A task of the daemon's own that fails ends the daemon cleanly: one log line, an
event in the journal, systemd's STATUS=, and exit status 4 — never a traceback.

The fault is injected at the source seam: the directory source's watcher fails the
way inotify does when the host's watch limit is reached (``OSError`` ENOSPC), on a
real daemon with the process runtime, its API socket and its journal."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.daemon.journal import Journal
from reconciler.daemon.loop import TASK_FAILED, Daemon
from reconciler.settings import Settings
from reconciler.sources.directory import DirSource
from tests.support import needs_root, wait_for_async


class WatchLimitReached(DirSource):
    """A directory source whose watcher fails once the daemon has started."""

    async def follow(self, changed: Callable[[str], None], stop: asyncio.Event) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


async def test_a_failed_daemon_task_is_one_line_one_event_and_exit_status_4(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_root("the process runtime")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("version: v1\ndeployment: tasks\nservices: {}\n")
    state = tmp_path / "state"
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.setblocking(False)
    settings = Settings(state_dir=state)
    settings = dataclasses.replace(
        settings, daemon=dataclasses.replace(settings.daemon, socket=state / "zlayer.sock")
    )
    monkey = pytest.MonkeyPatch()
    monkey.setenv("NOTIFY_SOCKET", str(notify))
    try:
        daemon = Daemon(settings, "process", WatchLimitReached([specs]), state_dir=state)
        with caplog.at_level(logging.ERROR, logger="reconciler.daemon"):
            code = await asyncio.wait_for(daemon.run(), 60)
    finally:
        monkey.undo()
    assert code == TASK_FAILED == 4
    why = "the daemon's source task stopped: [Errno 28] inotify watch limit reached; exiting (4)"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [why]
    assert not any(r.exc_info for r in caplog.records)
    journal = Journal.in_state_dir(state)
    try:
        events = [e for e in journal.events(20, target="daemon") if e["kind"] == "failed"]
    finally:
        journal.close()
    assert [e["message"] for e in events] == [why]
    sent: list[bytes] = []

    async def status_sent() -> bool:
        while True:
            try:
                sent.append(listener.recv(4096))
            except BlockingIOError:
                break
        return any(m.startswith(b"STATUS=failed: ") for m in sent)

    await wait_for_async(status_sent, "STATUS=failed sent to systemd", 10)
    listener.close()
