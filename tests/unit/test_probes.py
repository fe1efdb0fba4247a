"""Health probes and init steps against real sockets on 127.0.0.1 and real subprocesses."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.errors import NotFound
from reconciler.policy import HealthPolicy, InitStep, service_policy
from reconciler.probes import (
    command_probe,
    health_probe,
    http_probe,
    init_step_problem,
    run_init_step,
    tcp_probe,
)
from tests.conftest import load_ok, service_text
from tests.support import wait_for_async


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Resolver:
    """Maps every host to 127.0.0.1 and ``port`` (when given) and records what it was asked."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> tuple[str, int]:
        self.calls.append((host, port))
        return "127.0.0.1", self.port or port


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def start_tcp_server(port: int = 0) -> tuple[asyncio.Server, int, asyncio.Event]:
    connected = asyncio.Event()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, server.sockets[0].getsockname()[1], connected


async def stop(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


# --- tcp ------------------------------------------------------------------------------


async def test_tcp_probe_passes_when_a_server_listens() -> None:
    server, port, connected = await start_tcp_server()
    try:
        assert await tcp_probe("127.0.0.1", port, 2.0) is None
        await asyncio.wait_for(connected.wait(), 5)
    finally:
        await stop(server)


async def test_tcp_probe_fails_when_nothing_listens() -> None:
    port = free_port()
    problem = await tcp_probe("127.0.0.1", port, 2.0)
    assert problem is not None
    assert problem.startswith(f"tcp 127.0.0.1:{port}: ")


# --- http -----------------------------------------------------------------------------


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    """A real aiohttp server on 127.0.0.1: /ok answers 200, /teapot 418, /slow
    answers only when the test ends."""
    release = asyncio.Event()

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def teapot(_request: web.Request) -> web.Response:
        return web.Response(status=418)

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    try:
        yield port
    finally:
        release.set()
        await runner.cleanup()


async def test_http_probe_passes_on_the_expected_status_through_the_resolver(
    http_port: int,
) -> None:
    resolve = Resolver(http_port)
    assert await http_probe("http://localhost:8080/ok", 200, 5.0, resolve) is None
    assert resolve.calls == [("localhost", 8080)]


async def test_http_probe_reports_both_statuses(http_port: int) -> None:
    resolve = Resolver(http_port)
    problem = await http_probe("http://localhost:8080/teapot", 200, 5.0, resolve)
    assert problem == f"http http://127.0.0.1:{http_port}/teapot: status 418, expected 200"
    assert await http_probe("http://localhost:8080/teapot", 418, 5.0, resolve) is None


async def test_http_probe_asks_for_the_default_port(http_port: int) -> None:
    resolve = Resolver(http_port)
    assert await http_probe("http://localhost/ok", 200, 5.0, resolve) is None
    assert resolve.calls == [("localhost", 80)]


async def test_http_probe_times_out(http_port: int) -> None:
    problem = await http_probe("http://localhost:1/slow", 200, 0.3, Resolver(http_port))
    assert problem == f"http http://127.0.0.1:{http_port}/slow: no answer within 0.3s"


async def test_http_probe_fails_when_nothing_listens() -> None:
    port = free_port()
    problem = await http_probe("http://localhost/ok", 200, 5.0, Resolver(port))
    assert problem is not None
    assert problem.startswith(f"http http://127.0.0.1:{port}/ok: ")


# --- command --------------------------------------------------------------------------


async def test_command_probe_passes_on_exit_zero_with_the_env() -> None:
    assert await command_probe('test "$PROBE_X" = yes', 5.0, {"PROBE_X": "yes"}) is None
    problem = await command_probe('test "$PROBE_X" = yes', 5.0, {"PROBE_X": "no"})
    assert problem == "command 'test \"$PROBE_X\" = yes': exit status 1"


async def test_command_probe_reports_the_status_and_the_last_output_line() -> None:
    command = "echo first; echo 'last line' >&2; exit 4"
    problem = await command_probe(command, 5.0, {})
    assert problem == f"command {command!r}: exit status 4: last line"


async def test_command_probe_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    command = f"sleep 30 & echo $! > {pidfile}; wait"
    # Generous bound: a surviving child would hold the output pipe open for 30s.
    problem = await asyncio.wait_for(command_probe(command, 0.5, {}), 10)
    assert problem == f"command {command!r}: still running after 0.5s (killed)"
    pid = int(pidfile.read_text())
    await wait_for_async(lambda: not alive(pid), f"the probe's child {pid} to be killed", 5)


# --- health_probe ---------------------------------------------------------------------


async def test_health_probe_without_a_port_passes_without_connecting() -> None:
    resolve = Resolver()
    assert await health_probe(HealthPolicy("tcp", port=None), resolve, {}) is None
    assert resolve.calls == []


async def test_health_probe_tcp_connects_to_the_resolved_port() -> None:
    server, port, connected = await start_tcp_server()
    try:
        resolve = Resolver(port)
        assert await health_probe(HealthPolicy("tcp", port=8080, timeout=2.0), resolve, {}) is None
        assert resolve.calls == [("localhost", 8080)]
        await asyncio.wait_for(connected.wait(), 5)
    finally:
        await stop(server)
    problem = await health_probe(HealthPolicy("tcp", port=8080, timeout=2.0), Resolver(port), {})
    assert problem is not None and problem.startswith(f"tcp 127.0.0.1:{port}: ")


async def test_health_probe_http_and_command(http_port: int) -> None:
    policy = HealthPolicy("http", url="http://localhost:9000/teapot", expect_status=418)
    resolve = Resolver(http_port)
    assert await health_probe(policy, resolve, {}) is None
    assert resolve.calls == [("localhost", 9000)]
    command = HealthPolicy("command", command='test "$ZLAYER_REPLICA" = 2')
    assert await health_probe(command, Resolver(), {"ZLAYER_REPLICA": "2"}) is None
    assert await health_probe(command, Resolver(), {"ZLAYER_REPLICA": "1"}) is not None


# --- init steps -----------------------------------------------------------------------


async def test_wait_tcp_waits_until_a_server_listens() -> None:
    port = free_port()
    step = InitStep("w", "init.wait_tcp", {"host": "localhost", "port": 8080}, timeout=20.0)
    resolve = Resolver(port)

    async def later() -> asyncio.Server:
        await asyncio.sleep(0.4)
        server, _, _ = await start_tcp_server(port)
        return server

    starting = asyncio.create_task(later())
    try:
        assert await run_init_step(step, resolve, {}) is None
    finally:
        await stop(await starting)
    assert len(resolve.calls) >= 2  # it polled before the server was there
    assert set(resolve.calls) == {("localhost", 8080)}


async def test_wait_tcp_waits_for_a_peer_the_driver_does_not_know_yet() -> None:
    server, port, connected = await start_tcp_server()
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, wanted: int) -> tuple[str, int]:
        asked.append((host, wanted))
        if len(asked) < 3:
            raise NotFound("demo/db/1: no such workload")
        return "127.0.0.1", port

    step = InitStep("w", "init.wait_tcp", {"host": "db", "port": 5432}, timeout=20.0)
    try:
        assert await run_init_step(step, resolve, {}) is None
        await asyncio.wait_for(connected.wait(), 5)
    finally:
        await stop(server)
    assert asked == [("db", 5432)] * 3

    async def missing(_host: str, _port: int) -> tuple[str, int]:
        raise NotFound("demo/db/1: no such workload")

    short = InitStep("w", "init.wait_tcp", {"host": "db", "port": 5432}, timeout=0.3)
    problem = await run_init_step(short, missing, {})
    assert problem == "not ready within 0.3s: demo/db/1: no such workload"


