"""Talking to a running daemon over its unix socket (stdlib ``http.client``), for the
commands that go through the daemon when one runs (``job run``, ``daemon retry``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.errors import NoDaemon
from reconciler.unixhttp import UnixHTTPConnection


def call(
    socket_path: Path, method: str, path: str, timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of one request; :class:`NoDaemon` when nothing answers."""
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request(
            method, path, headers={"Content-Length": "0"} if method == "POST" else {}
        )
        response = connection.getresponse()
        body = response.read()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoDaemon(f"no daemon answers at {socket_path}") from exc
    except OSError as exc:
        raise NoDaemon(f"no daemon answers at {socket_path}: {exc}") from exc
    finally:
        connection.close()
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        document = {"error": body.decode(errors="replace")}
    return response.status, document if isinstance(document, dict) else {"result": document}
