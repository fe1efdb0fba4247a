"""The routes of the whole host, one HAProxy for every deployment.

An apply sees the deployments of its own spec files only, while the proxy serves
every deployment on the host. So each deployment's routed services are recorded
in the proxy's directory (``proxy/routes/<deployment>.json``) when it is synced,
and the table HAProxy gets is the union: the deployments being applied from their
specs, the others from their record, their servers left as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired import DesiredService, DesiredState, certificate_name, routed_endpoints
from reconciler.drivers.base import Driver
from reconciler.durations import parse_duration
from reconciler.errors import DriverError, ProxyError
from reconciler.observed import ObservedState, RouteServer, WorkloadId
from reconciler.plan.model import Action
from reconciler.route_table import (
    Member,
    RoutedService,
    RouteTable,
    replica_of,
    routed_service,
    routes_of,
    table_of,
)
from reconciler.routing.control import RouteSync, bring_in, proxy_for, sync_routes
from reconciler.routing.proxy import IN_ROTATION, INSTALL_HINT, Proxy, executable
from reconciler.waits import wait_until

DRAIN_GRACE = 10.0
"""Seconds a draining replica's connections get before it is stopped anyway, when
its service sets no ``stop_grace_period``."""


def drain_grace(desired: DesiredState, target: WorkloadId) -> float:
    """How long ``target``'s open connections may take once it is drained: its
    service's ``stop_grace_period`` (the time it has to finish when stopped anyway),
    else :data:`DRAIN_GRACE`; a service no longer in the specs gets the default."""
    service = desired.services.get((target.deployment, target.service))
    value = service.config.get("stop_grace_period") if service is not None else None
    if value is None:
        return DRAIN_GRACE
    try:
        return parse_duration(str(value)) / 1e9
    except ValueError:
        return DRAIN_GRACE


def routing_warnings(service: DesiredService, routable: bool) -> tuple[str, ...]:
    """What the plan says about ``service``'s public endpoints on this host."""
    endpoints = [str(e.get("name")) for e in routed_endpoints(service.config)]
    if not endpoints or not routable:
        return ()
    if executable() is None:
        return tuple(
            f"endpoint {name} is public but not reachable from outside: the managed proxy "
            f"needs HAProxy, which is not installed ({INSTALL_HINT})"
            for name in endpoints
        )
    return ()


@dataclass(frozen=True, slots=True)
class RouteStat:
    """One replica's server in one route, as HAProxy counts it (for ``zlayer status``
    and the daemon's ``/metrics``)."""

    deployment: str
    service: str
    endpoint: str
    port: int
    replica: int | None
    status: str
    check: str
    sessions: int
    requests: int
    errors: int
    response_ms: int

    @property
    def in_rotation(self) -> bool:
        return self.status in IN_ROTATION


