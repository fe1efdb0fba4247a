"""Fault injection for tests/faults: an engine that goes away, or whose event stream is
cut, seen through a socket of the test's own in front of the real one. Every fault is
undone by :meth:`EngineProxy.close` (the tests' ``finally``)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


class EngineProxy:
    """Forwards the unix socket ``path`` to the engine's ``engine``, byte for byte.

    Faults: with ``starts`` set, the container start after the first ``starts`` is not
    forwarded — every connection is closed and the socket removed, so zlayer finds no
    engine from then on (:attr:`cut`). :meth:`block_events` closes the engine's event
    streams and every new one at once, until :meth:`allow_events`; :attr:`events`
    counts the event streams asked for."""

    def __init__(self, engine: str, path: Path, starts: int | None = None) -> None:
        self.engine, self.path, self.limit = engine, path, starts
        self.starts = 0
        self.events = 0
        self.cut = threading.Event()
        self._events_blocked = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._streams: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def block_events(self) -> None:
        self._events_blocked.set()
        with self._lock:
            streams, self._streams = self._streams, []
        for pair in streams:
            _close(*pair)

    def allow_events(self) -> None:
        self._events_blocked.clear()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.limit is not None:
                    self.starts += data.count(b"/start HTTP/1.1")
                    if self.starts > self.limit:
                        self.close()
                        return
                if b"/events?" in data or b"/events HTTP" in data:
                    self.events += 1
                    if self._events_blocked.is_set():
                        _close(client, upstream)
                        return
                    with self._lock:
                        self._streams.append((client, upstream))
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.cut.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            _close(connection)


def _close(*sockets: socket.socket) -> None:
    for one in sockets:
        with contextlib.suppress(OSError):
            one.shutdown(socket.SHUT_RDWR)
        one.close()
