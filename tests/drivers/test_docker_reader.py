"""The Docker driver's read-only way to the engine (:mod:`reconciler.drivers.docker.reader`):
which address it reads, the engine's answers and errors over real HTTP on unix sockets
(the private engine, and a server of the test's own for the answers an engine gives
only when something is wrong), and the aiodocker reads it leaves to aiodocker when the
engine is not on a unix socket (through a TCP forwarder on 127.0.0.1 to the private
engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.drivers.docker import DockerDriver
from reconciler.drivers.docker.reader import SocketReader, socket_path
from reconciler.errors import (
    Conflict,
    NotFound,
    PermanentDriverError,
    TemporaryDriverError,
)
from tests.docker_support import compile_services

pytest_plugins = ["tests.docker_support"]


# --- which engine ---------------------------------------------------------------------------------


def test_the_socket_comes_from_the_url_then_docker_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    assert socket_path("unix:///tmp/given.sock") == "/tmp/given.sock"
    assert socket_path(None) == "/run/other.sock"
    # Not a unix socket: aiodocker's business (TLS, TCP, SSH).
    assert socket_path("tcp://127.0.0.1:2375") is None
    monkeypatch.setenv("DOCKER_HOST", "ssh://user@host")
    assert socket_path(None) is None


def test_a_docker_context_is_left_to_aiodocker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    monkeypatch.setenv("DOCKER_CONTEXT", "remote")
    assert socket_path(None) is None
    assert socket_path("unix:///tmp/given.sock") == "/tmp/given.sock"  # named outright
    monkeypatch.delenv("DOCKER_CONTEXT")
    config = tmp_path / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"currentContext": "remote"}))
    assert socket_path(None) is None
    config.write_text(json.dumps({"currentContext": "default"}))
    assert socket_path(None) == "/run/other.sock"
    config.write_text("{not json")
    assert socket_path(None) == "/run/other.sock"


# --- the engine's answers -------------------------------------------------------------------------


async def test_reads_the_private_engine(docker_url: str) -> None:
    path = socket_path(docker_url)
    assert path is not None
    reader = SocketReader(path)
    info = await reader.get("info", subject="docker", action="connect")
    assert isinstance(info, dict) and int(info["NCPU"]) >= 1
    listed = await reader.get(
        "containers/json",
        {"all": "1", "filters": json.dumps({"label": ["zlayer.test.none"]})},
        subject="docker",
        action="observe",
    )
    assert listed == []
    with pytest.raises(NotFound, match=r"^zt-none: inspect failed: No such container"):
        await reader.get("containers/zt-none-1/json", subject="zt-none", action="inspect")


async def test_no_engine_at_the_socket_is_a_temporary_error(tmp_path: Path) -> None:
    reader = SocketReader(str(tmp_path / "docker.sock"))
    with pytest.raises(TemporaryDriverError, match=r"^docker: connect failed: no answer"):
        await reader.get("info", subject="docker", action="connect")


@contextlib.asynccontextmanager
async def engine_answering(path: Path, answers: dict[str, tuple[int, str]]) -> AsyncIterator[None]:
    """An HTTP server on the unix socket ``path`` answering ``/NAME`` with (status, body)."""

    async def answer(request: web.Request) -> web.Response:
        status, body = answers[request.match_info["name"]]
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{name}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        yield
    finally:
        await runner.cleanup()


async def test_engine_errors_become_the_projects_own(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    answers = {
        "busy": (500, json.dumps({"message": "engine busy"})),
        "refused": (400, json.dumps({"message": "bad parameter"})),
        "taken": (409, json.dumps({"message": "name in use"})),
        "gone": (404, "page not found"),
        "garbled": (200, "{not json"),
        "fine": (200, json.dumps({"ok": True})),
    }
    async with engine_answering(sock, answers):
        reader = SocketReader(str(sock))

        async def get(name: str) -> object:
            return await reader.get(name, subject="demo/web/1", action="inspect")

        assert await get("fine") == {"ok": True}
        busy = r"^demo/web/1: inspect failed: engine busy$"
        with pytest.raises(TemporaryDriverError, match=busy):
            await get("busy")
        with pytest.raises(PermanentDriverError, match=r"bad parameter$") as refused:
            await get("refused")
        assert not isinstance(refused.value, NotFound | Conflict)
        with pytest.raises(Conflict, match=r"name in use$"):
            await get("taken")
        with pytest.raises(NotFound, match=r"inspect failed: page not found$"):
            await get("gone")
        with pytest.raises(TemporaryDriverError, match="the engine's answer is not JSON"):
            await get("garbled")


# --- not on a unix socket: aiodocker reads -------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_forwarder(unix_path: str) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP listener on 127.0.0.1 passing every connection on to ``unix_path``:
    (its port, a list that gets one entry per connection)."""
    connections: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        connections.append(1)
        engine_r, engine_w = await asyncio.open_unix_connection(unix_path)
        both = [
            asyncio.create_task(pipe(client_r, engine_w)),
            asyncio.create_task(pipe(engine_r, client_w)),
        ]
        tasks.update(both)
        await asyncio.gather(*both)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_an_engine_on_tcp_is_read_through_aiodocker(
    docker_url: str, test_image: str, deployment_name: str
) -> None:
    path = socket_path(docker_url)
    assert path is not None
    service = compile_services(
        deployment_name,
        f"web: {{image: {{name: {json.dumps(test_image)}, pull_policy: never}}, "
        "command: {entrypoint: [sleep], args: ['600']}}",
    )["web"]
    async with DockerDriver(docker_url, publish_address="127.0.0.1") as direct:
        await direct.create(service, 1, "rev-1")
        expected = await direct.observe([deployment_name])
    assert [str(w.id) for w in expected.workloads] == [f"{deployment_name}/web/1"]
    async with tcp_forwarder(path) as (port, connections):
        async with DockerDriver(f"tcp://127.0.0.1:{port}") as driver:
            observed = await driver.observe([deployment_name])
            status = await driver.status(service.workload_id(1))
        assert connections, "the driver read through the TCP address"
    assert observed.workloads == expected.workloads
    assert status is not None and status.status == "running"
