"""The daemon: one reconcile at a time, triggered by everything that can change the host.

Triggers — the source changed, a webhook, the resync timer, a workload exited, a
crash backoff came due, an operator asked — append a reason and set one event.
The loop takes all reasons at once, so triggers that arrive during a reconcile
coalesce into a single follow-up run. Each run: load the source's candidate
revision → pick what to apply (the candidate, or the last good revision when
the candidate is invalid, refused or marked bad) → observe → plan → supervise
(crash backoff) → apply → journal.

The daemon never owns the workloads' lifetime: it does not stop them when it
stops, and a new daemon re-adopts them from the runtime (labels, records) —
nothing is restarted unless the plan says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import reconcile as pipeline
from reconciler.daemon.api import ApiConfig, ApiServer, start_api
from reconciler.daemon.autoscale import Autoscaler
from reconciler.daemon.cron import Cron
from reconciler.daemon.health import HealthMonitor
from reconciler.daemon.jobs import Runs
from reconciler.daemon.journal import Journal
from reconciler.daemon.notify import Notifier
from reconciler.daemon.revisions import Choice, Revisions
from reconciler.daemon.supervise import Supervisor
from reconciler.daemon.views import Views
from reconciler.desired import DesiredState
from reconciler.drivers.base import Driver
from reconciler.errors import (
    ConfigError,
    DriverError,
    LockHeld,
    ProxyError,
    RuntimeUnreachable,
    ZlayerError,
)
from reconciler.executor import Event
from reconciler.lock import ApplyLock
from reconciler.observed import ObservedState, RunId, WorkloadId
from reconciler.plan.model import Plan
from reconciler.plan.serialize import plan_to_dict
from reconciler.removals import Removals
from reconciler.routing.control import RouteSync
from reconciler.routing.host import HostRoutes
from reconciler.runtimes import open_runtime
from reconciler.scale_counts import ScaleCounts
from reconciler.settings import Settings, load_settings
from reconciler.sources.base import Source
from reconciler.waits import wait_event

log = logging.getLogger("reconciler.daemon")

LOCK_RETRY = 5.0
"""Seconds before trying again when a manual ``zlayer apply`` holds the host's lock."""
RUN_POLL = 2.0
"""Seconds between checks of running jobs (an exit hint checks at once)."""
MAX_REASONS = 20


STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


def handle_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[str], None], reload: Callable[[], None]
) -> None:
    """SIGTERM and SIGINT stop the daemon, SIGHUP reloads its config.

    asyncio hands a signal to the loop by writing its number to a wakeup socket,
    and a forked child inherits that socket with the handlers. pyroute2 forks a
    helper to enter a network namespace and ends it with SIGTERM: without
    :func:`_own_signals` in the child, the helper's SIGTERM reached this loop as
    the daemon's own and stopped the daemon."""
    for signum, name in STOP_SIGNALS.items():
        loop.add_signal_handler(signum, stop, name)
    loop.add_signal_handler(signal.SIGHUP, reload)
    os.register_at_fork(after_in_child=_own_signals)


