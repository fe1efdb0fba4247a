"""Health checks and init steps, run by zlayer from the host (as ZLayer's agent does).

A probe answers one question once: ``None`` when it passed, else why it failed.
Waiting, deadlines and retries are the executor's business. Addresses come from
the driver (:meth:`~reconciler.drivers.base.Driver.address`) so the same check
reaches a container on a Docker network, a port published on the host, or a
replica in a network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from reconciler.errors import DriverError
from reconciler.policy import HealthPolicy, InitStep

Resolve = Callable[[str, int], Awaitable[tuple[str, int]]]
"""(host as written, port) → (host, port) to connect to: maps ``localhost`` to the
replica, and service names to their replicas."""

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


async def tcp_probe(host: str, port: int, timeout: float) -> str | None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"tcp {host}:{port}: no connection within {timeout:g}s"
    except OSError as exc:
        return f"tcp {host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def http_probe(url: str, expect_status: int, timeout: float, resolve: Resolve) -> str | None:
    """GET ``url`` (its host mapped through ``resolve``); passes on ``expect_status``."""
    import aiohttp  # imported on first use: most commands never probe

    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    default_port = 443 if parts.scheme == "https" else 80
    real_host, real_port = await resolve(host, parts.port or default_port)
    shown = f"[{real_host}]" if ":" in real_host else real_host
    target = urlunsplit(parts._replace(netloc=f"{shown}:{real_port}"))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(target, allow_redirects=False, ssl=False) as response,
        ):
            status = response.status
    except TimeoutError:
        return f"http {target}: no answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        return f"http {target}: {exc}"
    if status != expect_status:
        return f"http {target}: status {status}, expected {expect_status}"
    return None


async def command_probe(command: str, timeout: float, env: Mapping[str, str]) -> str | None:
    """``sh -c command`` on the host; passes on exit status 0."""
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        return f"command {command!r}: still running after {timeout:g}s (killed)"
    except asyncio.CancelledError:
        _kill_group(process.pid)
        raise
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
        detail = f": {tail[0][:200]}" if tail[0] else ""
        return f"command {command!r}: exit status {process.returncode}{detail}"
    return None


def _kill_group(pid: int) -> None:
    # The probe runs in its own session: its pid is its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def health_probe(
    policy: HealthPolicy, resolve: Resolve, env: Mapping[str, str]
) -> str | None:
    """One run of a service's health check against one replica."""
    if policy.kind == "tcp":
        if policy.port is None:
            return None  # nothing to connect to: running is healthy
        host, port = await resolve("localhost", policy.port)
        return await tcp_probe(host, port, policy.timeout)
    if policy.kind == "http":
        return await http_probe(policy.url, policy.expect_status, policy.timeout, resolve)
    return await command_probe(policy.command, policy.timeout, env)


async def run_init_step(step: InitStep, resolve: Resolve, env: Mapping[str, str]) -> str | None:
    """Run one init step to completion (waits poll until their timeout); ``None``
    when it succeeded, else why not."""
    params = step.with_
    timeout = step.timeout
    if step.uses == "init.run":
        return await command_probe(str(params.get("command", "")), timeout, env)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: str | None = "never checked"
    while loop.time() < deadline:
        remaining = max(0.1, min(5.0, deadline - loop.time()))
        try:
            if step.uses == "init.wait_tcp":
                host, port = await resolve(
                    str(params.get("host", "localhost")), int(params["port"])
                )
                last = await tcp_probe(host, port, remaining)
            elif step.uses == "init.wait_http":
                expect = int(params.get("expect_status", 200))
                last = await http_probe(str(params["url"]), expect, remaining, resolve)
            else:
                return f"{step.uses} is not supported by this runtime"
        except DriverError as exc:
            last = str(exc)  # a peer with no replica yet: wait for it like for a port
        if last is None:
            return None
        await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
    return f"not ready within {timeout:g}s: {last}"


def init_step_problem(step: InitStep) -> str | None:
    """Why ``step`` cannot run at all (checked before anything is touched)."""
    if "timeout" in step.with_:
        return f"with.timeout {step.with_['timeout']!r} is not a duration (like 30s)"
    if step.uses == "init.run":
        return None if step.with_.get("command") else "init.run needs with.command"
    if step.uses == "init.wait_tcp":
        port = step.with_.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            return "init.wait_tcp needs with.port (1-65535)"
        return None
    if step.uses == "init.wait_http":
        return None if step.with_.get("url") else "init.wait_http needs with.url"
    if step.uses.startswith("init.s3_"):
        return None  # whether S3 works is each runtime's to say (Driver.limits)
    return f"{step.uses} is not supported by zlayer's runtimes yet"