@dataclass
class HostRoutes:
    """The proxy of one state directory and the deployments' recorded routes."""

    proxy: Proxy
    bind_address: str
    _syncing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock, repr=False)
    """One sync at a time (route actions run concurrently; each rewrites the config)."""
    secrets: Path | None = None
    """The secrets directory, where the certificates of https endpoints are
    (:func:`reconciler.desired.certificate_name`)."""
    isolated: frozenset[WorkloadId] = frozenset()
    """Replicas ``errors.on_panic: isolate`` took out of rotation (they keep running):
    their servers stay in maintenance."""
    synced: list[RouteSync] = dataclasses.field(default_factory=list, repr=False)
    """What every sync through this object did, in order (for the daemon's journal)."""

    @classmethod
    def of(cls, state_dir: Path, bind_address: str) -> HostRoutes:
        return cls(proxy_for(state_dir), bind_address)

    @property
    def records(self) -> Path:
        return self.proxy.paths.directory / "routes"

    def recorded(self) -> dict[str, list[RoutedService]]:
        found: dict[str, list[RoutedService]] = {}
        try:
            files = sorted(self.records.glob("*.json"))
        except OSError:
            return found
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                found[path.stem] = [RoutedService.from_dict(item) for item in data]
            except (OSError, ValueError, TypeError, KeyError):
                continue  # a damaged record: that deployment is synced again when applied
        return found

    def record(self, deployment: str, services: Sequence[RoutedService]) -> None:
        """Keep ``deployment``'s routed services (none: forget it)."""
        self.records.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.records / f"{deployment}.json"
        if not services:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_suffix(".tmp")
        data = [dataclasses.asdict(s) for s in services]
        temporary.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)

    async def observe(
        self,
        observed: ObservedState,
        deployments: Collection[str] | None = None,
        internal: bool = False,
    ) -> ObservedState:
        """``observed`` with the host's routes (of ``deployments``, else all): each
        deployment's routing as last synced, with the servers HAProxy has now. Left as
        it is when HAProxy is not installed (no route is planned then)."""
        if executable() is None:
            return observed
        running = await self.proxy.running()
        live = await self.proxy.servers() if running else {}
        servers = {
            backend: [
                RouteServer(
                    replica=replica,
                    address=stat.address,
                    status=stat.status,
                    check=stat.check,
                    sessions=stat.sessions,
                    requests=stat.requests,
                    errors=stat.errors,
                    response_ms=stat.response_ms,
                )
                for name, stat in by_name.items()
                if (replica := replica_of(name)) is not None
            ]
            for backend, by_name in live.items()
        }
        recorded = self.recorded()
        table = table_of(s for d, services in recorded.items() for s in services)
        routes = [
            r for r in routes_of(table, servers) if not deployments or r.deployment in deployments
        ]
        return dataclasses.replace(
            observed,
            routes_managed=True,
            proxy_running=running,
            routes=tuple(routes),
            routes_internal=internal,
        )

    async def route(
        self, driver: Driver, desired: DesiredState, action: Action, warnings: list[str]
    ) -> str:
        """Do a route action of the plan: sync the proxy for the action's service, with
        its replicas as they run now (the other services' servers left as they are);
        what changed, in words."""
        deployment = action.target.deployment
        observed = await driver.observe([deployment])
        result = await self.sync(
            driver, desired, observed, [deployment], services={action.target[:2]}
        )
        if result is None:
            return f"{action.subject}: nothing on the host is routed"
        warnings += result.warnings
        unchanged = "no longer routed" if action.kind == "unroute" else "in rotation as it was"
        return "; ".join(result.changes) or unchanged

    async def in_rotation(
        self, driver: Driver, desired: DesiredState, key: tuple[str, str]
    ) -> str | None:
        """Why service ``key`` has no replica taking traffic in some route of it (the
        ``ready`` condition), or None (also when it has no route)."""
        service = desired.services.get(key)
        if service is None or service.is_definition:
            return None
        table = table_of([await routed(driver, service)])
        if table.empty:
            return None
        if not await self.proxy.running():
            return "the managed proxy is not running"
        live = await self.proxy.servers()
        for backend in table.backends:
            if not any(stat.in_rotation for stat in live.get(backend.name, {}).values()):
                port = table.frontend_of(backend.name).port
                return f"no replica in rotation on :{port} ({backend.endpoint})"
        return None

    async def sync(
        self,
        driver: Driver,
        desired: DesiredState,
        observed: ObservedState,
        deployments: Collection[str],
        services: Collection[tuple[str, str]] = (),
    ) -> RouteSync | None:
        """Sync the proxy for ``deployments`` (their routes from ``desired``, their
        replicas from ``observed``; with ``services``, only those services' servers
        move); ``None`` when nothing on the host is routed and no proxy runs."""
        async with self._syncing:
            result = await self._sync(driver, desired, observed, deployments, services)
        if result is not None:
            self.synced.append(result)
        return result

    async def _sync(
        self,
        driver: Driver,
        desired: DesiredState,
        observed: ObservedState,
        deployments: Collection[str],
        services: Collection[tuple[str, str]],
    ) -> RouteSync | None:
        recorded = self.recorded()
        mine: dict[str, list[RoutedService]] = {d: [] for d in deployments}
        for s in desired.services.values():
            if s.deployment in mine and not s.is_definition:
                found = await routed(driver, s)
                if found.endpoints or found.internal:
                    mine[s.deployment].append(found)
        everything = {**recorded, **mine}
        table = table_of(s for services in everything.values() for s in services)
        if table.empty and self.proxy.pid() is None and not any(recorded.get(d) for d in mine):
            for deployment in mine:
                self.record(deployment, [])
            return None
        if table.problems:
            raise ProxyError("the routes conflict: " + "; ".join(table.problems))
        others = [
            b.name
            for b in table.backends
            if b.deployment not in mine or (services and (b.deployment, b.service) not in services)
        ]
        members = await self._members(driver, table, observed, set(others))
        isolated = [
            (b.name, target.replica)
            for b in table.backends
            for target in self.isolated
            if target[:2] == (b.deployment, b.service) and target.replica is not None
        ]
        result = await sync_routes(
            self.proxy,
            table,
            members,
            bind_address=self.bind_address,
            frozen=others,
            isolated=isolated,
            certificates=self._certificates(table),
        )
        for deployment, kept in mine.items():
            self.record(deployment, kept)
        return result

    async def drain(self, target: WorkloadId, grace: float = DRAIN_GRACE) -> None:
        """Before ``target`` stops: its servers get no new connections, and the ones
        they carry get up to ``grace`` seconds to finish. Nothing when no proxy runs
        or the replica is in no backend."""
        if self.proxy.pid() is None:
            return
        recorded = table_of(s for services in self.recorded().values() for s in services)
        backends = {b.name for b in recorded.backends if (b.deployment, b.service) == target[:2]}
        servers = await self.proxy.servers()
        mine = [
            (backend, name)
            for backend, by_name in servers.items()
            if backend in backends
            for name in by_name
            if replica_of(name) == target.replica
        ]
        for backend, name in mine:
            await self.proxy.set_state(backend, name, "drain")

        async def idle() -> bool:
            now = await self.proxy.servers()
            return all(
                (stat := now.get(backend, {}).get(name)) is None or stat.sessions == 0
                for backend, name in mine
            )

        if mine:
            await wait_until(idle, timeout=grace)

    async def stats(self, deployments: Collection[str] | None = None) -> list[RouteStat]:
        """Every server of every recorded route (of ``deployments``), as HAProxy counts
        it now; nothing when HAProxy does not run."""
        if not await self.proxy.running():
            return []
        table = table_of(s for services in self.recorded().values() for s in services)
        live = await self.proxy.servers()
        rows = []
        for backend in table.backends:
            if deployments and backend.deployment not in deployments:
                continue
            port = table.frontend_of(backend.name).port
            for name, stat in sorted(
                live.get(backend.name, {}).items(), key=lambda item: replica_of(item[0]) or 0
            ):
                rows.append(
                    RouteStat(
                        backend.deployment,
                        backend.service,
                        backend.endpoint,
                        port,
                        replica_of(name),
                        stat.status,
                        stat.check,
                        stat.sessions,
                        stat.requests,
                        stat.errors,
                        stat.response_ms,
                    )
                )
        return rows

    async def admit(
        self, driver: Driver, desired: DesiredState, target: WorkloadId, timeout: float = 30.0
    ) -> None:
        """Put ``target`` (a replica that passed zlayer's health gate during a replace)
        in rotation now, in every backend of its service HAProxy already serves, and
        return once HAProxy's own check has passed. A backend HAProxy does not have yet
        (a new endpoint) gets it at the sync after the plan."""
        service = desired.services.get((target.deployment, target.service))
        if service is None or target.replica is None or not await self.proxy.running():
            return
        live = await self.proxy.servers()
        problems = []
        for backend in table_of([await routed(driver, service)]).backends:
            if backend.name not in live:
                continue
            host, port = await driver.address(target, backend.target_port)
            member = Member(target.replica, host, port)
            stat = live[backend.name].get(member.server)
            if stat is not None and stat.in_rotation:
                continue
            problem = await bring_in(self.proxy, backend, member, stat, timeout)
            if problem is not None:
                problems.append(problem)
        if problems:
            raise ProxyError("; ".join(problems))

    def _certificates(self, table: RouteTable) -> dict[str, tuple[str, str]]:
        """Each https backend's certificate file and a digest of it; raises
        :class:`ProxyError` for one that is not there (HAProxy would not start)."""
        found: dict[str, tuple[str, str]] = {}
        for backend in table.backends:
            if backend.protocol != "https":
                continue
            name = certificate_name(backend.deployment, backend.service, backend.endpoint)
            path = (self.secrets or Path("/nonexistent")) / name
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            except OSError as error:
                where = self.secrets or "the secrets directory"
                raise ProxyError(
                    f"{backend.subject} endpoint {backend.endpoint} is https, and its "
                    f"certificate {name} cannot be read in {where}: {error.strerror}"
                ) from error
            found[backend.name] = (str(path), digest)
        return found

    async def _members(
        self,
        driver: Driver,
        table: RouteTable,
        observed: ObservedState,
        frozen: set[str],
    ) -> dict[str, list[Member]]:
        """The replicas each backend should have: those that run and are not unhealthy;
        for the ``frozen`` backends, the servers HAProxy has."""
        live = await self.proxy.servers() if await self.proxy.running() else {}
        members: dict[str, list[Member]] = {}
        for backend in table.backends:
            if backend.name in frozen:
                members[backend.name] = _from_servers(live.get(backend.name, {}))
                continue
            found = []
            for workload in observed.workloads:
                if (workload.deployment, workload.service) != (backend.deployment, backend.service):
                    continue
                if workload.status != "running" or workload.replica is None:
                    continue
                target = WorkloadId(workload.deployment, workload.service, workload.replica)
                if workload.health == "unhealthy" and target not in self.isolated:
                    continue
                try:
                    host, port = await driver.address(target, backend.target_port)
                except DriverError:
                    continue  # gone meanwhile: not a member
                found.append(Member(workload.replica, host, port))
            members[backend.name] = found
        return members


async def routed(driver: Driver, service: DesiredService) -> RoutedService:
    """``service`` as routing needs it on ``driver``'s runtime: its public endpoints,
    and its internal ones where the runtime routes those (at the deployment's proxy
    address)."""
    address = await driver.proxy_address(service.deployment) if driver.internal_routable else None
    return routed_service(service, address)


def _from_servers(servers: Mapping[str, Any]) -> list[Member]:
    found = []
    for name, stat in servers.items():
        replica = replica_of(name)
        host, _, port = str(stat.address).rpartition(":")
        if replica is None or not port.isdigit():
            continue
        found.append(Member(replica, host.strip("[]"), int(port)))
    return found
