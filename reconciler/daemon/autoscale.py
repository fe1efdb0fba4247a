"""The daemon's autoscaler: samples adaptive services, decides, and owns their counts.

Every ``[autoscale] interval`` it reads each running replica's CPU and memory from the
runtime (:meth:`Driver.usage`: one read per replica), turns two readings into a load
(CPU as a percentage of the replica's ``resources.cpu``, else of one core; memory as
a percentage of ``resources.memory``), keeps a short window per service and asks
:func:`reconciler.autoscale.decide`. A change is an event in the journal with the
values and the result (``web: 2 → 4 replicas, cpu 91% vs target 50% per replica``),
is kept in the journal (a daemon killed mid-scale comes back to the same counts), and
wakes a reconcile: the count reaches the runtime through the one plan and executor,
in dependency order, health-gated, draining the highest replicas first.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.autoscale import Decision, Sample, decide
from reconciler.daemon.journal import Journal
from reconciler.desired import DesiredService, DesiredState
from reconciler.drivers.base import Driver, Usage
from reconciler.observed import ObservedState, WorkloadId
from reconciler.units import memory_bytes

STATE_KEY = "autoscale"
"""The journal's ``meta`` key holding the decided counts."""

Key = tuple[str, str]


class Autoscaler:
    def __init__(self, journal: Journal, clock: Callable[[], float], interval: float) -> None:
        self.journal = journal
        self.clock = clock
        self.interval = interval
        saved = journal.get(STATE_KEY)
        self.counts: dict[str, dict[str, Any]] = saved if isinstance(saved, dict) else {}
        """``deployment/service`` → the decided ``replicas``, its ``reason`` and ``at``."""
        self.windows: dict[Key, deque[Sample]] = {}
        self.readings: dict[WorkloadId, tuple[float, Usage]] = {}
        self.request_readings: dict[Key, tuple[float, int]] = {}
        """Per service, the managed proxy's request count at the last sample."""
        self.latest: dict[Key, Decision] = {}
        """The last decision per service, changed or not (for status and metrics)."""
        self.values: dict[Key, dict[str, float]] = {}

    def owned(self, desired: DesiredState) -> DesiredState:
        """``desired`` with each adaptive service's count as decided (clamped to its
        range as the specs say now); services without a decision keep theirs."""
        services = dict(desired.services)
        changed = False
        for key, service in desired.services.items():
            scale = service.policy.scale
            decided = self.counts.get(f"{key[0]}/{key[1]}")
            if scale is None or decided is None:
                continue
            count = scale.clamp(int(decided["replicas"]))
            services[key] = dataclasses.replace(
                service, replicas=count, scaled=f"autoscaler: {decided['reason']}"
            )
            changed = True
        return dataclasses.replace(desired, services=services) if changed else desired

    async def sample(
        self,
        driver: Driver,
        desired: DesiredState,
        observed: ObservedState,
        requests: Mapping[Key, int] | None = None,
    ) -> list[str]:
        """One sample of every adaptive service; the decisions that change a count
        (as their journal messages), which the caller reconciles. ``requests``: the
        managed proxy's request counter of each routed service (HAProxy's, since it
        started), whose growth per second is the ``rps`` load."""
        now = self.clock()
        adaptive = {k: s for k, s in desired.services.items() if s.policy.scale is not None}
        self._forget(adaptive)
        if not adaptive:
            return []
        replicas: dict[Key, list[WorkloadId]] = {key: [] for key in adaptive}
        running: dict[Key, list[WorkloadId]] = {key: [] for key in adaptive}
        for w in observed.workloads:
            key = (w.deployment, w.service)
            if key in replicas and w.replica is not None:
                replicas[key].append(w.id)
                if w.status == "running":
                    running[key].append(w.id)
        usage = await driver.usage([t for ids in running.values() for t in ids])
        changes = []
        for key, service in adaptive.items():
            scale = service.policy.scale
            assert scale is not None
            values = self._load(service, running[key], usage, now)
            rps = self._rps(key, (requests or {}).get(key), len(running[key]), now)
            if rps is not None and "rps" in (scale.targets or {}):
                values["rps"] = rps
            window = self.windows.setdefault(key, deque())
            if values:
                window.append(Sample(now, len(running[key]), values))
                self.values[key] = values
            keep = scale.cooldown + 2 * self.interval
            while window and window[0].at < now - keep:
                window.popleft()
            current = len(replicas[key])
            decision = decide(scale, current, list(window), now)
            self.latest[key] = decision
            if decision.changed and current > 0:
                changes.append(self._record(key, decision, now))
                window.clear()  # a new count: the next scale-down waits a whole cooldown
        return changes

    def _load(
        self,
        service: DesiredService,
        ids: list[WorkloadId],
        usage: dict[WorkloadId, Usage],
        now: float,
    ) -> dict[str, float]:
        """The per-replica average of each target metric, from this reading and the
        one before (CPU needs two); empty until a replica has both."""
        resources = service.config.get("resources", {})
        cores = float(resources.get("cpu") or 1)
        memory_text = resources.get("memory")
        limit = memory_bytes(str(memory_text)) if memory_text else None
        cpu: list[float] = []
        memory: list[float] = []
        for target in ids:
            now_usage = usage.get(target)
            if now_usage is None:
                continue
            before = self.readings.get(target)
            self.readings[target] = (now, now_usage)
            if limit:
                memory.append(100.0 * now_usage.memory / limit)
            if before is not None and now > before[0] and now_usage.cpu_ns >= before[1].cpu_ns:
                seconds = (now_usage.cpu_ns - before[1].cpu_ns) / 1e9
                cpu.append(100.0 * seconds / (now - before[0]) / cores)
        targets = (service.policy.scale.targets if service.policy.scale else None) or {}
        values: dict[str, float] = {}
        if "cpu" in targets and cpu:
            values["cpu"] = sum(cpu) / len(cpu)
        if "memory" in targets and memory:
            values["memory"] = sum(memory) / len(memory)
        return values

    def _rps(self, key: Key, total: int | None, running: int, now: float) -> float | None:
        """Requests per second per running replica since the last sample; None on the
        first one, and when the counter went back (HAProxy restarted)."""
        if total is None:
            return None
        before = self.request_readings.get(key)
        self.request_readings[key] = (now, total)
        if before is None or now <= before[0] or total < before[1] or running == 0:
            return None
        return (total - before[1]) / (now - before[0]) / running

    def _record(self, key: Key, decision: Decision, now: float) -> str:
        name = f"{key[0]}/{key[1]}"
        message = f"{key[1]}: {decision.current} → {decision.desired} replicas, {decision.reason}"
        self.counts[name] = {"replicas": decision.desired, "reason": decision.reason, "at": now}
        self.journal.put(STATE_KEY, self.counts)
        self.journal.event(name, "scaled", message, now)
        return message

    def _forget(self, adaptive: dict[Key, DesiredService]) -> None:
        """Drop what belongs to services no longer adaptive (their count is the specs')."""
        names = {f"{d}/{s}" for d, s in adaptive}
        if set(self.counts) - names:
            self.counts = {n: c for n, c in self.counts.items() if n in names}
            self.journal.put(STATE_KEY, self.counts)
        for key in set(self.windows) - set(adaptive):
            del self.windows[key]
        self.readings = {t: r for t, r in self.readings.items() if (t[0], t[1]) in adaptive}
