"""The apply lock: one apply per state directory, stale locks of dead processes taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.errors import LockHeld
from reconciler.lock import LOCK_FILE, ApplyLock
from tests.conftest import REPO
from tests.support import wait_for

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reconciler.lock import ApplyLock

    state, ready, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    lock = ApplyLock(state)
    lock.acquire()
    ready.write_text("locked")
    time.sleep(hold)
    lock.release()
    ready.write_text("released")
    time.sleep(60)
    """
)


@contextmanager
def holder(state: Path, tmp_path: Path, hold: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that takes the lock, says so in a ready file, and holds it
    for ``hold`` seconds."""
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), str(ready), str(hold)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:

        def locked() -> bool:
            assert child.poll() is None, "the lock holder exited early"
            return ready.exists()

        wait_for(locked, "the lock holder to take the lock", 30, interval=0.02)
        yield child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_second_lock_in_the_same_state_dir_names_the_holder(tmp_path: Path) -> None:
    first = ApplyLock(tmp_path)
    first.acquire()
    try:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockHeld) as raised:
            ApplyLock(tmp_path).acquire()
        assert raised.value.holder == str(os.getpid())
        assert f"pid {os.getpid()} is applying to this host" in str(raised.value)
        assert "after waiting" not in str(raised.value)
    finally:
        first.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with ApplyLock(tmp_path) as again:
        assert again.path == tmp_path / LOCK_FILE
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    with ApplyLock(state):
        assert state.is_dir()
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / LOCK_FILE).stat().st_mode & 0o777 == 0o600


def test_lock_of_another_process_blocks_until_it_is_killed(tmp_path: Path) -> None:
    with holder(tmp_path, tmp_path) as child:
        with pytest.raises(LockHeld) as raised:
            ApplyLock(tmp_path, timeout=0).acquire()
        assert raised.value.holder == str(child.pid)
        assert f"pid {child.pid}" in str(raised.value)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # The kernel dropped the dead holder's flock: taken over at once, no waiting.
        with ApplyLock(tmp_path, timeout=0):
            assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_timeout_gives_up_and_says_how_long_it_waited(tmp_path: Path) -> None:
    with holder(tmp_path, tmp_path) as child:
        started = time.monotonic()
        with pytest.raises(LockHeld) as raised:
            ApplyLock(tmp_path, timeout=0.3).acquire()
        assert time.monotonic() - started >= 0.3
        assert raised.value.holder == str(child.pid)
        assert "after waiting 0.3s" in str(raised.value)


def test_timeout_waits_for_the_holder_to_release(tmp_path: Path) -> None:
    with holder(tmp_path, tmp_path, hold=1.0) as child:
        started = time.monotonic()
        with pytest.raises(LockHeld):
            ApplyLock(tmp_path, timeout=0).acquire()  # still held: the next one must wait
        with ApplyLock(tmp_path, timeout=10):
            waited = time.monotonic() - started
            assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert child.poll() is None  # the holder released the lock; it did not die
    assert waited < 10
