"""The tests' one way to wait and one way to give up.

- :func:`wait_for` (and :func:`wait_for_async` in async tests) polls a check until it
  gives something truthy, and fails naming what it waited for when the time is up.
  Tests wait for the effect they need this way, never for a fixed time.
- :func:`unavailable` skips a test that cannot run here, printing why (``-ra`` lists
  the reason too); under ``CI=true``, where everything the suite needs is installed,
  it fails instead: CI never passes by skipping. :func:`needs_root` is it for root.

A test that calls :func:`needs_root` (in its body or in a fixture it uses) is marked
``root`` by ``tests/conftest.py``; tests using the Docker fixtures are marked
``docker``. ``needs_root`` refuses to run in a test that is not marked, so a call
the marking cannot see is caught on any machine, root or not.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

__all__ = [
    "heavy_in",
    "modules_loaded_by",
    "needs_root",
    "stop_proxy",
    "unavailable",
    "wait_for",
    "wait_for_async",
]

HEAVY = ("pydantic", "deepdiff", "aiodocker", "aiohttp", "git", "rich", "ruamel", "croniter")
"""The libraries whose import a command pays for noticeably."""

T = TypeVar("T")

Described = str | Callable[[], str]
"""What a wait is for; a callable is asked only when the wait fails (to show the last
output, say)."""

INTERVAL = 0.05
"""Seconds between two checks."""

MARKED: dict[str, set[str]] = {"root": set(), "docker": set()}
"""Node ids of the collected tests that carry each marker (filled by tests/conftest.py)."""


def _in_vain(what: Described, timeout: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"waited {timeout:g}s in vain for {text}")


def wait_for(
    check: Callable[[], T], what: Described, timeout: float = 30, *, interval: float = INTERVAL
) -> T:
    """The first truthy value of ``check()``, called every ``interval`` seconds; an
    ``AssertionError`` naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _in_vain(what, timeout)
        time.sleep(interval)


async def wait_for_async(
    check: Callable[[], Awaitable[T] | T],
    what: Described,
    timeout: float = 30,
    *,
    interval: float = INTERVAL,
) -> T:
    """:func:`wait_for` for async tests: ``check`` may be a coroutine function, and the
    event loop runs on between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _in_vain(what, timeout)
        await asyncio.sleep(interval)


def unavailable(reason: str) -> NoReturn:
    """Skip the test saying why, loudly; under ``CI=true`` fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


def current_test() -> str:
    """The node id of the test running now."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def require_marker(marker: str, what: str) -> None:
    """Fail unless the running test carries ``marker``: the fast selection
    (``-m "not docker and not root"``) must not run it."""
    test = current_test()
    if test and test not in MARKED[marker]:
        pytest.fail(
            f"{test} uses {what} but is not marked {marker!r}: tests/conftest.py marks tests "
            f"that call needs_root() or use the Docker fixtures directly; mark this one "
            f"with @pytest.mark.{marker}",
            pytrace=False,
        )


def needs_root(what: str) -> None:
    """Skip (fail under ``CI=true``) unless running as root; ``what`` says what needs it."""
    require_marker("root", "needs_root()")
    if os.geteuid() != 0:
        unavailable(f"NOT ROOT: {what} needs root")


def modules_loaded_by(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``zlayer ARGV`` run in a fresh interpreter: (the run, every module it loaded).
    The run's exit status is the command's; the listing is taken from its stderr."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from reconciler.cli.main import main
        code = 0
        try:
            main({list(argv)!r})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
        sys.exit(code)
        """
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    marker = run.stderr.rindex("\nMODULES ")
    modules: list[str] = json.loads(run.stderr[marker + len("\nMODULES ") :])
    run.stderr = run.stderr[:marker]
    return run, modules


def heavy_in(modules: Sequence[str]) -> list[str]:
    """The modules of :data:`HEAVY` libraries among ``modules``."""
    return [m for m in modules if m.split(".")[0] in HEAVY]


def stop_proxy(state_dir: Path) -> int | None:
    """SIGKILL the managed HAProxy of ``state_dir`` by the pid its pid file names, when
    that pid still is HAProxy (a test's proxy outlives the zlayer that started it);
    the pid killed. Its worker exits with its master."""
    try:
        pid = int((state_dir / "proxy" / "haproxy.pid").read_text().split()[0])
        if b"haproxy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        return None
    return pid
