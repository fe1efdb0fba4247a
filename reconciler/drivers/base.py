"""The driver protocol every runtime implements.

A driver is an async context manager. :meth:`Driver.observe` is read-only and
the only thing planning ever calls; the action coroutines are what the executor
calls to carry a plan out, one per action kind. Drivers translate their
library's errors into :class:`reconciler.errors.DriverError` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from reconciler.desired import ROUTING_ONLY, DesiredService, routed_endpoints
from reconciler.observed import ObservedState, RunId, RunState, Workload, WorkloadId
from reconciler.route_table import RoutedService


@dataclass(frozen=True, slots=True)
class Usage:
    """What one running replica uses now, as its runtime accounts it (its cgroup)."""

    cpu_ns: int
    """CPU time used since it started, in nanoseconds (the delta between two samples
    over the time between them is its CPU load)."""
    memory: int
    """Memory in use, in bytes, without the page cache it could drop (what
    ``docker stats`` and ``systemd-cgtop`` show)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a runtime cannot do with a service: ``errors`` stop an apply before it
    touches anything (and fail ``validate --runtime``); ``warnings`` go into the plan."""

    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    """What the runtime chose for the service where the spec leaves it open (plan
    notes, never a reason to fail)."""


PROXY_ENDPOINT_FIELDS = ("path", "host", "stream", "tunnel", "target_role")
"""Endpoint fields that need more than a published port: ``host``/``path`` the
managed proxy applies on an endpoint it routes; ZLayer's stream proxy options, tunnels
and replica-group roles no runtime implements."""


def endpoint_field_warnings(
    subject: str, config: Mapping[str, Any], unrouted_why: str
) -> list[str]:
    """A warning for each endpoint field of ``config`` that is not applied:
    ``host``/``path`` of an endpoint the managed proxy does not route (``unrouted_why``
    says which it routes on this runtime), and the fields nothing implements."""
    routed = {id(e) for e in routed_endpoints(config)}
    warnings = []
    for endpoint in config.get("endpoints", ()):
        for key in PROXY_ENDPOINT_FIELDS:
            if key not in endpoint or (key in ROUTING_ONLY and id(endpoint) in routed):
                continue
            why = "not implemented"
            if key in ROUTING_ONLY:
                why = f"the managed proxy does not serve it ({unrouted_why})"
            warnings.append(f"{subject}: endpoint {endpoint.get('name')}: {key} not applied: {why}")
    return warnings


class Observer(Protocol):
    """The read-only half of a driver: all that ``zlayer plan`` and ``observe`` get."""

    name: str

    @property
    def routable(self) -> bool:
        """Public endpoints are served by zlayer's managed proxy: every replica has an
        address of its own that the host reaches (:mod:`reconciler.routing`)."""
        ...

    @property
    def internal_routable(self) -> bool:
        """Internal endpoints are served by the managed proxy too, on each deployment's
        proxy address (:meth:`Driver.proxy_address`), where its service names resolve;
        otherwise a service's name reaches its replicas directly."""
        ...

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        """Every workload zlayer manages (of ``deployments`` only, when given)."""
        ...

    def limits(self, service: DesiredService) -> Limits:
        """Fields of ``service`` this runtime cannot honour (no I/O beyond cached facts)."""
        ...

    async def image_drift(
        self, services: Collection[DesiredService], observed: ObservedState
    ) -> ObservedState:
        """``observed`` with each replica of ``services`` (those with ``pull_policy``
        ``always`` or ``newer``) whose image moved in its registry since it was made
        marked ``outdated`` (old and new digest). A runtime that runs no images, or a
        registry that cannot be asked, marks nothing; no other policy asks it."""
        ...

    async def usage(self, targets: Collection[WorkloadId]) -> dict[WorkloadId, Usage]:
        """CPU and memory of each running replica of ``targets`` the runtime can
        measure (one read each, no stream held open); the others are left out."""
        ...


