"""Crash supervision: which restarts of a plan run now, which wait, which never run.

The planner restarts every replica that is not running, at once. The daemon puts
``errors.on_panic`` and the crash backoff in between: a replica that exited (or
failed its health check ``retries`` times in a row) counts one crash; under
``restart`` it is restarted when its backoff delay has passed, under
``shutdown`` it stays stopped, under ``isolate`` it stays as it is, marked. The
state lives in the journal, so a daemon restart neither resets a crash loop's
pace nor its counters. Actions that wait for a held restart are held with it
(a dependent comes up after what it depends on, in the run that restarts both).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.backoff import BackoffPolicy, describe_wait
from reconciler.daemon.journal import Crash, Journal
from reconciler.desired import DesiredState
from reconciler.observed import ObservedState, Workload, WorkloadId
from reconciler.plan.model import Plan
from reconciler.policy import ServicePolicy
from reconciler.reconcile import hold_actions


@dataclass(frozen=True, slots=True)
class Supervised:
    plan: Plan
    """The plan to run now: held restarts (and what waits for them) taken out, their
    reasons in the notes."""
    held: dict[str, Crash]
    """Replicas not restarted now, by target."""
    wake_at: float | None
    """When the earliest held restart is due (a reconcile should run then)."""
    stop: tuple[WorkloadId, ...] = ()
    """Unhealthy replicas whose on_panic is ``shutdown``: stop them."""


FAILED = "failed"
"""The hold of a replica whose crash loop went past ``[backoff] give_up_after``."""


class Supervisor:
    def __init__(
        self,
        journal: Journal,
        policy: BackoffPolicy,
        *,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``monotonic``: the clock that counts the waits (default: :func:`time.monotonic`
        beside the wall clock :func:`time.time`; a test's own clock alone serves as
        both)."""
        self.journal = journal
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._due: dict[str, float] = {}
        """Per target, when its held restart comes due on :attr:`monotonic` (crashes
        this process recorded): a wall clock that jumps then neither makes the restart
        wait hours nor come at once. A crash from the journal (an earlier daemon) has
        its wall-clock time only, clamped to the longest wait the policy can give."""

    def crash_of(self, workload: Workload, health_problem: str | None) -> str | None:
        """Why ``workload`` counts as crashed, or None."""
        if workload.replica is None or workload.completed or workload.stopped_by_reboot:
            return None  # finished, or stopped with the host: no crash
        if workload.status in ("exited", "dead"):
            return workload.ended
        if health_problem is not None and workload.status == "running":
            return health_problem
        return None

    def supervise(
        self,
        plan: Plan,
        desired: DesiredState,
        observed: ObservedState,
        unhealthy: Mapping[WorkloadId, str],
    ) -> Supervised:
        now = self.clock()
        by_id = {w.id: w for w in observed.workloads}
        held: dict[str, Crash] = {}
        dropped: dict[str, str] = {}
        stop: list[WorkloadId] = []
        wake: float | None = None
        for action in plan.actions:
            if action.kind != "restart":
                continue
            workload = by_id.get(action.target)
            service = desired.services.get((action.target.deployment, action.target.service))
            if workload is None or service is None:
                continue
            why = self.crash_of(workload, unhealthy.get(action.target))
            policy, kind = service.policy, "crashed"
            if why is None and workload.completed and policy.restarts_completed:
                # restart_policy always: a completion is restarted too, through the
                # backoff (a service that exits 0 at once must not spin), but it is no
                # crash and errors.on_panic does not apply to it.
                why, kind = "completed (exited with status 0)", "exited"
                policy = dataclasses.replace(policy, on_panic="restart")
            if why is None:
                continue
            crash = self._record(workload, why, policy, now, kind)
            if crash.held is not None:
                held[str(action.target)] = crash
                dropped[action.id] = crash.describe(now)
                if crash.held == "shutdown" and workload.status == "running":
                    stop.append(action.target)
                continue
            remaining = self._remaining(str(action.target), crash, policy, now)
            if remaining > 0:
                held[str(action.target)] = crash
                dropped[action.id] = crash.describe(now)
                due = now + remaining
                wake = due if wake is None else min(wake, due)
                continue
            self._due.pop(str(action.target), None)
            self.journal.count_restart(str(action.target), now)
        self._end_streaks(observed, unhealthy, now)
        return Supervised(hold_actions(plan, dropped), held, wake, tuple(stop))

    def _remaining(self, target: str, crash: Crash, service: ServicePolicy, now: float) -> float:
        """Seconds until ``crash``'s held restart is due (0: now)."""
        if crash.next_at is None:
            return 0.0
        if target in self._due:
            return max(0.0, self._due[target] - self.monotonic())
        longest = max(self.policy.cap * (1 + self.policy.jitter), service.restart_delay or 0.0)
        return min(max(0.0, crash.next_at - now), longest)

    def _record(
        self, workload: Workload, why: str, service: ServicePolicy, now: float, kind: str
    ) -> Crash:
        target = str(workload.id)
        current = self.journal.crash(target)
        # One crash per run of the replica: the runtime's id, and the restarts the
        # daemon made so far, name the run; the same exited run seen again by a later
        # reconcile is the same crash.
        instance = (
            f"{workload.runtime_id}|{workload.fingerprint}|{current.restarts if current else 0}"
        )
        if current is not None and current.last_instance == instance:
            return current
        streak = (current.streak if current else 0) + 1
        on_panic = service.on_panic
        held = None if on_panic == "restart" else on_panic
        limit, limit_key = self.policy.give_up_after, "[backoff] give_up_after"
        if service.max_attempts is not None:
            limit, limit_key = service.max_attempts, "restart_policy.max_attempts"
        if held is None and limit and streak > limit:
            held = FAILED
        delay = max(self.policy.delay(streak, self.rng()), service.restart_delay or 0.0)
        next_at = None if held else now + delay
        if next_at is not None:
            self._due[target] = self.monotonic() + delay
        else:
            self._due.pop(target, None)
        crash = self.journal.record_crash(
            target,
            instance=instance,
            exit_code=workload.exit_code,
            at=now,
            next_at=next_at,
            held=held,
        )
        if held == FAILED:
            message = (
                f"{why}; failed: gave up after {limit} restarts in a row ({limit_key}); "
                "a new revision or zlayer daemon retry starts it again"
            )
        elif held:
            message = f"{why}; not restarted (errors.on_panic: {held})"
        else:
            wait = describe_wait((next_at or now) - now)
            message = f"{why}; restart {crash.streak} of this crash loop in {wait}"
        self.journal.event(target, kind, message, now)
        return crash

    def _end_streaks(
        self, observed: ObservedState, unhealthy: Mapping[WorkloadId, str], now: float
    ) -> None:
        """A replica running (and not failing its check) ``reset_after`` seconds since
        its last restart ends its streak: its next crash waits the initial delay."""
        crashes = self.journal.crashes()
        if not crashes:
            return
        for workload in observed.workloads:
            crash = crashes.get(str(workload.id))
            if crash is None or crash.streak == 0 or crash.held is not None:
                continue
            since = crash.restarted_at or crash.crashed_at
            if (
                workload.status == "running"
                and workload.id not in unhealthy
                and since is not None
                and now - since >= self.policy.reset_after
            ):
                self.journal.end_streak(str(workload.id))
                self.journal.event(
                    str(workload.id),
                    "recovered",
                    f"running for {describe_wait(now - since)} since its last restart;"
                    " crash backoff reset",
                    now,
                )