def _own_signals() -> None:
    """In a forked child: signals are its own again (default handlers, and no
    wakeup socket shared with the daemon's loop)."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to undo
        signal.set_wakeup_fd(-1)
    for signum in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


CRON_RECHECK = 30.0
"""Seconds after which the cron task looks at the clock again, however far its next
fire time is (a wall clock set forward must not leave a fire time waiting hours)."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        runtime: str,
        source: Source,
        *,
        state_dir: Path,
        once: bool = False,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.source = source
        self.state_dir = state_dir
        self.once = once
        self.clock = clock
        self.rng = rng
        self.started_at = clock()
        self.journal = Journal.in_state_dir(
            state_dir, settings.daemon.journal_retention, recover=True
        )
        if self.journal.moved_aside is not None:
            self.journal.event(
                "daemon", "journal-recovered",
                f"the journal was damaged: moved aside to {self.journal.moved_aside.name}, "
                "a new one started (history, crash counters and the last good revision "
                "start over; the workloads are observed from the runtime)",
                clock(),
            )  # fmt: skip
        self.supervisor = Supervisor(self.journal, settings.backoff, clock=clock, rng=rng)
        self.cron = Cron(self.journal, clock)
        self.autoscaler = Autoscaler(self.journal, clock, settings.autoscale_interval)
        self.applied: DesiredState | None = None
        """The specs last applied, as compiled (the autoscaler samples their services)."""
        self.notifier = Notifier()
        self.inputs = pipeline.compile_inputs(state_dir, None, "apply")
        self.revisions = Revisions(self.journal, source, self.inputs, clock, state_dir)
        self.views = Views(self)
        self.driver: Driver | None = None
        self.monitor: HealthMonitor | None = None
        self.runs: Runs | None = None
        self.workload_states: dict[str, int] = {}
        """Workloads by status, as last observed (for metrics)."""
        self.api: ApiServer | None = None
        self.last: dict[str, Any] | None = None
        self.reconciling_since: float | None = None
        self.unreachable: tuple[float, str] | None = None
        """Since when and why the runtime's engine has not answered (None: it answers)."""
        self.stopping = asyncio.Event()
        self._reasons: list[str] = []
        self._wake = asyncio.Event()
        self._runs_wake = asyncio.Event()
        self._cron_wake = asyncio.Event()
        self._backoff_timer: asyncio.TimerHandle | None = None
        self.counters = {"errors": 0, "webhooks": 0}

    # --- triggers -------------------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        if self.stopping.is_set():
            return
        if len(self._reasons) < MAX_REASONS and reason not in self._reasons:
            self._reasons.append(reason)
        self._wake.set()

    def request_fetch(self, reason: str) -> None:
        self.counters["webhooks"] += 1
        self.journal.event("source", "webhook", reason, self.clock())
        self.source.request_fetch()

    def retry(self) -> dict[str, Any]:
        cleared = self.revisions.forget_marks()
        released = self.journal.release_held()
        self.journal.event(
            "daemon", "retry", f"{cleared} bad revision mark(s), {len(released)} held", self.clock()
        )
        self.trigger("operator: retry")
        return {"cleared_bad_revisions": cleared, "released": released}

    # --- running --------------------------------------------------------------------------

    async def run(self) -> int:
        """Until SIGTERM (or one cycle with ``once``); the exit status."""
        loop = asyncio.get_running_loop()
        if not self.once:
            handle_signals(loop, self.stop, self.reload)
        try:
            async with open_runtime(self.runtime, self.settings) as driver:
                self.driver = driver
                self.runs = Runs(driver, self.journal, self.inputs, clock=self.clock)
                self.monitor = HealthMonitor(
                    driver, self.journal, self._unhealthy, clock=self.clock
                )
                self.revisions.restore()
                await self.runs.adopt()
                if self.once:
                    outcome = await self.reconcile(["once"])
                    return 0 if outcome in ("applied", "no-changes") else 1
                return await self._serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.journal.close()

    async def _serve(self) -> int:
        assert self.monitor is not None
        api = self.api = await start_api(self.views, self._api_config())
        self.journal.event(
            "daemon", "started", f"pid {os.getpid()}, {self.source.identity}", self.clock()
        )
        self.notifier.ready()
        tasks = [
            asyncio.create_task(self.source.follow(self.trigger, self.stopping), name="source"),
            asyncio.create_task(self._resync(), name="resync"),
            asyncio.create_task(self._exit_hints(), name="exits"),
            asyncio.create_task(self.monitor.run(), name="health"),
            asyncio.create_task(self._cron(), name="cron"),
            asyncio.create_task(self._watch_runs(), name="runs"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._autoscale(), name="autoscale"),
        ]
        for task in tasks:
            task.add_done_callback(lambda _task: self._wake.set())
        self.trigger("daemon started")
        try:
            while not self.stopping.is_set():
                await wait_event(self._wake, None)
                if self.stopping.is_set():
                    break
                self._wake.clear()
                if (failed := _failed_task(tasks)) is not None:
                    return self._task_failed(*failed)
                reasons, self._reasons = self._reasons, []
                if reasons:  # else only a task of its own ended, as some may
                    await self.reconcile(reasons)
        finally:
            self.notifier.stopping()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api.close()
            if self._backoff_timer is not None:
                self._backoff_timer.cancel()
            self.journal.event("daemon", "stopped", "workloads left running", self.clock())
        return 0

    def _task_failed(self, name: str, why: str) -> int:
        """One of the daemon's own tasks ended: one log line, a journal event and
        systemd's STATUS= say which and why; the exit status is :data:`TASK_FAILED`
        (workloads keep running; systemd's ``Restart=on-failure`` starts it again)."""
        message = self.journal.scrub(
            f"the daemon's {name} task stopped: {why}; exiting ({TASK_FAILED})"
        )
        log.error("%s", message)
        self.journal.event("daemon", "failed", message, self.clock())
        self.notifier.status(f"failed: {message}")
        return TASK_FAILED

    def stop(self, why: str = "stop") -> None:
        """Stop taking triggers; the reconcile under way finishes; workloads stay."""
        log.info("%s: stopping after the current reconcile; workloads keep running", why)
        self.stopping.set()
        self._wake.set()

    def reload(self) -> None:
        """SIGHUP: read the config file again (backoff, resync, journal retention)."""
        try:
            fresh = load_settings()
        except ConfigError as exc:
            self.journal.event("daemon", "reload-failed", str(exc), self.clock())
            return
        self.notifier.reloading()
        daemon = dataclasses.replace(
            self.settings.daemon,
            resync=fresh.daemon.resync,
            journal_retention=fresh.daemon.journal_retention,
        )
        self.settings = dataclasses.replace(self.settings, backoff=fresh.backoff, daemon=daemon)
        self.supervisor.policy = fresh.backoff
        self.journal.retention = fresh.daemon.journal_retention * 86400
        self.journal.event("daemon", "reloaded", f"settings from {fresh.source}", self.clock())
        self.notifier.ready()
        self.trigger("configuration reloaded")

    def _api_config(self) -> ApiConfig:
        daemon = self.settings.daemon
        listen = None
        if daemon.listen:
            host, _, port = daemon.listen.rpartition(":")
            listen = (host.strip("[]") or "127.0.0.1", int(port))
        return ApiConfig(
            socket_path=daemon.socket or self.state_dir / "zlayer.sock",
            listen=listen,
            token=_read_secret(daemon.token_file),
            webhook_secret=(
                s.encode() if (s := _read_secret(daemon.webhook_secret_file)) else None
            ),
        )

    # --- background tasks -----------------------------------------------------------------

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.daemon.resync)
            self.trigger("resync")

    async def _autoscale(self) -> None:
        """Sample the adaptive services every ``[autoscale] interval``; a changed count
        wakes a reconcile. A runtime that does not answer is retried next interval."""
        assert self.driver is not None
        while True:
            await asyncio.sleep(self.autoscaler.interval)
            desired = self.applied
            if desired is None or not any(s.policy.scale for s in desired.services.values()):
                continue
            try:
                observed = await self.driver.observe(sorted(desired.deployments))
                requests = await self._requests()
                changes = await self.autoscaler.sample(self.driver, desired, observed, requests)
            except DriverError as exc:
                log.warning("autoscale sample: %s; trying again next interval", exc)
                continue
            if changes:
                self.trigger("autoscale: " + "; ".join(changes))

    async def _requests(self) -> dict[tuple[str, str], int]:
        """Requests the managed proxy sent each routed service, as HAProxy counts them
        (none when no proxy runs)."""
        routes = HostRoutes.of(self.state_dir, self.settings.publish_address)
        try:
            stats = await routes.stats()
        except ProxyError:
            return {}
        totals: dict[tuple[str, str], int] = {}
        for stat in stats:
            if stat.replica is not None:
                key = (stat.deployment, stat.service)
                totals[key] = totals.get(key, 0) + stat.requests
        return totals

    async def _exit_hints(self) -> None:
        assert self.driver is not None
        while True:
            try:
                async for stopped in self.driver.exits():
                    if isinstance(stopped, RunId):
                        self._runs_wake.set()
                    else:
                        self.trigger(f"{stopped} exited")
            except DriverError as exc:
                log.warning("runtime event stream: %s; relying on resync", exc)
            await asyncio.sleep(5)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            alive, _ = self.views.health()
            if alive:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _cron(self) -> None:
        assert self.runs is not None
        while True:
            desired = self.revisions.applied
            wake = self.cron.next_wake(desired) if desired else None
            self._cron_wake.clear()
            timeout = None if wake is None else max(0.0, wake - self.clock())
            # Fire times are wall-clock times, and the wait is not: looked at again at
            # least every CRON_RECHECK seconds, a clock set forward is noticed then.
            await wait_event(self._cron_wake, min(timeout, CRON_RECHECK) if timeout else timeout)
            applied = self.revisions.applied
            if applied is None or self.stopping.is_set():
                continue
            for service, trigger in self.cron.due(applied):
                await self.runs.start(applied, service, trigger, overlap=False)
                self._runs_wake.set()

    async def _watch_runs(self) -> None:
        assert self.runs is not None
        while True:
            self._runs_wake.clear()
            if self.runs.active:
                with contextlib.suppress(DriverError):
                    await self.runs.poll()
            await wait_event(self._runs_wake, RUN_POLL if self.runs.active else None)

    def _unhealthy(self, target: WorkloadId, problem: str) -> None:
        self.trigger(f"{target} unhealthy")

    # --- one reconcile --------------------------------------------------------------------

    async def reconcile(self, reasons: list[str]) -> str:
        assert self.driver is not None and self.monitor is not None
        now = self.clock()
        began = time.monotonic()  # the duration, whatever the wall clock does meanwhile
        trigger = "; ".join(reasons)[:1000]
        rid = self.journal.start_reconcile(trigger, now)
        self.reconciling_since = now
        outcome, summary = "error", ""
        plan_doc: dict[str, Any] | None = None
        outcomes: list[dict[str, Any]] | None = None
        revision: str | None = None
        try:
            choice = await self.revisions.choose(self.driver)
            if choice.desired is None:
                outcome, summary = "waiting", choice.note
            else:
                revision = choice.desired.revision
                outcome, summary, plan_doc, outcomes = await self._apply(choice)
        except RuntimeUnreachable as exc:
            outcome, summary = "runtime-unreachable", str(exc)
            self._unreachable(summary, now)
        except (ZlayerError, OSError) as exc:
            outcome, summary = "error", f"{type(exc).__name__}: {exc}"
            self.counters["errors"] += 1
            log.error("reconcile failed: %s", self.journal.scrub(summary))
        finally:
            self.reconciling_since = None
        if outcome != "runtime-unreachable" and self.unreachable is not None:
            since = self.unreachable[0]
            self.unreachable = None
            message = f"the {self.runtime} runtime answers again after {self.clock() - since:.0f}s"
            log.warning("%s", message)
            self.journal.event("daemon", "runtime-reachable", message, self.clock())
        finished = self.clock()
        self.journal.finish_reconcile(
            rid,
            at=finished,
            revision=revision,
            outcome=outcome,
            summary=summary,
            plan=plan_doc,
            outcomes=outcomes,
            duration=time.monotonic() - began,
        )
        self.last = {
            "id": rid,
            "trigger": trigger,
            "outcome": outcome,
            "summary": summary,
            "revision": revision,
            "finished": finished,
            "duration": round(time.monotonic() - began, 3),
        }
        self.notifier.status(self.views.status_line())
        self._cron_wake.set()
        return outcome

    def _unreachable(self, error: str, now: float) -> None:
        """The runtime's engine does not answer: said once (log, journal event, status,
        ``zlayer_runtime_up 0``) until it answers again; the daemon stays up and tries
        at every trigger and resync, and never falls back to another runtime."""
        if self.unreachable is not None:
            return
        self.unreachable = (now, self.journal.scrub(error))
        message = (
            f"runtime unreachable: {error}; the workloads are the engine's until it answers "
            "again (no other runtime is tried)"
        )
        log.error("%s", self.journal.scrub(message))
        self.journal.event("daemon", "runtime-unreachable", message, now)

    def counted(self, desired: DesiredState) -> DesiredState:
        """``desired`` with the counts that are not the specs': ``zlayer scale``'s for
        manual services, the autoscaler's for adaptive ones."""
        return self.autoscaler.owned(ScaleCounts(self.state_dir).applied(desired))

    async def _apply(
        self, choice: Choice
    ) -> tuple[str, str, dict[str, Any] | None, list[dict[str, Any]] | None]:
        """Apply ``choice`` through the pipeline, supervised: crash backoff decides which
        restarts happen now, and replicas the crash policy gives up on are stopped."""
        driver, monitor = self.driver, self.monitor
        assert driver is not None and monitor is not None
        assert choice.desired is not None
        self.applied = choice.desired
        desired = self.counted(choice.desired)
        self.journal.scrub = desired.scrubber()
        unhealthy = monitor.unhealthy
        stops: list[WorkloadId] = []
        held: dict[str, Any] = {}
        routes = HostRoutes.of(self.state_dir, self.settings.publish_address)

        def make_plan(desired: Any, observed: ObservedState) -> Plan:
            self._count(observed)
            plan = pipeline.plan_for(desired, observed, unhealthy=unhealthy)
            supervised = self.supervisor.supervise(plan, desired, observed, unhealthy)
            self._schedule_backoff(supervised.wake_at)
            stops.extend(supervised.stop)
            held.update(supervised.held)
            routes.isolated = frozenset(
                _workload_id(target)
                for target, crash in self.journal.crashes().items()
                if crash.held == "isolate"
            )
            return supervised.plan

        async def review(plan: Plan) -> bool:
            for target in stops:
                with contextlib.suppress(DriverError):
                    await driver.stop(target)
                self.journal.event(
                    str(target), "stopped", "errors.on_panic: shutdown", self.clock()
                )
            for action in plan.actions:
                if action.kind in ("restart", "replace", "create"):
                    monitor.forget(action.target)
            return True

        lock = ApplyLock(self.state_dir)
        try:
            lock.acquire()
        except LockHeld as exc:
            asyncio.get_running_loop().call_later(LOCK_RETRY, self.trigger, "apply lock free?")
            return "skipped", str(exc), None, None
        try:
            done = await pipeline.run_pass(
                driver,
                desired,
                self.inputs,
                lock,
                make_plan=make_plan,
                review=review,
                on_event=self._on_event,
                observe_after=True,
                routes=routes,
                removals=Removals(self.state_dir),
            )
        finally:
            lock.release()
        for synced in done.route_syncs:
            self._journal_routes(synced)
        plan_doc = plan_to_dict(done.plan, f"the {driver.name} runtime")
        if done.report is None:
            monitor.update(desired, done.observed)
            self.revisions.good(choice)
            return "no-changes", _held_summary(held, self.clock()), plan_doc, None
        assert done.after is not None
        self._count(done.after)
        monitor.update(desired, done.after)
        outcome, summary = self.revisions.judge(choice, done.report)
        if outcome == "rolled-back":
            self.trigger("back to the last good revision")
        outcomes = [dataclasses.asdict(o) for o in done.report.outcomes]
        return outcome, summary, plan_doc, outcomes

    def _count(self, observed: ObservedState) -> None:
        states: dict[str, int] = {}
        for workload in observed.workloads:
            states[workload.status] = states.get(workload.status, 0) + 1
        self.workload_states = states

    def _journal_routes(self, routes: RouteSync | None) -> None:
        """Each change the proxy sync made, and each of its warnings, as an event."""
        if routes is None:
            return
        for change in routes.changes:
            self.journal.event("proxy", "route", change, self.clock())
        for warning in routes.warnings:
            self.journal.event("proxy", "route_warning", warning, self.clock())

    def _on_event(self, event: Event) -> None:
        if event.kind in ("failed", "rolled_back", "succeeded"):
            target = event.action.split(":", 1)[-1]
            self.journal.event(target, event.kind, f"{event.action}: {event.message}", self.clock())

    def _schedule_backoff(self, wake_at: float | None) -> None:
        """A reconcile when the earliest held restart comes due (one timer at a time)."""
        if wake_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, wake_at - self.clock())
        timer = self._backoff_timer
        if timer is not None and not timer.cancelled() and timer.when() <= loop.time() + delay:
            return
        if timer is not None:
            timer.cancel()
        self._backoff_timer = loop.call_later(delay, self._backoff_due)

    def _backoff_due(self) -> None:
        self._backoff_timer = None
        self.trigger("crash backoff due")

    async def run_job(self, deployment: str, service: str, trigger: str) -> dict[str, Any]:
        assert self.runs is not None
        desired = self.revisions.applied
        found = desired.services.get((deployment, service)) if desired else None
        if desired is None or found is None:
            raise KeyError(f"{deployment}/{service}")
        if found.rtype not in ("job", "cron"):
            raise ValueError(f"{deployment}/{service} is a {found.rtype}, not a job")
        run, state = await self.runs.start(desired, found, trigger)
        self._runs_wake.set()
        return {"run": run, "status": state}


