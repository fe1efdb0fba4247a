"""Health checks of running replicas, between reconciles.

Each running replica whose service has a check is probed every ``interval``
after its ``start_grace``; ``retries`` failures in a row make it *unhealthy*,
which the supervisor treats as a crash. Verdicts and their changes go to the
journal as events and show in ``zlayer status``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler import probes
from reconciler.daemon.journal import Journal
from reconciler.desired import DesiredState
from reconciler.drivers.base import Driver
from reconciler.errors import DriverError
from reconciler.executor import probe_env, resolver
from reconciler.observed import ObservedState, WorkloadId
from reconciler.policy import HealthPolicy
from reconciler.waits import wait_event


@dataclass
class _Watch:
    policy: HealthPolicy
    instance: str
    due: float
    failures: int = 0
    verdict: str = "starting"
    last_problem: str = ""


def checks_something(policy: HealthPolicy) -> bool:
    return not (policy.kind == "tcp" and policy.port is None)


class HealthMonitor:
    def __init__(
        self,
        driver: Driver,
        journal: Journal,
        on_unhealthy: Callable[[WorkloadId, str], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.journal = journal
        self.on_unhealthy = on_unhealthy
        self.clock = clock
        self.desired = DesiredState("none", {})
        self._watches: dict[WorkloadId, _Watch] = {}
        self._changed = asyncio.Event()

    @property
    def unhealthy(self) -> dict[WorkloadId, str]:
        return {t: w.last_problem for t, w in self._watches.items() if w.verdict == "unhealthy"}

    def verdicts(self) -> dict[WorkloadId, str]:
        """``starting`` / ``healthy`` / ``unhealthy`` of every checked replica."""
        return {t: w.verdict for t, w in sorted(self._watches.items())}

    def update(self, desired: DesiredState, observed: ObservedState) -> None:
        """Watch the running replicas of ``observed`` that have a check; a replica that
        was replaced or restarted (another runtime id or start) starts over."""
        self.desired = desired
        now = self.clock()
        seen: dict[WorkloadId, _Watch] = {}
        # A clustered engine runs each task's check itself (and restarts what fails
        # it); zlayer cannot reach a task's address from here.
        workloads = () if observed.services_managed else observed.workloads
        for workload in workloads:
            if workload.replica is None or workload.status != "running":
                continue
            service = desired.services.get((workload.deployment, workload.service))
            if service is None or not checks_something(service.policy.health):
                continue
            instance = f"{workload.runtime_id}|{workload.fingerprint}|{workload.started_at}"
            current = self._watches.get(workload.id)
            if current is not None and current.instance == instance:
                seen[workload.id] = current
                continue
            policy = service.policy.health
            seen[workload.id] = _Watch(policy, instance, now + policy.start_grace)
        self._watches = seen
        self._changed.set()

    def forget(self, target: WorkloadId) -> None:
        """The replica is being restarted: its checks start over after its grace."""
        self._watches.pop(target, None)

    async def run(self) -> None:
        while True:
            now = self.clock()
            due = [t for t, w in self._watches.items() if w.due <= now]
            if due:
                await asyncio.gather(*(self._probe(t) for t in due))
                continue
            upcoming = min((w.due for w in self._watches.values()), default=now + 60)
            self._changed.clear()
            await wait_event(self._changed, max(0.05, upcoming - now))

    async def _probe(self, target: WorkloadId) -> None:
        watch = self._watches.get(target)
        if watch is None:
            return
        policy = watch.policy
        try:
            env = await probe_env(self.driver, target, policy)
            problem = await probes.health_probe(
                policy, resolver(self.driver, self.desired, target), env
            )
        except DriverError as exc:
            problem = str(exc)
        now = self.clock()
        watch.due = now + policy.interval
        if self._watches.get(target) is not watch:
            return  # replaced meanwhile
        if problem is None:
            if watch.verdict != "healthy":
                self.journal.event(str(target), "healthy", "health check passes", now)
            watch.failures, watch.verdict, watch.last_problem = 0, "healthy", ""
            return
        watch.failures += 1
        watch.last_problem = f"health check failed {watch.failures} times in a row: {problem}"
        if watch.failures >= max(1, policy.retries) and watch.verdict != "unhealthy":
            watch.verdict = "unhealthy"
            self.journal.event(str(target), "unhealthy", watch.last_problem, now)
            self.on_unhealthy(target, watch.last_problem)