class Driver(Observer, Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        """Create and start replica ``replica`` of ``service``; ``Conflict`` if it exists."""
        ...

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        """Swap the replica for one with ``service``'s current config (creating it when
        it is missing: a rollback after a failed start must still restore it)."""
        ...

    async def start(self, target: WorkloadId) -> None: ...

    async def restart(self, target: WorkloadId) -> None: ...

    async def stop(self, target: WorkloadId) -> None: ...

    async def remove(self, target: WorkloadId) -> None:
        """Stop (gracefully) and remove a replica or definition; ``NotFound`` if absent."""
        ...

    async def register(self, service: DesiredService, revision: str) -> None:
        """Record (or update) the definition of a job or cron service."""
        ...

    async def unregister(self, target: WorkloadId) -> None: ...

    async def create_network(self, deployment: str) -> None:
        """Make the deployment's network ready: create it, or repair it when it is
        broken (runtimes whose :class:`ObservedState` says ``networks_managed``)."""
        ...

    async def remove_network(self, deployment: str) -> None:
        """Remove the deployment's network; no error when it is already gone."""
        ...

    async def status(self, target: WorkloadId) -> Workload | None:
        """The replica as the runtime reports it now, ``None`` when it does not exist."""
        ...

    async def proxy_address(self, deployment: str) -> str | None:
        """Where the managed proxy serves ``deployment``'s internal endpoints (an address
        of the host on the deployment's network); None when internal endpoints are not
        routed, or the deployment has no network yet."""
        ...

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        """Where zlayer, on the host, reaches ``port`` of the replica (for health
        checks): its own address, or a port published on the host."""
        ...

    def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        """The replica's output lines (stdout and stderr), the last ``tail`` of them,
        then new ones as they come when ``follow``."""
        ...

    # --- runs of jobs and cron services (run to completion; never in observe()) ---------

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """Start run ``run`` of the job or cron ``service``: a workload with the
        service's config that runs to completion. ``Conflict`` if that run exists."""
        ...

    async def job_status(self, run: RunId) -> RunState | None:
        """The run as the runtime reports it now, ``None`` when it does not exist."""
        ...

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        """Every run the runtime still has (running or exited, not yet removed)."""
        ...

    def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        """The run's output lines, as :meth:`logs` for a replica."""
        ...

    async def remove_job(self, run: RunId) -> None:
        """Stop the run if it still runs and remove it; no error when it is gone."""
        ...

    def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """A hint, as soon as the runtime notices, that a replica or run stopped. It may
        miss some (the periodic full observe is the truth) and repeat others."""
        ...


@runtime_checkable
class ClusterDriver(Driver, Protocol):
    """A driver for a clustered engine that runs each service as one object (Docker
    Swarm): its :meth:`observe` sets ``services_managed`` and the plan's actions on a
    service (replica None) come here instead of to the replica calls."""

    async def deploy(
        self, service: DesiredService, revision: str, replicas: int, version: int | None
    ) -> None:
        """Create ``service`` (``version`` None) or update it at the engine's version
        index ``version`` to its current spec with ``replicas`` tasks, and return once
        the engine reports the update done and the tasks running. Raises
        :class:`reconciler.errors.EngineRolledBack` when the engine rolled it back,
        :class:`reconciler.errors.Conflict` when the version is stale."""
        ...


@runtime_checkable
class ProxyingCluster(ClusterDriver, Protocol):
    """A :class:`ClusterDriver` that serves public endpoints through a proxy of its
    own per deployment, running on every node (Docker Swarm with ``[swarm]
    proxy_image``): the plan's routes are its proxies' (:mod:`reconciler.routing.swarm`)."""

    @property
    def proxied(self) -> bool:
        """It does (a proxy is configured); otherwise it routes nothing."""
        ...

    async def observe_routes(
        self, observed: ObservedState, deployments: Collection[str] | None = None
    ) -> ObservedState:
        """``observed`` with the routes its proxies serve (of ``deployments``, else all)
        and whether each proxy runs."""
        ...

    async def sync_proxy(
        self, deployment: str, routed: Collection[RoutedService]
    ) -> tuple[str, tuple[str, ...]]:
        """Make ``deployment``'s proxy serve ``routed`` (none: remove it): (``started``,
        ``updated``, ``unchanged`` or ``stopped``; what changed, in words)."""
        ...
