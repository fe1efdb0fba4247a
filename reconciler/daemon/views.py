"""What the daemon's API shows: health, readiness, status, metrics, the plan it would
apply now, job runs — read from the daemon's state and journal, never changing them
(the few requests that act are handed to the daemon as triggers)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from reconciler.daemon.metrics import Metrics, Scaling
from reconciler.errors import ProxyError
from reconciler.observed_json import document
from reconciler.plan.serialize import plan_to_dict
from reconciler.reconcile import observe_host, plan_for
from reconciler.removals import Removals
from reconciler.routing.host import HostRoutes

if TYPE_CHECKING:
    from reconciler.daemon.loop import Daemon

STUCK_AFTER = 1800.0
"""Seconds of one reconcile after which the daemon reports itself not alive."""


class Views:
    """The daemon as the API sees it (:class:`reconciler.daemon.api.DaemonView`)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def health(self) -> tuple[bool, str]:
        since = self.daemon.reconciling_since
        if since is not None and self.daemon.clock() - since > STUCK_AFTER:
            return False, "a reconcile has been running for more than 30 minutes"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        revisions = self.daemon.revisions
        if revisions.applied is None:
            return False, revisions.problem or "no revision applied yet"
        if self.daemon.last is None:
            return False, "no reconcile finished yet"
        return True, f"revision {revisions.applied.revision[:19]} applied"

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=``."""
        last = self.daemon.last
        if self.daemon.unreachable is not None:
            return f"runtime unreachable: {self.daemon.unreachable[1]}"[:200]
        if last is None:
            return "starting"
        applied = self.daemon.revisions.applied
        revision = applied.revision[:12] if applied else "none"
        return f"revision {revision}; last reconcile {last['outcome']}: {last['summary']}"[:200]

    def status(self) -> dict[str, Any]:
        daemon = self.daemon
        now = daemon.clock()
        crashes = daemon.journal.crashes()
        applied = daemon.revisions.applied
        return {
            "daemon": {"pid": os.getpid(), "started": daemon.started_at, "runtime": daemon.runtime},
            "source": daemon.source.status(),
            "applied": {
                "revision": applied.revision if applied else None,
                "applied_at": daemon.revisions.applied_at,
            },
            "problem": daemon.revisions.problem,
            "runtime": self._runtime(),
            "last_reconcile": daemon.last,
            "reconciling": daemon.reconciling_since is not None,
            "crash_loops": {t: c.describe(now) for t, c in crashes.items() if c.streak or c.held},
            "health": {str(t): v for t, v in daemon.monitor.verdicts().items()}
            if daemon.monitor
            else {},
            "jobs": [r.as_json() for r in daemon.journal.runs(limit=10)],
        }

    def _runtime(self) -> dict[str, Any]:
        if self.daemon.unreachable is None:
            return {"reachable": True}
        since, error = self.daemon.unreachable
        return {"reachable": False, "status": "runtime unreachable", "since": since, "error": error}

    def _routes(self) -> HostRoutes:
        return HostRoutes.of(self.daemon.state_dir, self.daemon.settings.publish_address)

    async def observed(self) -> dict[str, Any]:
        """The runtime's workloads, and the managed proxy's routes with their counters."""
        assert self.daemon.driver is not None
        state = await observe_host(
            self.daemon.driver, self._routes(), removals=Removals(self.daemon.state_dir)
        )
        return document(state)

    async def plan(self) -> dict[str, Any]:
        """The plan the daemon would apply now (crash loops noted), applying nothing."""
        daemon = self.daemon
        assert daemon.driver is not None and daemon.monitor is not None
        choice = await daemon.revisions.choose(daemon.driver)
        if choice.desired is None:
            return {"error": choice.note}
        desired = daemon.counted(choice.desired)
        observed = await observe_host(
            daemon.driver,
            self._routes(),
            desired=desired,
            removals=Removals(daemon.state_dir),
        )
        plan = plan_for(
            desired,
            observed,
            unhealthy=daemon.monitor.unhealthy,
            crash_loops=daemon.journal.crash_loops(daemon.clock()),
        )
        return plan_to_dict(plan, f"the {daemon.driver.name} runtime")

    async def metrics(self) -> Metrics:
        daemon = self.daemon
        try:
            routes = await self._routes().stats()
        except ProxyError:
            routes = []  # HAProxy went away meanwhile: the next sync starts it again
        totals = daemon.journal.reconcile_totals()
        crashes = daemon.journal.crashes()
        applied = daemon.revisions.applied
        return Metrics(
            reconciles=dict(totals["by_outcome"]),
            reconcile_duration_sum=float(totals["duration_sum"]),
            reconcile_duration_count=int(totals["count"]),
            reconcile_errors=int(totals["by_outcome"].get("error", 0)),
            workloads=dict(daemon.workload_states),
            restarts=sum(c.restarts for c in crashes.values()),
            failed=sum(c.held == "failed" for c in crashes.values()),
            applied_revision=applied.revision if applied else None,
            applied_at=daemon.revisions.applied_at,
            job_runs=daemon.journal.run_totals(),
            webhooks_accepted=daemon.counters["webhooks"],
            webhooks_rejected=daemon.api.rejected if daemon.api else 0,
            started_at=daemon.started_at,
            routes=tuple(routes),
            scaling=self._scaling(),
            runtime_up=self.daemon.unreachable is None,
        )

    def _scaling(self) -> tuple[Scaling, ...]:
        scaler = self.daemon.autoscaler
        applied = self.daemon.applied
        out = []
        for key, decision in sorted(scaler.latest.items()):
            service = applied.services.get(key) if applied else None
            scale = service.policy.scale if service else None
            if scale is None:
                continue
            out.append(
                Scaling(
                    f"{key[0]}/{key[1]}",
                    decision.current,
                    decision.desired,
                    dict(scaler.values.get(key, {})),
                    dict(scale.targets or {}),
                )
            )
        return tuple(out)

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return [r.as_json() for r in self.daemon.journal.runs(limit=limit)]

    # the requests that act: handed to the daemon

    def request_reconcile(self, reason: str) -> None:
        self.daemon.trigger(reason)

    def request_fetch(self, reason: str) -> None:
        self.daemon.request_fetch(reason)

    def retry(self) -> dict[str, Any]:
        return self.daemon.retry()

    async def run_job(self, deployment: str, service: str, trigger: str) -> dict[str, Any]:
        return await self.daemon.run_job(deployment, service, trigger)
