"""The proxy's control plane: the route table and the replicas that run, made true in
HAProxy.

:func:`sync_routes` is called by the pipeline after a plan ran, and on every pass,
so a dead proxy or a missing server is repaired like any drifted workload. It
starts or reloads HAProxy only when the frontends or backends changed, and moves
servers in and out of rotation through the runtime API:

- a replica that runs and has no server yet is added in maintenance, set
  *draining* (HAProxy checks it but sends it nothing), and set ready once
  HAProxy's own check has passed (a service whose check HAProxy cannot run, a
  command check, is set ready at once: zlayer's health gate has passed already).
  Servers are named by replica and address (:func:`.server_name`), so a replaced
  replica's new server comes up next to the old one;
- only then are the servers of replicas that are gone or replaced drained and,
  once their connections are done or the grace period is over, deleted;
- the rotation is recorded in the configuration file, so a reload or restart of
  HAProxy comes back with it (and a replica never checked is not in it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ProxyError
from reconciler.route_table import Backend, Member, RouteTable, render, replica_of, server_options
from reconciler.routing.proxy import Proxy, ServerStat, structure_hash
from reconciler.waits import wait_until

CHECK_PASSED = frozenset({"L4OK", "L6OK", "L7OK", "L7OKC"})
Servers = dict[str, dict[str, ServerStat]]


@dataclass(frozen=True, slots=True)
class RouteSync:
    """What one :func:`sync_routes` did. ``proxy``: started, reloaded, rewritten,
    unchanged, or stopped (no route left); ``changes`` in words
    (``demo/web/2 in rotation on :8080``)."""

    proxy: str
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def proxy_for(state_dir: Path) -> Proxy:
    """The proxy of the host whose state directory is ``state_dir``."""
    return Proxy(state_dir / "proxy")


async def sync_routes(
    proxy: Proxy,
    table: RouteTable,
    members: Mapping[str, Sequence[Member]],
    *,
    bind_address: str,
    drain_grace: float = 10.0,
    ready_timeout: float = 30.0,
    frozen: Collection[str] = (),
    isolated: Collection[tuple[str, int]] = (),
    certificates: Mapping[str, tuple[str, str]] | None = None,
) -> RouteSync:
    """Make HAProxy serve ``table`` with ``members`` (backend name → the replicas that
    run and passed zlayer's health gate) in rotation. The ``frozen`` backends (of
    deployments this sync is not about) keep their servers as they are: none is
    added, readied or retired, whatever state HAProxy's checks left it in. The
    ``isolated`` members ((backend, replica): ``errors.on_panic: isolate`` gave up on
    them) keep a server in maintenance: out of rotation, however their checks go,
    while the replica runs on for inspection. ``certificates``: each https backend's
    certificate file and its digest (see :func:`.render`)."""
    if table.empty:
        if proxy.pid() is None:
            return RouteSync("unchanged")
        await proxy.stop()
        return RouteSync("stopped", ("proxy stopped: no routed endpoint left",))
    wanted = {b.name: {m.server: m for m in members.get(b.name, ())} for b in table.backends}
    running = await proxy.running()
    before: Servers = await _servers(proxy) if running else _recorded(proxy)
    rotation = _in_rotation(before, wanted)

    def text(servers: Mapping[str, Mapping[str, Member]]) -> str:
        listed = {b: list(s.values()) for b, s in servers.items()}
        paths = proxy.paths
        return render(
            table,
            listed,
            bind_address=bind_address,
            admin_socket=str(paths.admin),
            pidfile=str(paths.pidfile),
            certificates=certificates,
        )

    structure = structure_hash(text({}))
    outcome = await proxy.apply_config(text(rotation), structure)
    changes: list[str] = [f"proxy {outcome}"] if outcome in ("started", "reloaded") else []
    warnings: list[str] = []
    live = await _servers(proxy)
    moving = {b: m for b, m in wanted.items() if b not in frozen}
    apart = set(isolated)
    changes += await _isolate(proxy, table, live, moving, apart)
    joining = {
        b: {name: m for name, m in members.items() if (b, m.replica) not in apart}
        for b, members in moving.items()
    }
    added = await _add_missing(proxy, table, live, joining, ready_timeout, warnings)
    for backend_name, names in added.items():
        backend = table.backend(backend_name)
        port = table.frontend_of(backend_name).port
        changes += [f"{_subject(backend, name)} in rotation on :{port}" for name in names]
    # An isolated member is still wanted: its server stays (in maintenance).
    retired = await _retire_unwanted(proxy, table, live, moving, drain_grace)
    changes += [f"{_subject(table.backend(b), name)} out of rotation" for b, name in retired]
    final = _in_rotation(await _servers(proxy), wanted)
    # HAProxy can die during the sync (its worker still answers for a moment after
    # the master is gone): then this write starts it again, and that is a change too.
    again = await proxy.apply_config(text(final), structure)
    if again == "started":
        changes.append("proxy started")
        outcome = again
    return RouteSync(outcome, tuple(changes), tuple(warnings))


async def _isolate(
    proxy: Proxy,
    table: RouteTable,
    live: Servers,
    wanted: Mapping[str, Mapping[str, Member]],
    apart: Collection[tuple[str, int]],
) -> list[str]:
    """Put each isolated member's server in maintenance (added so, when it has none);
    what changed, in words."""
    changes = []
    for backend_name, members in sorted(wanted.items()):
        backend = table.backend(backend_name)
        for name, member in sorted(members.items()):
            if (backend_name, member.replica) not in apart:
                continue
            stat = live.get(backend_name, {}).get(name)
            if stat is None:
                options = server_options(backend, "maint")
                await proxy.add_server(backend_name, name, member.endpoint, options)
            elif stat.status == "MAINT":
                continue
            else:
                await proxy.set_state(backend_name, name, "maint")
            changes.append(
                f"{_subject(backend, name)} out of rotation: isolated (errors.on_panic: isolate)"
            )
    return changes


def _subject(backend: Backend, server: str) -> str:
    replica = replica_of(server)
    return f"{backend.deployment}/{backend.service}/{replica if replica else server}"


async def _servers(proxy: Proxy) -> Servers:
    return {b: dict(s) for b, s in (await proxy.servers()).items()}


def _recorded(proxy: Proxy) -> Servers:
    """The rotation the configuration file records (HAProxy does not run): what was in
    rotation when zlayer last synced it, taken as up."""
    found: Servers = {}
    backend = ""
    try:
        lines = proxy.paths.config.read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        words = line.split()
        if words[:1] == ["backend"] and len(words) > 1:
            backend = words[1]
        elif words[:1] == ["server"] and len(words) > 2 and backend:
            found.setdefault(backend, {})[words[1]] = ServerStat(
                backend, words[1], words[2], "UP", 0, 0, "recorded"
            )
    return found


def _in_rotation(
    servers: Servers, wanted: Mapping[str, Mapping[str, Member]]
) -> dict[str, dict[str, Member]]:
    """The wanted members whose server is in rotation now."""
    return {
        backend: {
            name: member
            for name, member in members.items()
            if (stat := servers.get(backend, {}).get(name)) is not None and stat.in_rotation
        }
        for backend, members in wanted.items()
    }


async def _add_missing(
    proxy: Proxy,
    table: RouteTable,
    live: Servers,
    wanted: Mapping[str, Mapping[str, Member]],
    timeout: float,
    warnings: list[str],
) -> dict[str, list[str]]:
    """Bring every wanted member that is not in rotation into it, through HAProxy's
    check; the servers that made it, by backend."""
    added: dict[str, list[str]] = {}

    async def one(backend: Backend, member: Member) -> None:
        stat = live.get(backend.name, {}).get(member.server)
        # DOWN: in rotation but failing HAProxy's check, which puts it back by itself
        # once it passes (a drained server that passes shows DRAIN, and is brought in
        # then); waiting for it here would hold up every sync while it is down.
        if stat is not None and (stat.in_rotation or stat.status == "DOWN"):
            return
        problem = await bring_in(proxy, backend, member, stat, timeout)
        if problem is not None:
            warnings.append(problem)
            return
        added.setdefault(backend.name, []).append(member.server)

    await asyncio.gather(
        *(
            one(backend, member)
            for backend in table.backends
            for member in wanted.get(backend.name, {}).values()
        )
    )
    return {b: sorted(names) for b, names in sorted(added.items())}


async def bring_in(
    proxy: Proxy, backend: Backend, member: Member, stat: ServerStat | None, timeout: float
) -> str | None:
    """Put ``member`` in ``backend``'s rotation (``stat``: its server as HAProxy has it,
    if it has one): added in maintenance, set draining so HAProxy checks it but sends
    it nothing, set ready once HAProxy's own check passed. ``None`` when it is in, else
    why it is not (it stays draining, and a later sync tries again)."""
    if stat is None:
        options = server_options(backend, "maint")
        await proxy.add_server(backend.name, member.server, member.endpoint, options)
    await proxy.set_state(backend.name, member.server, "drain")
    if backend.check.kind != "none":

        async def passed() -> bool:
            now = (await proxy.servers()).get(backend.name, {}).get(member.server)
            return now is not None and now.check in CHECK_PASSED

        if not await wait_until(passed, timeout=timeout):
            return (
                f"{_subject(backend, member.server)}: HAProxy's check has not passed "
                f"within {timeout:g}s; it stays out of rotation until it does"
            )
    await proxy.set_state(backend.name, member.server, "ready")
    return None


async def _retire_unwanted(
    proxy: Proxy,
    table: RouteTable,
    live: Servers,
    wanted: Mapping[str, Mapping[str, Member]],
    grace: float,
) -> list[tuple[str, str]]:
    """Drain and delete the servers no wanted member has; (backend, server) each."""
    names = {b.name for b in table.backends if b.name in wanted}
    gone = [
        (backend, stat)
        for backend, servers in sorted(live.items())
        if backend in names
        for name, stat in sorted(servers.items())
        if name not in wanted.get(backend, {})
    ]
    await asyncio.gather(*(_retire(proxy, backend, stat, grace) for backend, stat in gone))
    return [(backend, stat.server) for backend, stat in gone]


async def _retire(proxy: Proxy, backend: str, stat: ServerStat, grace: float) -> None:
    """Drain ``stat`` (no new connections), wait up to ``grace`` seconds for its
    connections to finish, then delete it."""
    await proxy.set_state(backend, stat.server, "drain")

    async def idle() -> bool:
        now = (await proxy.servers()).get(backend, {}).get(stat.server)
        return now is None or now.sessions == 0

    await wait_until(idle, timeout=grace)
    # Still busy or referenced: in maintenance it takes no traffic, and the next sync
    # deletes it.
    with contextlib.suppress(ProxyError):
        await proxy.delete_server(backend, stat.server)
