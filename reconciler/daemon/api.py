"""The daemon's HTTP API (aiohttp): on a unix socket, and optionally on a loopback port.

On the unix socket everything is allowed: its file permissions (0660, in a 0700
directory where zlayer creates it) are the access control. Over TCP only the
probes (``/healthz``, ``/readyz``, ``/metrics``) answer without credentials;
every other route, reads included (``/v1/status``, ``/v1/observed``,
``/v1/plan``, ``/v1/jobs``) and changes (``POST /v1/reconcile``, ``/v1/retry``,
``/v1/jobs/DEPLOYMENT/SERVICE/run``), needs ``Authorization: Bearer TOKEN``,
compared in constant time; without a configured token TCP refuses them (403).
``POST /v1/webhook`` is authenticated by its HMAC instead (GitHub's
``X-Hub-Signature-256``); a valid new delivery makes the daemon fetch its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from reconciler.daemon.metrics import Metrics, render_metrics
from reconciler.errors import ZlayerError

MAX_BODY = 1024 * 1024
DELIVERIES_KEPT = 4096
# Over TCP, the routes that answer without the bearer token: the probes, and the
# webhook (its body's HMAC is its authentication).
OPEN_OVER_TCP = frozenset({"/healthz", "/readyz", "/metrics", "/v1/webhook"})


class DaemonView(Protocol):
    def health(self) -> tuple[bool, str]: ...

    def readiness(self) -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...

    async def observed(self) -> dict[str, Any]: ...

    async def plan(self) -> dict[str, Any]: ...

    async def metrics(self) -> Metrics: ...

    def request_reconcile(self, reason: str) -> None: ...

    def request_fetch(self, reason: str) -> None: ...

    def retry(self) -> dict[str, Any]: ...

    async def run_job(self, deployment: str, service: str, trigger: str) -> dict[str, Any]: ...

    def jobs(self, limit: int) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class ApiConfig:
    socket_path: Path | None
    listen: tuple[str, int] | None = None
    token: str | None = None
    webhook_secret: bytes | None = None
    max_body: int = MAX_BODY

    def __post_init__(self) -> None:
        if self.listen is not None:
            host = self.listen[0]
            if host != "localhost":
                try:
                    loopback = ipaddress.ip_address(host).is_loopback
                except ValueError:
                    loopback = False
                if not loopback:
                    raise ZlayerError(
                        f"listen {host}:{self.listen[1]}: the API listens on loopback only"
                        " (127.0.0.0/8, ::1, localhost); put a proxy in front for more"
                    )


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class _Handlers:
    def __init__(self, view: DaemonView, config: ApiConfig, transport: str) -> None:
        self.view = view
        self.config = config
        self.transport = transport
        self.deliveries: OrderedDict[str, None] = OrderedDict()
        self.rejected = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/v1/status", self.status),
            web.get("/v1/observed", self.observed),
            web.get("/v1/plan", self.plan),
            web.get("/v1/jobs", self.jobs),
            web.post("/v1/reconcile", self.reconcile),
            web.post("/v1/retry", self.retry),
            web.post("/v1/jobs/{deployment}/{service}/run", self.run_job),
            web.post("/v1/webhook", self.webhook),
        ]

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Over TCP, every route but the probes and the webhook needs the bearer token."""
        if (refusal := self._refusal(request)) is not None:
            return refusal
        return await handler(request)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """None when the request may go on; the refusal otherwise."""
        if self.transport == "unix":
            return None
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in OPEN_OVER_TCP:
            return None
        if self.config.token is None:
            return _error(
                403,
                "no token configured: over TCP only /healthz, /readyz and /metrics answer;"
                " configure daemon.token_file or use the unix socket",
            )
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self.config.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            refusal = _error(401, "a valid bearer token is needed (Authorization: Bearer …)")
            refusal.headers["WWW-Authenticate"] = 'Bearer realm="zlayer"'
            return refusal
        return None

    async def healthz(self, _request: web.Request) -> web.Response:
        ok, why = self.view.health()
        return _json({"ok": ok, "reason": why}, 200 if ok else 503)

    async def readyz(self, _request: web.Request) -> web.Response:
        ok, why = self.view.readiness()
        return _json({"ready": ok, "reason": why}, 200 if ok else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        metrics = await self.view.metrics()
        text = render_metrics(metrics, time.time())
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Version": "0.0.4"})  # fmt: skip

    async def status(self, _request: web.Request) -> web.Response:
        return _json(self.view.status())

    async def observed(self, _request: web.Request) -> web.Response:
        return _json(await self.view.observed())

    async def plan(self, _request: web.Request) -> web.Response:
        return _json(await self.view.plan())

    async def jobs(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "limit must be a number")
        return _json(self.view.jobs(max(1, min(limit, 1000))))

    async def reconcile(self, request: web.Request) -> web.Response:
        self.view.request_reconcile(f"operator ({self.transport})")
        return _json({"accepted": True}, 202)

    async def retry(self, request: web.Request) -> web.Response:
        return _json(self.view.retry())

    async def run_job(self, request: web.Request) -> web.Response:
        deployment, service = request.match_info["deployment"], request.match_info["service"]
        try:
            result = await self.view.run_job(deployment, service, f"api ({self.transport})")
        except KeyError:
            return _error(404, f"{deployment}/{service}: no such job in the applied revision")
        except ValueError as exc:
            return _error(409, str(exc))
        return _json(result, 202)

    async def webhook(self, request: web.Request) -> web.Response:
        secret = self.config.webhook_secret
        if secret is None:
            return _error(404, "webhook not configured (daemon.webhook_secret_file)")
        length = request.content_length
        if length is not None and length > self.config.max_body:
            self.rejected += 1
            return _error(413, f"body over {self.config.max_body} bytes")
        body = b""
        while len(body) <= self.config.max_body:
            chunk = await request.content.read(self.config.max_body + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > self.config.max_body:
            self.rejected += 1
            return _error(413, f"body over {self.config.max_body} bytes")
        given = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            self.rejected += 1
            return _error(401, "X-Hub-Signature-256 missing or wrong")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if delivery:
            if delivery in self.deliveries:
                return _json({"ignored": "repeated delivery", "delivery": delivery})
            self.deliveries[delivery] = None
            while len(self.deliveries) > DELIVERIES_KEPT:
                self.deliveries.popitem(last=False)
        if request.headers.get("X-GitHub-Event") == "ping":
            return _json({"pong": True})
        self.view.request_fetch(f"webhook {delivery or '(no delivery id)'}")
        return _json({"accepted": True, "delivery": delivery}, 202)


class ApiServer:
    def __init__(self, runners: list[web.AppRunner], port: int | None, socket_path: Path | None):
        self._runners = runners
        self.port = port
        self.socket_path = socket_path
        self.handlers: list[_Handlers] = []

    @property
    def rejected(self) -> int:
        return sum(h.rejected for h in self.handlers)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()


def _claim_socket(path: Path) -> None:
    """Make room for our socket: refuse when another daemon answers on it, remove a
    stale one left by a killed daemon."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ZlayerError(f"{path} exists and is not a socket; remove it or choose --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: stale
        return
    finally:
        probe.close()
    raise ZlayerError(f"another daemon answers on {path}; stop it first")


async def start_api(view: DaemonView, config: ApiConfig) -> ApiServer:
    runners: list[web.AppRunner] = []
    handlers: list[_Handlers] = []
    port: int | None = None
    try:
        if config.socket_path is not None:
            _claim_socket(config.socket_path)
            runner, handler = await _runner(view, config, "unix")
            runners.append(runner)
            handlers.append(handler)
            old = os.umask(0o117)
            try:
                await web.UnixSite(runner, str(config.socket_path)).start()
            finally:
                os.umask(old)
            config.socket_path.chmod(0o660)
        if config.listen is not None:
            runner, handler = await _runner(view, config, "tcp")
            runners.append(runner)
            handlers.append(handler)
            site = web.TCPSite(runner, config.listen[0], config.listen[1])
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            port = sockets[0].getsockname()[1] if sockets else config.listen[1]
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    api = ApiServer(runners, port, config.socket_path)
    api.handlers = handlers
    return api


async def _runner(
    view: DaemonView, config: ApiConfig, transport: str
) -> tuple[web.AppRunner, _Handlers]:
    handler = _Handlers(view, config, transport)
    app = web.Application(client_max_size=config.max_body, middlewares=[handler.authenticate])
    app.add_routes(handler.routes())
    # lingering_time=0: a request refused before its body was read (413) closes the
    # connection at once; by default aiohttp keeps reading the unsent body for up to
    # 10 s in a task that outlives the connection and the runner's cleanup.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, lingering_time=0)
    await runner.setup()
    await asyncio.sleep(0)
    return runner, handler
