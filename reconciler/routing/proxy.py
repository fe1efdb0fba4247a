"""The managed HAProxy: zlayer's data plane, run as a process of its own.

zlayer never forwards a byte itself. It writes HAProxy's configuration under the
state directory (``proxy/haproxy.cfg``), starts HAProxy in master-worker mode as a
daemon (so it outlives the zlayer command that started it, like any workload),
and from then on talks to it through its runtime API (``proxy/admin.sock``):
servers are added, drained, put in maintenance and deleted there, without a
reload. Only a change of frontends or backends reloads, and a master-worker
reload hands the listening sockets to the new worker, so no connection is
refused meanwhile.

The configuration file always lists the servers zlayer last put in rotation, so a
reload or a restart of HAProxy comes back with the same rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler import installed
from reconciler.errors import ProxyError
from reconciler.waits import wait_until

INSTALL_HINT = "install it with: apt-get install haproxy"
_STRUCTURE = "# zlayer structure "


IN_ROTATION = frozenset({"UP", "no check"})
"""The server states in which HAProxy sends a server new connections."""


@dataclass(frozen=True, slots=True)
class ServerStat:
    """One server as HAProxy reports it (``show stat``)."""

    backend: str
    server: str
    address: str
    status: str
    """UP, DOWN, MAINT, DRAIN, NOLB, "no check" (HAProxy's own words; a "UP 1/2"
    going-down suffix is dropped)."""
    sessions: int
    total: int
    check: str
    requests: int = 0
    """HTTP requests it served (connections, for tcp)."""
    errors: int = 0
    """Connections it refused, responses that broke off, and its 5xx answers."""
    response_ms: int = 0
    """Its average response time over the last 1024 requests, in milliseconds."""

    @property
    def in_rotation(self) -> bool:
        """Gets new connections: up (or not checked) and neither drained nor in
        maintenance."""
        return self.status in IN_ROTATION


@dataclass(frozen=True, slots=True)
class Paths:
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def pidfile(self) -> Path:
        return self.directory / "haproxy.pid"

    @property
    def admin(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def master(self) -> Path:
        return self.directory / "master.sock"


def executable() -> str | None:
    """Where HAProxy is installed, ``None`` when it is not."""
    return installed.haproxy()


def structure_hash(skeleton: str) -> str:
    return hashlib.sha256(skeleton.encode()).hexdigest()[:16]


class Proxy:
    """The HAProxy of one state directory."""

    def __init__(self, directory: Path, binary: str | None = None) -> None:
        self.paths = Paths(directory)
        self._binary = binary

    @property
    def binary(self) -> str:
        found = self._binary or executable()
        if found is None:
            raise ProxyError(f"HAProxy is not installed; public endpoints need it: {INSTALL_HINT}")
        return found

    # --- the process ---------------------------------------------------------------

    def pid(self) -> int | None:
        """The master's pid when it runs, else ``None``."""
        try:
            pid = int(self.paths.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if not _is_haproxy(pid):
            return None  # the pid file is stale and the pid was reused
        return pid

    async def running(self) -> bool:
        """HAProxy runs and answers on its runtime API."""
        if self.pid() is None:
            return False
        try:
            await self.command("show info")
        except ProxyError:
            return False
        return True

    def written_structure(self) -> str | None:
        try:
            first = self.paths.config.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            return None
        return first.removeprefix(_STRUCTURE) if first.startswith(_STRUCTURE) else None

    async def check_config(self, text: str) -> None:
        """HAProxy's own verdict on ``text`` (``haproxy -c``), before anything uses it."""
        self.paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        candidate = self.paths.directory / "haproxy.cfg.new"
        candidate.write_text(text, encoding="utf-8")
        code, output = await _run(self.binary, "-c", "-q", "-f", str(candidate))
        if code != 0:
            raise ProxyError(f"HAProxy refuses the configuration zlayer wrote: {output.strip()}")

    async def apply_config(
        self, text: str, structure: str
    ) -> Literal["started", "reloaded", "rewritten", "unchanged"]:
        """Make HAProxy run ``text``: start it when it does not run, reload it when
        ``structure`` (the hash of frontends and backends) changed, else only rewrite
        the file (the servers it lists are changed through the runtime API)."""
        text = f"{_STRUCTURE}{structure}\n{text}"
        running = await self.running()
        previous = self.written_structure()
        try:
            current = self.paths.config.read_text(encoding="utf-8")
        except OSError:
            current = None
        if running and previous == structure:
            if current == text:
                return "unchanged"
            self._write(text)
            return "rewritten"
        await self.check_config(text)
        self._write(text)
        if running:
            await self._reload()
            return "reloaded"
        await self._start()
        return "started"

    def _write(self, text: str) -> None:
        self.paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.paths.config.with_suffix(".cfg.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.paths.config)

    async def _start(self) -> None:
        for stale in (self.paths.admin, self.paths.master):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        code, output = await _run(
            self.binary,
            "-W",
            "-D",
            "-S",
            f"{self.paths.master},mode,600",
            "-p",
            str(self.paths.pidfile),
            "-f",
            str(self.paths.config),
        )
        if code != 0:
            raise ProxyError(f"HAProxy did not start: {output.strip()}")
        if not await wait_until(self.running, timeout=30.0):
            raise ProxyError(
                f"HAProxy started but does not answer on {self.paths.admin} within 30s"
            )

    async def _reload(self) -> None:
        """A master-worker reload: the new worker takes over the listening sockets;
        done when the runtime API answers from the new worker."""
        before = await self._worker_pid()
        pid = self.pid()
        if pid is None:
            raise ProxyError("HAProxy stopped during the reload")
        os.kill(pid, signal.SIGUSR2)

        async def new_worker() -> bool:
            try:
                return await self._worker_pid() not in (None, before)
            except ProxyError:
                return False

        if not await wait_until(new_worker, timeout=30.0):
            raise ProxyError("HAProxy did not come back from its reload within 30s")

    async def _worker_pid(self) -> int | None:
        for line in (await self.command("show info")).splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    async def stop(self) -> None:
        """Stop HAProxy (a hard stop: the proxy goes away with what it carries)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        async def gone() -> bool:
            return self.pid() is None

        if not await wait_until(gone, timeout=30.0):
            raise ProxyError(f"HAProxy (pid {pid}) did not stop within 30s")

    # --- the runtime API -----------------------------------------------------------

    async def command(self, line: str) -> str:
        """One runtime API command; its answer. HAProxy answers errors in text, so
        the callers that change something check for them (:meth:`change`)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.paths.admin)), timeout=10.0
            )
        except (OSError, TimeoutError) as exc:
            raise ProxyError(
                f"HAProxy's runtime API ({self.paths.admin}) does not answer: {exc}"
            ) from exc
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=10.0)
        except (OSError, TimeoutError) as exc:
            raise ProxyError(f"HAProxy's runtime API broke off {line!r}: {exc}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return answer.decode(errors="replace")

    async def change(self, line: str) -> None:
        """A command that changes something; a :class:`ProxyError` when HAProxy says no."""
        answer = (await self.command(line)).strip()
        lowered = answer.lower()
        if any(word in lowered for word in ("unknown", "error", "not found", "no such", "cannot")):
            raise ProxyError(f"HAProxy refused {line!r}: {answer}")

    async def stats(self) -> list[ServerStat]:
        """Every server of every backend (``show stat``)."""
        return _server_stats(await self.command("show stat"))[1]

    async def servers(self) -> Mapping[str, Mapping[str, ServerStat]]:
        """Backend name → its servers by name; every backend HAProxy has, also one
        with no server (yet)."""
        backends, stats = _server_stats(await self.command("show stat"))
        table: dict[str, dict[str, ServerStat]] = {name: {} for name in backends}
        for stat in stats:
            table.setdefault(stat.backend, {})[stat.server] = stat
        return table

    async def add_server(self, backend: str, server: str, address: str, options: str) -> None:
        """Add a server as ``options`` say (``disabled``: in maintenance), its check
        enabled; a dynamic server's check is off until enabled."""
        await self.change(f"add server {backend}/{server} {address} {options}".rstrip())
        if " check" in f" {options}":
            await self.change(f"enable health {backend}/{server}")

    async def set_state(self, backend: str, server: str, state: str) -> None:
        await self.change(f"set server {backend}/{server} state {state}")

    async def delete_server(self, backend: str, server: str) -> None:
        """Out of rotation now (maintenance), then deleted; HAProxy refuses to delete
        a server that still carries connections, so drain first to keep them."""
        await self.set_state(backend, server, "maint")
        await self.change(f"shutdown sessions server {backend}/{server}")
        await self.change(f"del server {backend}/{server}")


def _server_stats(text: str) -> tuple[list[str], list[ServerStat]]:
    """``show stat``'s CSV: the backends' names, and every server."""
    backends: list[str] = []
    found = []
    for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
        kind = row.get("type")  # 0 frontend, 1 backend, 2 server, 3 listener
        if kind == "1":
            backends.append(row["pxname"])
        elif kind == "2":
            status = row.get("status", "")
            found.append(
                ServerStat(
                    backend=row["pxname"],
                    server=row["svname"],
                    address=row.get("addr", ""),
                    status=status.split(" ")[0] if status.startswith(("UP", "DOWN")) else status,
                    sessions=_int(row.get("scur")),
                    total=_int(row.get("stot")),
                    check=row.get("check_status", ""),
                    requests=_int(row.get("req_tot")) or _int(row.get("stot")),
                    errors=sum(_int(row.get(k)) for k in ("econ", "eresp", "hrsp_5xx")),
                    response_ms=_int(row.get("rtime")),
                )
            )
    return backends, found


def _int(text: str | None) -> int:
    """A number of HAProxy's CSV; empty (not counted for that kind of row) is 0."""
    return int(text) if text and text.isdigit() else 0


def _is_haproxy(pid: int) -> bool:
    try:
        return b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _run(*argv: str) -> tuple[int, str]:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise ProxyError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")
