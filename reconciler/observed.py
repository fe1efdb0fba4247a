"""Observed state: what a runtime reports about the workloads zlayer manages (pure).

This is also the *snapshot* format that ``zlayer observe --out`` writes and
``zlayer plan --observed`` reads, so a pull-request check can plan for a host
it cannot reach. The format is versioned (``format_version``) and documented in
docs/plan.md ("Snapshot format", schema docs/schemas/observed-v1.schema.json);
readers refuse versions they do not know.

The types are stdlib dataclasses checked in ``__post_init__``, not pydantic models:
every command that observes builds them, and a converged apply would otherwise
spend more on building pydantic's validators than on all its other work. Snapshots
are read and written with pydantic all the same (:mod:`.observed_json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

from reconciler.fingerprint import fingerprint
from reconciler.redact import redact_config

SNAPSHOT_FORMAT: Literal["zlayer-observed"] = "zlayer-observed"
SNAPSHOT_VERSION: Literal[1] = 1

Status = Literal["created", "running", "paused", "restarting", "exited", "dead", "registered"]
Health = Literal["none", "starting", "healthy", "unhealthy"]
_STATUSES = frozenset(get_args(Status))
_HEALTHS = frozenset(get_args(Health))
_FORBID = {"extra": "forbid"}
"""pydantic's config for these dataclasses when a snapshot is read (no unknown keys);
a plain dict, so that this module does not import pydantic (:mod:`.observed_json`)."""


NETWORK = "(network)"
"""The ``service`` part of a deployment network's identity: a deployment's network
is planned like a workload, ``WorkloadId(deployment, NETWORK, None)``. The
parentheses keep it apart from service names, which cannot contain them."""


class WorkloadId(NamedTuple):
    """``deployment/service/replica``; ``replica`` is None for a job or cron definition
    (and for a deployment network, whose ``service`` is :data:`NETWORK`)."""

    deployment: str
    service: str
    replica: int | None

    def __str__(self) -> str:
        base = f"{self.deployment}/{self.service}"
        return base if self.replica is None else f"{base}/{self.replica}"

    @property
    def is_network(self) -> bool:
        return self.service == NETWORK

    @staticmethod
    def network(deployment: str) -> WorkloadId:
        return WorkloadId(deployment, NETWORK, None)


class RunId(NamedTuple):
    """One run of a job or cron service: ``deployment/service#run``."""

    deployment: str
    service: str
    run: str

    def __str__(self) -> str:
        return f"{self.deployment}/{self.service}#{self.run}"