async def test_wait_tcp_gives_up_after_its_timeout() -> None:
    port = free_port()
    step = InitStep("w", "init.wait_tcp", {"port": port}, timeout=0.3)
    problem = await run_init_step(step, Resolver(), {})
    assert problem is not None
    assert problem.startswith(f"not ready within 0.3s: tcp 127.0.0.1:{port}: ")


async def test_wait_http_passes_on_the_expected_status(http_port: int) -> None:
    ok = InitStep("h", "init.wait_http", {"url": "http://localhost:8080/ok"}, timeout=5.0)
    assert await run_init_step(ok, Resolver(http_port), {}) is None
    teapot = InitStep(
        "h", "init.wait_http", {"url": "http://db/teapot", "expect_status": 418}, timeout=5.0
    )
    assert await run_init_step(teapot, Resolver(http_port), {}) is None
    wrong = InitStep("h", "init.wait_http", {"url": "http://db/teapot"}, timeout=0.3)
    problem = await run_init_step(wrong, Resolver(http_port), {})
    assert problem is not None
    assert problem.startswith("not ready within 0.3s: ")
    assert problem.endswith("status 418, expected 200")


async def test_init_run_runs_the_command_with_the_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    step = InitStep("r", "init.run", {"command": f'echo "$ZLAYER_SERVICE" > {out}'}, timeout=5.0)
    assert await run_init_step(step, Resolver(), {"ZLAYER_SERVICE": "web"}) is None
    assert out.read_text() == "web\n"
    failing = InitStep("r", "init.run", {"command": "echo nope; exit 2"}, timeout=5.0)
    assert await run_init_step(failing, Resolver(), {}) == (
        "command 'echo nope; exit 2': exit status 2: nope"
    )


