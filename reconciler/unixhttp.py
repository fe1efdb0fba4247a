"""HTTP over a unix socket with the standard library's ``http.client``: the one
connection class for the daemon's client and the Docker driver's reads."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection to the unix socket at ``path`` (``Host: localhost``)."""

    def __init__(self, path: str | Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
