"""The way to the engine: timeouts, errors translated at the call, and streams.

Every aiodocker call runs inside :func:`translated`, so what aiodocker or aiohttp
raise leaves the driver as the project's own error (:func:`.errors.engine_error`),
chained with ``from``. aiodocker is imported by :func:`connect`, on the first call
that needs it (reads go through :mod:`.reader`): nothing here imports it earlier.
The streaming calls (logs, events) are made here rather than through aiodocker's
helpers, whose responses stay open when a reader stops early: these are released
for certain.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from reconciler.drivers.docker.errors import engine_error
from reconciler.errors import (
    NotFound,
    PermanentDriverError,
    RuntimeUnreachable,
)

if TYPE_CHECKING:
    import aiodocker
    import aiohttp

TIMEOUT = 120.0
"""Per request, seconds; Docker's long operations (pull, stop, logs) lift it."""
CONNECT_TIMEOUT = 10.0


def connect(url: str | None) -> aiodocker.Docker:
    """An aiodocker client for the engine at ``url`` (``None``: as aiodocker finds it);
    ``PermanentDriverError`` when no engine is named and no socket exists."""
    import aiodocker
    import aiohttp

    try:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT, connect=CONNECT_TIMEOUT)
        return aiodocker.Docker(url=url, timeout=timeout)
    except (ValueError, AssertionError) as exc:
        # aiodocker asserts (or, under -O, raises ValueError) when no address is known.
        reason = str(exc) or "DOCKER_HOST is not set and no Docker socket was found"
        raise PermanentDriverError(f"docker: no engine to connect to: {reason}") from exc


def _stream_timeout() -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None)


def stream_errors() -> tuple[type[BaseException], ...]:
    """What a broken stream raises (outside :func:`translated`)."""
    import aiohttp
    from aiodocker.exceptions import DockerError

    return (DockerError, TimeoutError, aiohttp.ClientError)


@contextmanager
def translated(
    subject: object, action: str, *, missing: type[PermanentDriverError] = NotFound
) -> Iterator[None]:
    """Translate what the engine (or the way to it) raises into the project's errors.

    The classes are looked up only when something was raised, and only if aiodocker
    is loaded at all (an exception cannot come from a module never imported), so this
    costs a read through :mod:`.reader` no aiodocker import."""
    try:
        yield
    except Exception as exc:
        exceptions = sys.modules.get("aiodocker.exceptions")
        if exceptions is not None and isinstance(exc, exceptions.DockerError):
            raise engine_error(
                exc.status, exc.message, str(subject), action, missing=missing
            ) from exc
        client = sys.modules.get("aiohttp")
        if isinstance(exc, TimeoutError) or (
            client is not None and isinstance(exc, client.ClientError)
        ):
            reason = str(exc) or type(exc).__name__
            message = f"{subject}: {action} failed: no answer from the engine ({reason})"
            raise RuntimeUnreachable(message, delay=5.0) from exc
        raise


async def log_lines(
    docker: aiodocker.Docker,
    name: str,
    subject: object,
    *,
    tty: bool,
    follow: bool,
    tail: int | None,
) -> AsyncGenerator[str, None]:
    """The lines of container ``name``'s output (the last ``tail``; all for None), and
    with ``follow`` the lines it writes from then on until it ends."""
    count = "all" if tail is None else str(tail)
    if not follow:
        with translated(subject, "logs"):
            chunks = await docker.containers.container(name).log(
                stdout=True, stderr=True, tail=count
            )
        for line in "".join(chunks).splitlines():
            yield line
        return
    params = {"stdout": "1", "stderr": "1", "follow": "1", "tail": count}
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    with translated(subject, "logs"):
        async with docker._query(
            f"containers/{name}/logs", params=params, timeout=_stream_timeout()
        ) as response:
            try:
                async for chunk in _frames(response, tty=tty):
                    pending += decoder.decode(chunk)
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        yield line.removesuffix("\r")
            finally:
                response.close()
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


async def _frames(response: aiohttp.ClientResponse, *, tty: bool) -> AsyncIterator[bytes]:
    """The payloads of a log stream: raw for a tty, else Docker's multiplexed frames
    (an 8-byte header with the stream and the length, then the bytes)."""
    if tty:
        async for chunk in response.content.iter_any():
            yield chunk
        return
    while True:
        try:
            header = await response.content.readexactly(8)
            size = int.from_bytes(header[4:8], "big")
            if size:
                yield await response.content.readexactly(size)
        except asyncio.IncompleteReadError:
            return


async def events(docker: aiodocker.Docker, filters: str) -> AsyncGenerator[dict[str, object], None]:
    """The engine's events matching ``filters`` (JSON), until the stream breaks (then
    one of :data:`STREAM_ERRORS` is raised, or the generator ends)."""
    async with docker._query(
        "events", params={"filters": filters}, timeout=_stream_timeout()
    ) as response:
        try:
            async for raw in response.content:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
        finally:
            response.close()  # as for logs: released for certain