RunStatus = Literal["running", "exited"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunState:
    """A run-to-completion instance of a job or cron service, as the runtime reports it."""

    __pydantic_config__ = _FORBID

    deployment: str
    service: str
    run: str
    status: RunStatus
    exit_code: int | None = None
    """``None`` while running, and when the runtime lost the exit status."""
    started_at: str | None = None
    finished_at: str | None = None

    def __post_init__(self) -> None:
        _check(self.status in ("running", "exited"), f"run status {self.status!r} is not known")

    @property
    def id(self) -> RunId:
        return RunId(self.deployment, self.service, self.run)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One managed replica (``replica`` ≥ 1) or registered job/cron definition."""

    __pydantic_config__ = _FORBID

    deployment: str
    service: str
    replica: int | None = None
    fingerprint: str
    revision: str | None = None
    status: Status
    exit_code: int | None = None
    started_at: str | None = None
    restart_count: int = 0
    health: Health = "none"
    depends: tuple[str, ...] = ()
    runtime_id: str | None = None
    node: str | None = None
    """The cluster node it runs on (a clustered engine's task); None on one host."""
    problem: str | None = None
    """Drift the runtime noticed in a replica that still runs (its network namespace
    deleted behind zlayer's back, …): the plan restarts it, giving this as the reason."""
    stopped_by_reboot: bool = False
    """The replica stopped because the host went down (it ended before this boot):
    started again, neither a crash nor ``completed``."""
    oom_killed: bool = False
    """It ended because the kernel's OOM killer ended it, at its memory limit
    (``resources.memory``): shown as ``oom-killed``, not as a bare status 137."""
    outdated: str | None = None
    """Why the runtime would make this replica differently now (it was made by an older
    zlayer, before its public ports went through the managed proxy, …): the plan
    replaces it, giving this as the reason."""

    def __post_init__(self) -> None:
        _check(self.replica is None or self.replica >= 1, "replica must be at least 1")
        _check(self.restart_count >= 0, "restart_count must be at least 0")
        _check(self.status in _STATUSES, f"status {self.status!r} is not known")
        _check(self.health in _HEALTHS, f"health {self.health!r} is not known")
        if (self.replica is None) != (self.status == "registered"):
            kind = "a definition (no replica)" if self.replica is None else "a replica"
            raise ValueError(f"status {self.status!r} does not fit {kind}")

    @property
    def id(self) -> WorkloadId:
        return WorkloadId(self.deployment, self.service, self.replica)

    @property
    def completed(self) -> bool:
        """A replica that exited with status 0: it finished, as ZLayer counts it, and
        is not restarted; only a failure is a crash."""
        return (
            self.replica is not None
            and self.status == "exited"
            and self.exit_code == 0
            and not self.stopped_by_reboot
        )

    @property
    def state(self) -> str:
        """The status as shown: ``completed``, ``exited (3)``, ``running``, …"""
        if self.completed:
            return "completed"
        if self.stopped_by_reboot:
            return "stopped by reboot"
        if self.oom_killed and self.status in ("exited", "dead"):
            return "oom-killed"
        return self.status if self.exit_code is None else f"{self.status} ({self.exit_code})"

    @property
    def ended(self) -> str:
        """How a replica that is not running ended, in words: ``exited with status 3``,
        ``oom-killed (at its memory limit, status 137)``, or its status."""
        code = self.exit_code
        if self.oom_killed:
            status = f", status {code}" if code is not None else ""
            return f"oom-killed (at its memory limit{status})"
        return f"exited with status {code}" if code is not None else self.status


@dataclass(frozen=True, slots=True, kw_only=True)
class RemovedOnExit:
    """A replica of a ``lifecycle.delete_on_exit`` service that exited and was removed.

    The runtime no longer has it, so zlayer keeps this record (in the state directory,
    :mod:`reconciler.removals`): the plan does not create the replica again while the
    service's config is the one it exited with; a new config creates it."""

    __pydantic_config__ = _FORBID

    deployment: str
    service: str
    replica: int
    fingerprint: str
    exit_code: int | None = None
    removed_at: str
    """When zlayer removed it (ISO 8601, UTC)."""

    def __post_init__(self) -> None:
        _check(self.replica >= 1, "replica must be at least 1")

    @property
    def id(self) -> WorkloadId:
        return WorkloadId(self.deployment, self.service, self.replica)

    @property
    def exited(self) -> str:
        """``exited with status 3`` (or ``exited`` when the status was lost)."""
        code = self.exit_code
        return "exited" if code is None else f"exited with status {code}"


UpdateState = Literal[
    "updating", "completed", "paused", "rollback_started", "rollback_paused", "rollback_completed"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterService:
    """A service as a clustered engine (Docker Swarm) runs it: one object for all its
    replicas, whose placement, restarts and rolling updates are the engine's. Its tasks
    are listed in :attr:`ObservedState.workloads` as replicas (the task's slot as the
    replica index, ``node`` where it runs), for status and health gates; the plan
    changes the service as a whole."""

    __pydantic_config__ = _FORBID

    deployment: str
    service: str
    fingerprint: str
    revision: str | None = None
    replicas: int | None = None
    """The replica count the engine keeps (``None``: a global service, one per node)."""
    placement: dict[str, Any] = field(default_factory=dict)
    """The spec's ``node_mode``, ``node_selector`` and ``affinity`` the service was made
    with (:attr:`reconciler.desired.DesiredService.placement`)."""
    version: int = 0
    """The engine's version index of the service's spec: an update names it, and the
    engine refuses the update when the spec changed since (never a blind overwrite)."""
    update_state: UpdateState | None = None
    update_message: str | None = None
    """The engine's word on the last update (``update rolled back due to failure or
    early termination of task …``)."""
    runtime_id: str | None = None

    def __post_init__(self) -> None:
        _check(self.replicas is None or self.replicas >= 0, "replicas must be at least 0")

    @property
    def id(self) -> WorkloadId:
        return WorkloadId(self.deployment, self.service, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A deployment's network, as a runtime that manages networks reports it."""

    __pydantic_config__ = _FORBID

    deployment: str
    name: str
    """The runtime's name for it (the process runtime: the bridge's interface name)."""
    subnet: str | None = None
    problem: str | None = None
    """Why it is not usable as it is (its bridge deleted behind zlayer's back, …):
    the plan creates it again, giving this as the reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteServer:
    """One replica's server in a route, as HAProxy has it (``status`` UP, DOWN,
    DRAIN, MAINT, …; the counters are HAProxy's since it started)."""

    __pydantic_config__ = _FORBID

    replica: int
    address: str
    status: str
    check: str = ""
    sessions: int = 0
    requests: int = 0
    errors: int = 0
    response_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One routed endpoint of a service, as the managed proxy serves it: its routing
    as zlayer last synced it, and the servers HAProxy has for it now."""

    __pydantic_config__ = _FORBID

    deployment: str
    service: str
    endpoint: str
    protocol: str
    port: int
    target_port: int
    host: str | None = None
    path: str | None = None
    check: str = "none"
    """How HAProxy checks the replicas (``http GET /health expects 200``, ``tcp :8080``,
    ``none``)."""
    expose: Literal["public", "internal"] = "public"
    address: str | None = None
    """An internal route's address: the deployment's proxy address its service's name
    resolves to (public routes listen on the configured publish address)."""
    servers: tuple[RouteServer, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", tuple(self.servers))

    @property
    def id(self) -> WorkloadId:
        """The service the route belongs to (routes are planned with it)."""
        return WorkloadId(self.deployment, self.service, None)


@dataclass(frozen=True, kw_only=True)
class ObservedState:
    """What a runtime reports, as a whole (and the snapshot's top level)."""

    __pydantic_config__ = _FORBID

    format: Literal["zlayer-observed"] = SNAPSHOT_FORMAT
    format_version: Literal[1] = SNAPSHOT_VERSION
    runtime: str
    workloads: tuple[Workload, ...] = ()
    networks_managed: bool = False
    """The runtime keeps one network per deployment as a resource of its own, which
    the plan creates and removes (the process runtime as root). Otherwise networks
    are the driver's business and never appear in a plan."""
    networks: tuple[Network, ...] = ()
    routes_managed: bool = False
    """The host's public endpoints go through zlayer's managed proxy (a runtime that
    routes, with HAProxy installed): routes are planned like workloads. Otherwise
    routes never appear in a plan."""
    proxy_running: bool = False
    """The managed HAProxy runs (only meaningful with ``routes_managed``)."""
    routes_internal: bool = False
    """Internal endpoints are routed too (the process runtime with its networks): each
    deployment's service names resolve to its proxy address."""
    routes: tuple[Route, ...] = ()
    services_managed: bool = False
    """A clustered engine (Docker Swarm) runs each service as one object: the plan
    creates, updates, scales and removes :attr:`services`; the replicas in
    :attr:`workloads` are its tasks, shown, never planned one by one."""
    services: tuple[ClusterService, ...] = ()
    removed_on_exit: tuple[RemovedOnExit, ...] = ()
    """Replicas removed when they exited (``lifecycle.delete_on_exit``) and not created
    again since: none of them is in ``workloads``."""
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The canonical config behind each fingerprint, recorded once however many
    replicas share it (sensitive values as placeholders). A fingerprint without an
    entry can still be compared, but a replace can then only say that it changed.

    Every config is redacted on the way in, whatever recorded it: a label or record
    written by an older version, or a hand-made snapshot, may still hold a
    sensitive value in plain text, and no snapshot, API answer or plan shows it."""

    def __post_init__(self) -> None:
        _check(self.format == SNAPSHOT_FORMAT, f"format {self.format!r} is not {SNAPSHOT_FORMAT}")
        _check(self.format_version == SNAPSHOT_VERSION, "format_version is not 1")
        redacted = {d: redact_config(c, None).config for d, c in self.configs.items()}
        object.__setattr__(self, "configs", redacted)
        object.__setattr__(self, "workloads", tuple(self.workloads))
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "routes", tuple(self.routes))
        object.__setattr__(self, "removed_on_exit", tuple(self.removed_on_exit))
        object.__setattr__(self, "services", tuple(self.services))
        keys = [s.id for s in self.services]
        if len(set(keys)) != len(keys):
            raise ValueError("a cluster service is listed twice")
        seen: set[WorkloadId] = set()
        for workload in self.workloads:
            if workload.id in seen:
                raise ValueError(f"workload {workload.id} is listed twice")
            seen.add(workload.id)
        for removed in self.removed_on_exit:
            if removed.id in seen:
                raise ValueError(f"{removed.id} is listed twice (removed on exit and present)")
            seen.add(removed.id)
        deployments = [n.deployment for n in self.networks]
        if len(set(deployments)) != len(deployments):
            raise ValueError("a deployment's network is listed twice")

    def fingerprint(self) -> str:
        """A hash of what the planner reads: identities, fingerprints, statuses and exit
        codes (not health or start times, which change without changing any plan)."""
        rows = sorted(
            (w.deployment, w.service, w.replica or 0, w.fingerprint, w.status, w.exit_code)
            + ((w.problem,) if w.problem is not None else ())
            for w in self.workloads
        )
        parts: list[Any] = [rows]
        if self.networks_managed:
            parts.append(sorted((n.deployment, n.name, n.subnet, n.problem) for n in self.networks))
        if self.routes_managed:
            # The routing and which replicas have a server, not HAProxy's counters.
            routes = sorted(
                [
                    *(r.deployment, r.service, r.endpoint, r.protocol, r.port, r.target_port),
                    *(r.host or "", r.path or "", r.check, r.expose, r.address or ""),
                    sorted(s.replica for s in r.servers),
                ]
                for r in self.routes
            )
            parts.append(["routes", self.proxy_running, self.routes_internal, routes])
        if self.services_managed:
            services = sorted(
                (c.deployment, c.service, c.fingerprint, c.replicas or -1, c.version, c.placement)
                for c in self.services
            )
            parts.append(["services", services])
        if self.removed_on_exit:
            removed = sorted(
                (r.deployment, r.service, r.replica, r.fingerprint) for r in self.removed_on_exit
            )
            parts.append(["removed_on_exit", removed])
        return fingerprint(parts[0] if len(parts) == 1 else parts)

    def to_json(self) -> str:
        """Deterministic snapshot text: workloads sorted by identity."""
        ordered = sorted(self.workloads, key=lambda w: (w.deployment, w.service, w.replica or 0))
        networks = sorted(self.networks, key=lambda n: n.deployment)
        routes = sorted(self.routes, key=lambda r: (r.deployment, r.service, r.endpoint))
        configs = dict(sorted(self.configs.items()))
        copy = dataclasses.replace(
            self,
            workloads=tuple(ordered),
            networks=tuple(networks),
            routes=tuple(routes),
            removed_on_exit=tuple(sorted(self.removed_on_exit, key=lambda r: r.id)),
            services=tuple(sorted(self.services, key=lambda c: c.id)),
            configs=configs,
        )
        from reconciler.observed_json import dump  # pydantic, only when a snapshot is written

        return dump(copy)


def load_snapshot(text: str | bytes, name: str = "snapshot") -> ObservedState:
    """Parse a snapshot, or raise :class:`SnapshotError` saying exactly what is wrong."""
    from reconciler.observed_json import load  # pydantic, only when a snapshot is read

    return load(text, name)
