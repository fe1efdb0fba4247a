"""Routes on a cluster whose driver runs a proxy per deployment (Docker Swarm).

The same plan actions as on one host (``route``, ``reroute``, ``unroute``) and the
same sync after every pass, with a different data plane: each deployment with a
routed public endpoint gets HAProxy as a global service, publishing the endpoints'
ports on every node and finding each service's running tasks through the engine's
DNS (``tasks.<service>``). Rotation and draining of single replicas are the engine's
rolling update and HAProxy's own checks, so this keeper has no ``drain``, ``admit``
or ``in_rotation``: a scale or a replaced task needs no new configuration.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from reconciler.desired import DesiredState, routed_endpoints
from reconciler.drivers.base import Driver, ProxyingCluster
from reconciler.errors import PermanentDriverError
from reconciler.observed import ObservedState
from reconciler.plan.model import Action
from reconciler.route_table import RoutedService, routed_service
from reconciler.routing.control import RouteSync


@dataclass
class ClusterRoutes:
    """The proxies of ``driver``'s deployments, behind the interface the pipeline uses
    for the host's proxy (:class:`reconciler.routing.host.HostRoutes`)."""

    driver: ProxyingCluster
    synced: list[RouteSync] = field(default_factory=list)

    async def observe(
        self,
        observed: ObservedState,
        deployments: Collection[str] | None = None,
        internal: bool = False,
    ) -> ObservedState:
        return await self.driver.observe_routes(observed, deployments)

    async def sync(
        self,
        driver: Driver,
        desired: DesiredState,
        observed: ObservedState,
        deployments: Collection[str],
        services: Collection[tuple[str, str]] = (),
    ) -> RouteSync | None:
        """Each of ``deployments``' proxies made to serve its routed public endpoints
        (``services`` makes no difference: a proxy's configuration is per deployment);
        ``None`` when none of them has or had one."""
        outcomes: list[str] = []
        changes: list[str] = []
        for deployment in sorted(set(deployments)):
            routed = routed_services(desired, deployment)
            outcome, said = await self.driver.sync_proxy(deployment, routed)
            if outcome != "unchanged" or routed:
                outcomes.append(outcome)
            changes += said
        if not outcomes:
            return None
        changed = [o for o in outcomes if o != "unchanged"]
        result = RouteSync(changed[0] if len(set(changed)) == 1 else "updated" if changed
                           else "unchanged", tuple(changes))  # fmt: skip
        self.synced.append(result)
        return result

    async def route(
        self, driver: Driver, desired: DesiredState, action: Action, warnings: list[str]
    ) -> str:
        """Do a route action of the plan: sync its deployment's proxy."""
        result = await self.sync(driver, desired, ObservedState(runtime=driver.name),
                                 [action.target.deployment])  # fmt: skip
        unrouted = action.kind == "unroute"
        if result is None and not unrouted:
            raise PermanentDriverError(f"{action.subject}: no proxy serves its deployment")
        if result is None:
            return "no longer routed (its deployment's proxy is gone)"
        unchanged = "no longer routed" if unrouted else "served as it was"
        return "; ".join(result.changes) or unchanged


def routed_services(desired: DesiredState, deployment: str) -> list[RoutedService]:
    """The services of ``deployment`` with a routed public endpoint, as routing needs
    them (internal endpoints are the overlay network's: a service's name resolves to
    its tasks)."""
    return [
        routed_service(s)
        for s in desired.services.values()
        if s.deployment == deployment and not s.is_definition and routed_endpoints(s.config)
    ]