async def test_init_run_timeout_in_with_overrides_the_step_timeout() -> None:
    loaded = load_ok(
        service_text(
            """
            init:
              steps:
                - {id: r, uses: init.run, with: {command: "sleep 10", timeout: 300ms}, timeout: 60s}
                - {id: q, uses: init.run, with: {command: "true", timeout: 2}}
                - {id: z, uses: init.run, with: {command: "true", timeout: soon}}
            """
        )
    )
    steps = service_policy(loaded.spec.services["web"]).init
    assert [(s.timeout, dict(s.with_)) for s in steps] == [
        (0.3, {"command": "sleep 10"}),
        (2.0, {"command": "true"}),
        (300.0, {"command": "true", "timeout": "soon"}),
    ]
    assert init_step_problem(steps[2]) == "with.timeout 'soon' is not a duration (like 30s)"
    assert await run_init_step(steps[0], Resolver(), {}) == (
        "command 'sleep 10': still running after 0.3s (killed)"
    )


async def test_unsupported_init_action_says_so() -> None:
    step = InitStep("s", "init.s3_pull", {"bucket": "b"}, timeout=5.0)
    assert await run_init_step(step, Resolver(), {}) == (
        "init.s3_pull is not supported by this runtime"
    )


@pytest.mark.parametrize(
    ("uses", "with_", "problem"),
    [
        ("init.run", {"command": "true"}, None),
        ("init.run", {}, "init.run needs with.command"),
        ("init.run", {"command": ""}, "init.run needs with.command"),
        ("init.wait_tcp", {"host": "db", "port": 5432}, None),
        ("init.wait_tcp", {"host": "db"}, "init.wait_tcp needs with.port (1-65535)"),
        ("init.wait_tcp", {"port": 0}, "init.wait_tcp needs with.port (1-65535)"),
        ("init.wait_tcp", {"port": 65536}, "init.wait_tcp needs with.port (1-65535)"),
        ("init.wait_tcp", {"port": "5432"}, "init.wait_tcp needs with.port (1-65535)"),
        ("init.wait_http", {"url": "http://db/"}, None),
        ("init.wait_http", {}, "init.wait_http needs with.url"),
        ("init.s3_pull", {}, None),  # the runtime's limits decide
        ("init.s3_push", {}, None),
        ("init.custom", {}, "init.custom is not supported by zlayer's runtimes yet"),
    ],
)
def test_init_step_problem(uses: str, with_: dict[str, object], problem: str | None) -> None:
    assert init_step_problem(InitStep("s", uses, with_)) == problem
