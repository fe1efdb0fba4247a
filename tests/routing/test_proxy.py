"""The managed HAProxy, for real: real HAProxy, real HTTP backends, loopback only.

Every backend is a small HTTP server process on 127.0.0.1 that answers with its own
name, so a test sees which replica served each request. Each test's HAProxy is
stopped by its pid afterwards, also when the test fails.
"""

from __future__ import annotations

import asyncio
import csv
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.observed import WorkloadId
from reconciler.policy import HealthPolicy
from reconciler.route_table import Member, RouteTable, route_table, routed_service
from reconciler.routing.control import proxy_for, sync_routes
from reconciler.routing.host import HostRoutes
from reconciler.routing.proxy import Proxy, executable
from tests.support import unavailable, wait_for_async
from tests.unit.test_routes import public, service

BACKEND = r"""
import http.server, sys, time
name = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = sys.argv[2] if len(sys.argv) > 2 else "HTTP/1.0"
    def do_GET(self):
        if self.path.startswith("/fail"):
            self.send_response(500); self.end_headers(); return
        if self.path.startswith("/slow"):
            time.sleep(2)
        body = f"{name} {self.path} {self.headers.get('Host', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def backends() -> Iterator[Callable[..., int]]:
    """Start a named backend; its port. Every one is stopped by its pid afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(name: str, protocol: str = "HTTP/1.0") -> int:
        process = subprocess.Popen(
            [sys.executable, "-c", BACKEND, name, protocol], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        return int(process.stdout.readline())

    yield start
    for process in started:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    found = proxy_for(tmp_path)
    try:
        yield found
    finally:
        pid = found.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def get(port: int, path: str = "/", host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def fetch(port: int, path: str = "/", host: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path, host)


async def served_by(port: int, count: int, path: str = "/") -> Counter[str]:
    names: Counter[str] = Counter()
    for _ in range(count):
        status, body = await fetch(port, path)
        names[body.split()[0] if status == 200 else f"status {status}"] += 1
    return names


def quick(port: int, path: str = "/") -> HealthPolicy:
    """An http check of ``path`` on the replica's ``port``, every 0.2 s."""
    url = f"http://localhost:{port}{path}"
    return HealthPolicy("http", url=url, interval=0.2, timeout=1.0, retries=2)


def web_table(port: int, target: int, path: str = "/") -> RouteTable:
    endpoint = public(port, target_port=target)
    return route_table([service("web", endpoint, health=quick(target, path))])


async def sync(proxy: Proxy, table: RouteTable, members: dict[str, list[Member]], **kw: Any) -> Any:
    return await sync_routes(proxy, table, members, bind_address="127.0.0.1", **kw)


async def test_every_replica_serves_through_one_public_port(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    replicas = [backends(f"web-{i}") for i in (1, 2, 3)]
    # One route; each replica on a port of its own (the check follows the member's port).
    table = route_table(
        [service("web", public(port), health=HealthPolicy("tcp", interval=0.2, retries=2))]
    )
    members = [Member(i + 1, "127.0.0.1", p) for i, p in enumerate(replicas)]
    result = await sync(proxy, table, {"demo.web.web": members})
    assert result.proxy == "started"
    assert sorted(result.changes[1:]) == [f"demo/web/{i} in rotation on :{port}" for i in (1, 2, 3)]
    names = await served_by(port, 30)
    assert set(names) == {"web-1", "web-2", "web-3"}, names
    again = await sync(proxy, table, {"demo.web.web": members})
    assert (again.proxy, again.changes) == ("unchanged", ())


async def test_hosts_and_paths_share_a_port_and_the_rest_is_a_404(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    tcp = HealthPolicy("tcp", interval=0.2, retries=2)
    table = route_table(
        [
            service("shop", public(port, host="shop.example.test"), health=tcp),
            service("api", public(port, path="/api"), health=tcp),
            service("apiv2", public(port, path="/api/v2"), health=tcp),
        ]
    )
    members = {
        "demo.shop.web": [Member(1, "127.0.0.1", backends("shop"))],
        "demo.api.web": [Member(1, "127.0.0.1", backends("api"))],
        "demo.apiv2.web": [Member(1, "127.0.0.1", backends("apiv2"))],
    }
    await sync(proxy, table, members)
    assert (await fetch(port, "/", "shop.example.test:80"))[1].startswith("shop ")
    assert (await fetch(port, "/api/x"))[1].startswith("api /api/x")
    assert (await fetch(port, "/api/v2/y"))[1].startswith("apiv2 /api/v2/y")
    status, body = await fetch(port, "/other")
    assert (status, body) == (404, "no route")


async def test_a_replica_that_never_passes_the_check_stays_out_of_rotation(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    target = backends("web-1")
    table = web_table(port, target, "/fail")
    assert table.backends[0].check.path == "/fail"
    members = {"demo.web.web": [Member(1, "127.0.0.1", target)]}
    result = await sync(proxy, table, members, ready_timeout=3.0)
    assert any("has not passed" in w for w in result.warnings), result
    status, _ = await fetch(port)
    assert status == 503


async def test_a_replaced_replica_takes_over_and_a_removed_one_leaves(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    table = route_table([service("web", public(port), health=HealthPolicy("tcp", interval=0.2))])
    first, second = backends("old-1"), backends("web-2")
    await sync(
        proxy,
        table,
        {"demo.web.web": [Member(1, "127.0.0.1", first), Member(2, "127.0.0.1", second)]},
    )
    assert set(await served_by(port, 12)) == {"old-1", "web-2"}
    replaced = backends("new-1")
    result = await sync(proxy, table, {"demo.web.web": [Member(1, "127.0.0.1", replaced)]})
    assert f"demo/web/1 in rotation on :{port}" in result.changes
    assert {"demo/web/1 out of rotation", "demo/web/2 out of rotation"} <= set(result.changes)
    assert set(await served_by(port, 12)) == {"new-1"}
    servers = (await proxy.servers())["demo.web.web"]
    assert [s.address for s in servers.values()] == [f"127.0.0.1:{replaced}"]


async def serving_one(
    proxy: Proxy, backends: Callable[[str], int]
) -> tuple[int, RouteTable, dict[str, list[Member]]]:
    """``proxy`` routing a public port to one replica, web-1: (port, table, members)."""
    port = free_port()
    target = backends("web-1")
    table = web_table(port, target)
    members = {"demo.web.web": [Member(1, "127.0.0.1", target)]}
    await sync(proxy, table, members)
    return port, table, members


async def kill_master(proxy: Proxy) -> None:
    pid = proxy.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_for_async(lambda: proxy.pid() is None, "the killed HAProxy to be gone")


async def test_a_killed_proxy_comes_back_with_its_rotation(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port, table, members = await serving_one(proxy, backends)
    await kill_master(proxy)
    result = await sync(proxy, table, members)
    assert result.proxy == "started"
    assert (await fetch(port))[1].startswith("web-1 ")


class DiesMidSync(Proxy):
    """A proxy whose master is killed just before the sync's last write, the moment a
    proxy killed behind zlayer's back lands between two of its steps."""

    writes = 0

    async def apply_config(self, text: str, structure: str) -> Any:
        self.writes += 1
        if self.writes == 2:
            await kill_master(self)
        return await super().apply_config(text, structure)


async def test_a_proxy_killed_during_a_sync_is_started_again_and_says_so(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port, table, members = await serving_one(proxy, backends)
    dying = DiesMidSync(proxy.paths.directory)
    result = await sync(dying, table, members)
    assert dying.writes == 2
    assert result.proxy == "started"
    assert "proxy started" in result.changes
    assert (await fetch(port))[1].startswith("web-1 ")


async def test_a_new_frontend_reloads_without_refusing_a_connection(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port, other = free_port(), free_port()
    one = backends("web-1")
    tcp = HealthPolicy("tcp", interval=0.2, retries=2)
    table = route_table([service("web", public(port), health=tcp)])
    members = {"demo.web.web": [Member(1, "127.0.0.1", one)]}
    await sync(proxy, table, members)
    failures: list[str] = []
    done = threading.Event()
    answered = 0

    def load() -> None:
        nonlocal answered
        while not done.is_set():
            try:
                status, _ = get(port)
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as error:
                failures.append(repr(error))
            answered += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        await wait_for_async(lambda: answered > 20, "requests before the reload")
        bigger = route_table(
            [
                service("web", public(port), health=tcp),
                service("admin", public(other), health=tcp),
            ]
        )
        members["demo.admin.web"] = [Member(1, "127.0.0.1", backends("admin-1"))]
        result = await sync(proxy, bigger, members)
        seen = answered
        await wait_for_async(lambda: answered > seen + 20, "requests after the reload")
    finally:
        done.set()
        worker.join()
    assert result.proxy == "reloaded"
    assert failures == []
    assert (await fetch(other))[1].startswith("admin-1 ")
    assert (await fetch(port))[1].startswith("web-1 ")


async def test_no_route_left_stops_the_proxy(proxy: Proxy, backends: Callable[[str], int]) -> None:
    port = free_port()
    target = backends("w")
    await sync(proxy, web_table(port, target), {"demo.web.web": [Member(1, "127.0.0.1", target)]})
    assert proxy.pid() is not None
    result = await sync(proxy, RouteTable(), {})
    assert result.proxy == "stopped" and proxy.pid() is None
    with pytest.raises(OSError):
        get(port)


async def test_a_draining_replica_finishes_its_requests_and_gets_no_new_ones(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    web = service("web", public(port), health=HealthPolicy("tcp", interval=0.2))
    table = route_table([web])
    routes = HostRoutes(proxy, "127.0.0.1")
    routes.record("demo", [routed_service(web)])  # what a sync of demo records
    one = Member(1, "127.0.0.1", backends("web-1"))
    await sync(proxy, table, {"demo.web.web": [one]})
    slow = asyncio.ensure_future(fetch(port, "/slow"))

    async def busy() -> bool:
        stat = (await proxy.servers())["demo.web.web"][one.server]
        return stat.sessions == 1

    await wait_for_async(busy, "the slow request to reach web-1")
    two = Member(2, "127.0.0.1", backends("web-2"))
    await sync(proxy, table, {"demo.web.web": [one, two]})
    draining = asyncio.ensure_future(routes.drain(WorkloadId("demo", "web", 1)))
    await wait_for_async(lambda: _state_of(proxy, one.server, "DRAIN"), "web-1 to be draining")
    assert set(await served_by(port, 6)) == {"web-2"}
    assert not draining.done()  # the slow request still runs on web-1
    status, body = await slow
    assert (status, body.split()[0]) == (200, "web-1")
    await asyncio.wait_for(draining, timeout=30)


async def _state_of(proxy: Proxy, server: str, status: str) -> bool:
    return (await proxy.servers())["demo.web.web"][server].status == status


async def test_frozen_backends_are_left_as_they_are(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    """A sync about one deployment does not touch another's servers: a server whose
    check fails is not waited for, and one missing from the members is not retired."""
    port, other = free_port(), free_port()
    tcp = HealthPolicy("tcp", interval=0.2, retries=2)
    table = route_table(
        [service("web", public(port), health=tcp), service("admin", public(other), health=tcp)]
    )
    dead = Member(1, "127.0.0.1", free_port())  # nothing listens there: its check fails
    members = {
        "demo.web.web": [Member(1, "127.0.0.1", backends("web-1"))],
        "demo.admin.web": [dead],
    }
    first = await sync(proxy, table, members, ready_timeout=1)
    assert [w for w in first.warnings if "demo/admin/1" in w], first.warnings

    again = await sync(proxy, table, members, ready_timeout=1, frozen=["demo.admin.web"])
    assert again.warnings == ()
    gone = await sync(proxy, table, {**members, "demo.admin.web": []}, frozen=["demo.admin.web"])
    assert gone.changes == ()
    assert list((await proxy.servers())["demo.admin.web"]) == [dead.server]
    assert (await fetch(port))[1].startswith("web-1 ")


async def test_route_stats_count_each_replicas_requests_and_errors(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    port = free_port()
    web = service("web", public(port), health=HealthPolicy("tcp", interval=0.2))
    routes = HostRoutes(proxy, "127.0.0.1")
    routes.record("demo", [routed_service(web)])
    members = [Member(1, "127.0.0.1", backends("web-1")), Member(2, "127.0.0.1", backends("web-2"))]
    await sync(proxy, route_table([web]), {"demo.web.web": members})
    assert await served_by(port, 10) == Counter({"web-1": 5, "web-2": 5})
    assert (await fetch(port, "/fail"))[0] == 500
    rows = await routes.stats()
    assert [(r.deployment, r.service, r.endpoint, r.port, r.replica) for r in rows] == [
        ("demo", "web", "web", port, 1),
        ("demo", "web", "web", port, 2),
    ]
    assert all(r.in_rotation and r.sessions == 0 for r in rows)
    assert sum(r.requests for r in rows) == 11
    assert sum(r.errors for r in rows) == 1
    assert await routes.stats(["other"]) == []


async def test_a_server_added_at_run_time_reuses_its_connections(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    """HAProxy does not give a server added through its runtime API the idle
    connection pool a configured server has; without it, every request opened a new
    connection to the replica (a third of the throughput, bench/proxy.py)."""
    port = free_port()
    target = backends("web-1", "HTTP/1.1")  # keeps its connections open
    await sync(proxy, web_table(port, target), {"demo.web.web": [Member(1, "127.0.0.1", target)]})

    def keep_alive_requests(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(count):
                connection.request("GET", "/")
                assert connection.getresponse().read().startswith(b"web-1 ")
        finally:
            connection.close()

    await asyncio.to_thread(keep_alive_requests, 20)
    text = await proxy.command("show stat")
    (row,) = [r for r in csv.DictReader(io.StringIO(text.lstrip("# "))) if r["type"] == "2"]
    assert int(row["reuse"]) > 0 and int(row["connect"]) < 20, row


async def test_a_backend_with_no_server_yet_is_listed_empty(proxy: Proxy) -> None:
    """So a replica can be admitted into it during a replace (no replica of the
    service was in rotation before)."""
    port = free_port()
    await sync(proxy, web_table(port, free_port()), {"demo.web.web": []})
    assert (await proxy.servers())["demo.web.web"] == {}
    assert await proxy.stats() == []


async def test_a_replica_failing_its_check_does_not_hold_up_the_sync(proxy: Proxy) -> None:
    """Its server stays where it is (DOWN, HAProxy puts it back once its check passes):
    a sync does not wait for it, nor warn."""
    process = subprocess.Popen(
        [sys.executable, "-c", BACKEND, "web-1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        target = int(process.stdout.readline())
        port = free_port()
        table = web_table(port, target)
        members = {"demo.web.web": [Member(1, "127.0.0.1", target)]}
        await sync(proxy, table, members)
        process.kill()
        process.wait()
        await wait_for_async(
            lambda: _state_of(proxy, members["demo.web.web"][0].server, "DOWN"), "web-1 DOWN"
        )
        again = await sync(proxy, table, members, ready_timeout=5)
        assert (again.changes, again.warnings) == ((), ())
        assert list((await proxy.servers())["demo.web.web"]) == [members["demo.web.web"][0].server]
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_an_isolated_replica_leaves_rotation_and_keeps_its_server(
    proxy: Proxy, backends: Callable[[str], int]
) -> None:
    """``errors.on_panic: isolate``: the replica's server goes to maintenance (no new
    requests, however its check goes) and stays there, sync after sync, while the
    others serve; lifted, it is back in rotation."""
    port = free_port()
    tcp = HealthPolicy("tcp", interval=0.2, retries=2)
    table = route_table([service("web", public(port), health=tcp)])
    one, two = Member(1, "127.0.0.1", backends("web-1")), Member(2, "127.0.0.1", backends("web-2"))
    members = {"demo.web.web": [one, two]}
    await sync(proxy, table, members)
    assert set(await served_by(port, 10)) == {"web-1", "web-2"}

    apart = [("demo.web.web", 2)]
    isolated = await sync(proxy, table, members, isolated=apart)
    assert isolated.changes == ("demo/web/2 out of rotation: isolated (errors.on_panic: isolate)",)
    assert await _state_of(proxy, two.server, "MAINT")
    assert await served_by(port, 10) == Counter({"web-1": 10})
    again = await sync(proxy, table, members, isolated=apart)
    assert again.changes == ()  # neither brought back nor retired
    assert await _state_of(proxy, two.server, "MAINT")

    lifted = await sync(proxy, table, members)
    assert lifted.changes == (f"demo/web/2 in rotation on :{port}",)
    assert set(await served_by(port, 10)) == {"web-1", "web-2"}
