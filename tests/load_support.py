"""A bounded request loop against a public port, for zero-downtime tests.

:class:`Load` sends one HTTP GET at a time, each on a new connection, at a steady
pace from a thread, and keeps every failure (a status other than 200, a refused or
reset connection, a timeout) with the moment it happened. Tests start it, make
their change, wait until it has answered more requests after the change, stop it,
and assert ``failures == []``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from types import TracebackType

from tests.support import wait_for


class Load:
    def __init__(self, port: int, pace: float = 0.02) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.pace = pace
        self.failures: list[str] = []
        self.answered = 0
        self.bodies: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    body = answer.read().decode(errors="replace")
                    if answer.status != 200:
                        self._fail(f"status {answer.status}")
                    else:
                        self.bodies[body.split()[0] if body else ""] += 1
            except urllib.error.HTTPError as error:
                self._fail(f"status {error.code}")
            except OSError as error:
                self._fail(repr(error))
            self.answered += 1
            self._stop.wait(self.pace)

    def _fail(self, what: str) -> None:
        self.failures.append(f"{time.monotonic() - self._t0:.2f}s: {what}")

    def more(self, count: int = 20, timeout: float = 60) -> None:
        """Until ``count`` more requests have been answered (or failed)."""
        seen = self.answered
        wait_for(lambda: self.answered >= seen + count, f"{count} more requests", timeout)

    def __enter__(self) -> Load:
        self._thread.start()
        self.more()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def killed_under_load(port: int, kill: Callable[[], None], left: Callable[[], bool]) -> Load:
    """Requests to ``port`` while ``kill()`` ends a replica, until ``left()`` says it is
    out of rotation; returns the load, whose ``failures`` are only those after that
    (the loop sends one request at a time, so each of those began after it left)."""
    with Load(port) as load:
        kill()
        wait_for(left, "the killed replica out of rotation", 60)
        load.more(5)
        del load.failures[:]
        load.more()
    return load
