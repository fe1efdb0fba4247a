"""Waiting for an event with a timeout, cancellation intact.

``asyncio.wait_for(event.wait(), t)`` on Python 3.11 can swallow a cancellation that
arrives as the event is set, and a loop around it then never ends (the daemon would
not stop on SIGTERM). ``asyncio.timeout`` tells its own deadline from a cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True when ``event`` was set, False when ``timeout`` seconds passed first."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05
) -> bool:
    """True as soon as ``check()`` is true, polling every ``interval`` seconds (up to
    1 s, doubling); False when ``timeout`` seconds passed first."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(interval)
                interval = min(interval * 2, 1.0)
    except TimeoutError:
        return False
    return True
