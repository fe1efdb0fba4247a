"""Read-only engine calls over the engine's unix socket, with the standard library.

Why not aiodocker for these: importing aiodocker (and aiohttp under it) costs a
converged ``zlayer apply`` more than everything else it does, and such an apply
only reads: ``info``, one container list, an inspect per stopped container. So the
driver reads through this module (``http.client`` in a worker thread, one short
connection per request, unversioned paths, which the engine serves at its own
API version as aiodocker's ``auto`` does) and loads aiodocker on the first call
that changes something or streams.

Only a unix socket is read this way; TLS, TCP, SSH and Docker contexts are left to
aiodocker (:func:`socket_path` says ``None`` for them), which then does the reads
too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from reconciler.drivers.docker.errors import engine_error
from reconciler.errors import (
    NotFound,
    PermanentDriverError,
    RuntimeUnreachable,
    TemporaryDriverError,
)
from reconciler.unixhttp import UnixHTTPConnection

_SEARCH = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))
"""Where aiodocker looks when nothing names the engine (its third place, under the
home directory, is added at the call)."""


def socket_path(url: str | None) -> str | None:
    """The unix socket that ``url`` (else ``DOCKER_HOST``, else the standard places)
    names, or ``None`` when the engine is reached otherwise or through a Docker
    context, which only aiodocker resolves."""
    if url is None:
        if os.environ.get("DOCKER_CONTEXT") or _config_names_context():
            return None
        url = os.environ.get("DOCKER_HOST") or None
    if url is None:
        for candidate in (*_SEARCH, Path.home() / ".docker/run/docker.sock"):
            if candidate.is_socket():
                return str(candidate)
        return None
    return url.removeprefix("unix://") if url.startswith("unix://") else None


def _config_names_context() -> bool:
    """Whether ``~/.docker/config.json`` selects a context other than ``default``."""
    try:
        config = json.loads((Path.home() / ".docker" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    current = config.get("currentContext") if isinstance(config, dict) else None
    return bool(current) and current != "default"


class SocketReader:
    """``GET`` requests to the engine on the unix socket at ``path``, answered as JSON
    or as the project's errors (:func:`.errors.engine_error`, as the aiodocker calls)."""

    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.path = path
        self.timeout = timeout

    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        subject: object,
        action: str,
        missing: type[PermanentDriverError] = NotFound,
    ) -> Any:
        target = f"/{path}?{urlencode(params)}" if params else f"/{path}"
        try:
            status, body = await asyncio.to_thread(self._request, target)
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            message = f"{subject}: {action} failed: no answer from the engine ({reason})"
            raise RuntimeUnreachable(message, delay=5.0) from exc
        if status >= 400:
            raise engine_error(status, _message(body), str(subject), action, missing=missing)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise TemporaryDriverError(
                f"{subject}: {action} failed: the engine's answer is not JSON ({exc})", delay=5.0
            ) from exc

    def _request(self, target: str) -> tuple[int, bytes]:
        connection = UnixHTTPConnection(self.path, self.timeout)
        try:
            connection.request("GET", target, headers={"Accept": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _message(body: bytes) -> str:
    """The engine's error message (``{"message": …}``), else the body as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])
    return text