def _held_summary(held: dict[str, Any], now: float) -> str:
    if not held:
        return "no changes"
    return "; ".join(f"{t}: {c.describe(now)}" for t, c in sorted(held.items()))


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ZlayerError(f"{path}: cannot read: {exc.strerror}") from exc


def _workload_id(target: str) -> WorkloadId:
    """``deployment/service/replica`` (as the journal names a replica) as its id."""
    deployment, service, replica = target.rsplit("/", 2)
    return WorkloadId(deployment, service, int(replica) if replica.isdigit() else None)


TASK_FAILED = 4
"""The exit status of a daemon one of whose own tasks (following the source, resync,
health checks, cron, …) ended while it was not stopping."""


MAY_RETURN = frozenset({"watchdog", "exits"})
"""Tasks that end by themselves when there is nothing for them to do (no systemd
watchdog; a runtime without an event stream)."""


def _failed_task(tasks: list[asyncio.Task[Any]]) -> tuple[str, str] | None:
    """``(name, why)`` of the first task that failed: raised, or (but for
    :data:`MAY_RETURN`) returned while the daemon still runs."""
    for task in tasks:
        if not task.done() or task.cancelled():
            continue
        error = task.exception()
        if error is None and task.get_name() in MAY_RETURN:
            continue
        why = "it returned" if error is None else (str(error) or type(error).__name__)
        return task.get_name(), why
    return None
