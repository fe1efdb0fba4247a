"""The daemon's HTTP layer over real sockets (a unix socket and 127.0.0.1): who may
read and change what, webhook authentication, limits, metrics text. A small recording view
stands in for the daemon here; the real daemon behind it is in test_daemon*.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reconciler.daemon.api import ApiConfig, ApiServer, start_api
from reconciler.daemon.metrics import Metrics, render_metrics
from reconciler.errors import ZlayerError
from reconciler.routing.host import RouteStat

SECRET = b"hook-secret"
TOKEN = "t0ken"


class View:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        return False, "no revision applied yet"

    def status(self) -> dict[str, Any]:
        return {"applied": {"revision": "abc"}}

    async def observed(self) -> dict[str, Any]:
        return {"format": "zlayer-observed", "workloads": []}

    async def plan(self) -> dict[str, Any]:
        return {"actions": []}

    async def metrics(self) -> Metrics:
        return Metrics(reconciles={"applied": 2}, restarts=7, applied_revision="abc",
                       applied_at=100.0, started_at=50.0)  # fmt: skip

    def request_reconcile(self, reason: str) -> None:
        self.calls.append(("reconcile", reason))

    def request_fetch(self, reason: str) -> None:
        self.calls.append(("fetch", reason))

    def retry(self) -> dict[str, Any]:
        self.calls.append(("retry", ""))
        return {"cleared_bad_revisions": 0, "released": []}

    async def run_job(self, deployment: str, service: str, trigger: str) -> dict[str, Any]:
        if service == "missing":
            raise KeyError(service)
        self.calls.append(("run", f"{deployment}/{service}"))
        return {"run": "r1", "status": "running"}

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return [{"id": "r1"}][:limit]


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    view = View()
    config = ApiConfig(
        socket_path=tmp_path / "run" / "api.sock",
        listen=("127.0.0.1", 0),
        token=TOKEN,
        webhook_secret=SECRET,
    )
    api = await start_api(view, config)
    try:
        yield view, api, config
    finally:
        await api.close()


def _tcp(api: ApiServer) -> str:
    return f"http://127.0.0.1:{api.port}"


READS = ("/v1/status", "/v1/observed", "/v1/plan", "/v1/jobs")
PROBES = ("/healthz", "/readyz", "/metrics")


async def test_over_tcp_reads_need_the_token_and_probes_do_not(served: Any) -> None:
    _, api, _ = served
    good = {"Authorization": f"Bearer {TOKEN}"}
    wrong = ("Bearer wrong", f"Bearer {TOKEN}x", TOKEN, f"bearer {TOKEN}", "")
    async with aiohttp.ClientSession() as http:
        for path in READS:
            async with http.get(_tcp(api) + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "bearer token" in (await r.json())["error"]
                body = await r.text()
                assert "abc" not in body and "zlayer-observed" not in body and "r1" not in body
            for header in wrong:
                async with http.get(_tcp(api) + path, headers={"Authorization": header}) as r:
                    assert r.status == 401, (path, header)
            async with http.get(_tcp(api) + path, headers=good) as r:
                assert r.status == 200, path
        async with http.get(_tcp(api) + "/v1/status", headers=good) as r:
            assert (await r.json())["applied"]["revision"] == "abc"
        async with http.get(_tcp(api) + "/v1/observed", headers=good) as r:
            assert (await r.json())["format"] == "zlayer-observed"
        async with http.get(_tcp(api) + "/v1/jobs?limit=5", headers=good) as r:
            assert await r.json() == [{"id": "r1"}]
        # other spellings of a guarded path are guarded too, and unknown paths say nothing
        for path in ("/v1/status/", "//v1/status", "/v1/../v1/status", "/v1/nope"):
            async with http.get(_tcp(api) + path) as r:
                assert r.status in (401, 404), path
                assert "abc" not in await r.text()
        async with http.get(_tcp(api) + "/healthz") as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        async with http.get(_tcp(api) + "/readyz") as r:
            assert r.status == 503 and "no revision" in (await r.json())["reason"]
        async with http.get(_tcp(api) + "/metrics") as r:
            assert r.status == 200 and "zlayer_restarts_total 7" in await r.text()


async def test_the_unix_socket_needs_no_token(served: Any) -> None:
    view, _, config = served
    connector = aiohttp.UnixConnector(path=str(config.socket_path))
    async with aiohttp.ClientSession(connector=connector) as http:
        for path in READS + PROBES:
            async with http.get("http://zlayer" + path) as r:
                assert r.status == (503 if path == "/readyz" else 200), path
        async with http.get("http://zlayer/v1/status") as r:
            assert (await r.json())["applied"]["revision"] == "abc"
        async with http.post("http://zlayer/v1/jobs/d/report/run") as r:
            assert r.status == 202 and (await r.json())["run"] == "r1"
        async with http.get("http://zlayer/v1/jobs?limit=5") as r:
            assert await r.json() == [{"id": "r1"}]
    assert view.calls == [("run", "d/report")]
    mode = config.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


async def test_changes_need_the_token_over_tcp(served: Any) -> None:
    view, api, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.post(_tcp(api) + "/v1/reconcile") as r:
            assert r.status == 401
        bad = {"Authorization": "Bearer wrong"}
        async with http.post(_tcp(api) + "/v1/retry", headers=bad) as r:
            assert r.status == 401
        async with http.post(_tcp(api) + "/v1/jobs/d/report/run", headers=bad) as r:
            assert r.status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(_tcp(api) + "/v1/reconcile", headers=good) as r:
            assert r.status == 202
        async with http.post(_tcp(api) + "/v1/jobs/d/missing/run", headers=good) as r:
            assert r.status == 404
    assert view.calls == [("reconcile", "operator (tcp)")]


async def test_without_a_token_tcp_answers_only_the_probes(tmp_path: Path) -> None:
    view = View()
    api = await start_api(view, ApiConfig(socket_path=None, listen=("127.0.0.1", 0)))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(_tcp(api) + "/v1/reconcile") as r:
                assert r.status == 403 and "unix socket" in (await r.json())["error"]
            for path in READS:
                for headers in ({}, {"Authorization": "Bearer anything"}):
                    async with http.get(_tcp(api) + path, headers=headers) as r:
                        assert r.status == 403, path
                        error = (await r.json())["error"]
                        assert "token" in error and "unix socket" in error
            for path in PROBES:
                async with http.get(_tcp(api) + path) as r:
                    assert r.status == (503 if path == "/readyz" else 200), path
            async with http.post(_tcp(api) + "/v1/webhook", data=b"{}") as r:
                assert r.status == 404  # no secret: no webhook
    finally:
        await api.close()
    assert view.calls == []


def _signed(body: bytes, delivery: str, secret: bytes = SECRET) -> dict[str, str]:
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push"}  # fmt: skip


async def test_webhook_abuse_causes_no_fetch(served: Any) -> None:
    view, api, _ = served
    body = b'{"ref": "refs/heads/main"}'
    url = _tcp(api) + "/v1/webhook"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={"X-GitHub-Delivery": "x"}) as r:
            assert r.status == 401
        async with http.post(url, data=body, headers=_signed(body, "y", b"wrong")) as r:
            assert r.status == 401
        async with http.post(url, data=body + b" ", headers=_signed(body, "z")) as r:
            assert r.status == 401  # the signature is over other bytes
        async with http.post(url, data=body, headers=_signed(body, "ok-1")) as r:
            assert r.status == 202
        async with http.post(url, data=body, headers=_signed(body, "ok-1")) as r:
            assert r.status == 200 and "repeated" in (await r.json())["ignored"]
        ping = {**_signed(body, "p"), "X-GitHub-Event": "ping"}
        async with http.post(url, data=body, headers=ping) as r:
            assert r.status == 200
    assert [c for c in view.calls if c[0] == "fetch"] == [("fetch", "webhook ok-1")]
    assert sum(h.rejected for h in api.handlers) == 3


async def test_an_oversized_body_is_refused_before_it_is_read(served: Any) -> None:
    view, api, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            b"POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {1024 * 1024 + 1}\r\n\r\n".encode()
        )  # headers only: the body is never sent
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert b" 413 " in status_line
    # chunked, no length announced: read up to the cap, then refused
    async with aiohttp.ClientSession() as http:

        async def chunks() -> Any:
            for _ in range(17):
                yield b"x" * 65536

        async with http.post(_tcp(api) + "/v1/webhook", data=chunks()) as r:
            assert r.status == 413
    assert view.calls == []


async def test_sockets_claimed_safely(tmp_path: Path) -> None:
    with pytest.raises(ZlayerError, match="loopback only"):
        ApiConfig(socket_path=None, listen=("0.0.0.0", 9464))
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a killed daemon's
    api = await start_api(View(), ApiConfig(socket_path=path))
    try:
        with pytest.raises(ZlayerError, match="another daemon answers"):
            await start_api(View(), ApiConfig(socket_path=path))
    finally:
        await api.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ZlayerError, match="not a socket"):
        await start_api(View(), ApiConfig(socket_path=path))


def test_metrics_are_prometheus_text() -> None:
    text = render_metrics(
        Metrics(
            reconciles={"applied": 3, "failed": 1},
            reconcile_duration_sum=1.5,
            reconcile_duration_count=4,
            workloads={"running": 20},
            restarts=7,
            applied_revision='r"1',
            applied_at=1000.0,
            job_runs={"succeeded": 2},
        ),
        now=1060.5,
    )
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\]|\\.)*"\})? -?[0-9.e+]+$')
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
    assert {"zlayer_reconciles_total", "zlayer_restarts_total", "zlayer_workloads",
            "zlayer_applied_revision_age_seconds"} <= families  # fmt: skip
    assert 'zlayer_reconciles_total{outcome="failed"} 1' in text
    assert 'zlayer_applied_revision_age_seconds{revision="r\\"1"} 60.5' in text
    assert "zlayer_reconcile_duration_seconds_count 4" in text
    assert "applied_revision_age" not in render_metrics(Metrics(), now=5.0)
    json.dumps(text)  # plain text, nothing binary


def test_route_metrics_have_one_sample_per_replica_server() -> None:
    def stat(replica: int, status: str, requests: int) -> RouteStat:
        return RouteStat("demo", "web", "http", 8080, replica, status, "L7OK", 1, requests, 2, 15)

    text = render_metrics(Metrics(routes=(stat(1, "UP", 40), stat(2, "DRAIN", 9))), now=5.0)
    labels = 'deployment="demo",service="web",endpoint="http",port="8080"'
    assert f'zlayer_route_in_rotation{{{labels},replica="1"}} 1' in text
    assert f'zlayer_route_in_rotation{{{labels},replica="2"}} 0' in text
    assert f'zlayer_route_requests_total{{{labels},replica="1"}} 40' in text
    assert f'zlayer_route_errors_total{{{labels},replica="2"}} 2' in text
    assert f'zlayer_route_response_seconds{{{labels},replica="1"}} 0.015' in text
    assert "# TYPE zlayer_route_requests_total counter" in text
    assert "zlayer_route_" not in render_metrics(Metrics(), now=5.0)
