"""One apply at a time per host: an exclusive lock file in the state directory.

The lock is an ``flock`` on ``STATE_DIR/apply.lock``, which also holds the
owner's pid so a second apply can name it. The kernel drops an ``flock`` when
its process dies, so the lock of a killed apply (even ``kill -9``) is free at
once: a stale lock is taken over without guessing from pids.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from reconciler.errors import LockHeld

LOCK_FILE = "apply.lock"


class ApplyLock:
    """``with ApplyLock(state_dir, timeout):`` — waits up to ``timeout`` seconds."""

    def __init__(self, state_dir: Path, timeout: float = 0.0) -> None:
        self.path = state_dir / LOCK_FILE
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """This process holds the lock (between :meth:`acquire` and :meth:`release`)."""
        return self._fd is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise LockHeld(self.path, holder, self.timeout) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
