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
import base64
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.daemon.api import ApiConfig, ApiServer, start_api
from reconciler.daemon.cron import Cron
from reconciler.daemon.health import HealthMonitor
from reconciler.daemon.jobs import Runs
from reconciler.daemon.journal import Journal
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.notify import Notifier
from reconciler.daemon.supervise import Supervisor
from reconciler.desired import CompileInputs, DesiredState, compile_specs
from reconciler.drivers.base import Driver
from reconciler.errors import DriverError, ZlayerError
from reconciler.executor import Event, Report, execute
from reconciler.executor import Settings as ExecutorSettings
from reconciler.lock import ApplyLock, LockHeld
from reconciler.observed import ObservedState, RunId, WorkloadId
from reconciler.plan.model import Note, Plan
from reconciler.plan.planner import plan_changes
from reconciler.plan.serialize import plan_to_dict
from reconciler.runtimes import check_runtime, limits_message, open_runtime
from reconciler.settings import ConfigError, Settings, load_settings
from reconciler.sources.base import Source
from reconciler.sources.files import Collected
from reconciler.spec.load import LoadedSpec, SourceFile, iter_sources
from reconciler.spec.problems import Problem
from reconciler.statedir import SecretsDir, ensure_secret_key
from reconciler.waits import wait_event

log = logging.getLogger("reconciler.daemon")

LOCK_RETRY = 5.0
"""Seconds before trying again when a manual ``zlayer apply`` holds the host's lock."""
RUN_POLL = 2.0
"""Seconds between checks of running jobs (an exit hint checks at once)."""
MAX_REASONS = 20


@dataclass(frozen=True, slots=True)
class Choice:
    """What a reconcile applies: ``desired`` (None: nothing good to apply yet)."""

    desired: DesiredState | None
    candidate: str | None
    """The candidate revision, when ``desired`` is it (not the last good one)."""
    files: tuple[SourceFile, ...] = ()
    note: str = ""


def compile_files(
    files: Collected, revision: str, inputs: CompileInputs
) -> tuple[DesiredState | None, list[Problem]]:
    """Load, validate and compile spec files; every problem, with file:line:col."""
    problems = list(files.problems)

    def loaded() -> Iterator[LoadedSpec]:
        for spec, found in iter_sources(files.files):
            problems.extend(found)
            if spec is not None:
                yield spec

    desired, found = compile_specs(loaded(), revision, inputs)
    if problems:
        return None, problems
    if not files.files:
        return None, [Problem("(source)", None, "", "no spec files")]
    return desired, found


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
        self.journal = Journal.in_state_dir(state_dir, settings.daemon.journal_retention)
        self.supervisor = Supervisor(self.journal, settings.backoff, clock=clock, rng=rng)
        self.cron = Cron(self.journal, clock)
        self.notifier = Notifier()
        self.inputs = CompileInputs(
            env=dict(os.environ),
            secret_key=ensure_secret_key(state_dir),
            secret=SecretsDir(state_dir / "secrets"),
        )
        self.driver: Driver | None = None
        self.monitor: HealthMonitor | None = None
        self.runs: Runs | None = None
        self.applied: DesiredState | None = None
        self._good_files: tuple[SourceFile, ...] = ()
        """The spec files of :attr:`applied`, to compile it again as a fallback."""
        self._states: dict[str, int] = {}
        """Workloads by status, as last observed (for metrics)."""
        self.api: ApiServer | None = None
        self.applied_at: float | None = None
        self.last: dict[str, Any] | None = None
        self.problem: str | None = None
        """Why the candidate revision is not what runs (invalid, refused, bad)."""
        self.reconciling_since: float | None = None
        self.stopping = asyncio.Event()
        self._reasons: list[str] = []
        self._wake = asyncio.Event()
        self._runs_wake = asyncio.Event()
        self._cron_wake = asyncio.Event()
        self._backoff_timer: asyncio.TimerHandle | None = None
        self._counters = {"errors": 0, "webhooks": 0}
        self._marked: set[str] = set()

    # --- triggers -------------------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        if self.stopping.is_set():
            return
        if len(self._reasons) < MAX_REASONS and reason not in self._reasons:
            self._reasons.append(reason)
        self._wake.set()

    def request_reconcile(self, reason: str) -> None:
        self.trigger(reason)

    def request_fetch(self, reason: str) -> None:
        self._counters["webhooks"] += 1
        self.journal.event("source", "webhook", reason, self.clock())
        self.source.request_fetch()

    def retry(self) -> dict[str, Any]:
        cleared = self.journal.clear_marks("bad")
        released = self.journal.release_held()
        self._marked.clear()
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
            loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            async with open_runtime(self.runtime, self.settings) as driver:
                self.driver = driver
                self.runs = Runs(driver, self.journal, self.inputs, clock=self.clock)
                self.monitor = HealthMonitor(
                    driver, self.journal, self._unhealthy, clock=self.clock
                )
                self._restore_good()
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
        api = self.api = await start_api(self, self._api_config())
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
        ]
        self.trigger("daemon started")
        try:
            while not self.stopping.is_set():
                await wait_event(self._wake, None)
                if self.stopping.is_set():
                    break
                self._wake.clear()
                reasons, self._reasons = self._reasons, []
                await self.reconcile(reasons or ["wake"])
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
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
        self.settings = dataclasses.replace(
            self.settings,
            backoff=fresh.backoff,
            daemon=dataclasses.replace(
                self.settings.daemon,
                resync=fresh.daemon.resync,
                journal_retention=fresh.daemon.journal_retention,
            ),
        )
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
            alive, _ = self.health()
            if alive:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _cron(self) -> None:
        assert self.runs is not None
        while True:
            desired = self.applied
            wake = self.cron.next_wake(desired) if desired else None
            self._cron_wake.clear()
            timeout = None if wake is None else max(0.0, wake - self.clock())
            await wait_event(self._cron_wake, timeout)
            if self.applied is None or self.stopping.is_set():
                continue
            for service, trigger in self.cron.due(self.applied):
                await self.runs.start(self.applied, service, trigger, overlap=False)
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
        trigger = "; ".join(reasons)[:1000]
        rid = self.journal.start_reconcile(trigger, now)
        self.reconciling_since = now
        outcome, summary = "error", ""
        plan_doc: dict[str, Any] | None = None
        outcomes: list[dict[str, Any]] | None = None
        revision: str | None = None
        try:
            choice = await self._choose()
            if choice.desired is None:
                outcome, summary = "waiting", choice.note
            else:
                revision = choice.desired.revision
                outcome, summary, plan_doc, outcomes = await self._apply(choice)
        except (ZlayerError, OSError) as exc:
            outcome, summary = "error", f"{type(exc).__name__}: {exc}"
            self._counters["errors"] += 1
            log.error("reconcile failed: %s", self.journal.scrub(summary))
        finally:
            self.reconciling_since = None
        finished = self.clock()
        self.journal.finish_reconcile(
            rid,
            at=finished,
            revision=revision,
            outcome=outcome,
            summary=summary,
            plan=plan_doc,
            outcomes=outcomes,
        )
        self.last = {
            "id": rid,
            "trigger": trigger,
            "outcome": outcome,
            "summary": summary,
            "revision": revision,
            "finished": finished,
            "duration": round(finished - now, 3),
        }
        self.notifier.status(self._status_line())
        self._cron_wake.set()
        return outcome

    async def _apply(
        self, choice: Choice
    ) -> tuple[str, str, dict[str, Any] | None, list[dict[str, Any]] | None]:
        assert self.driver is not None and self.monitor is not None
        desired = choice.desired
        assert desired is not None
        self.journal.scrub = desired.scrubber()
        lock = ApplyLock(self.state_dir)
        try:
            lock.acquire()
        except LockHeld as exc:
            asyncio.get_running_loop().call_later(LOCK_RETRY, self.trigger, "apply lock free?")
            return "skipped", str(exc), None, None
        try:
            observed = await self.driver.observe()
            self._count(observed)
            unhealthy = self.monitor.unhealthy
            supervised = self.supervisor.supervise(
                plan_changes(desired, _with_problems(observed, unhealthy), prune=True),
                desired,
                observed,
                unhealthy,
            )
            self._schedule_backoff(supervised.wake_at)
            for target in supervised.stop:
                with contextlib.suppress(DriverError):
                    await self.driver.stop(target)
                self.journal.event(
                    str(target), "stopped", "errors.on_panic: shutdown", self.clock()
                )
            plan = supervised.plan
            plan_doc = plan_to_dict(plan, f"the {self.driver.name} runtime")
            if plan.empty:
                self.monitor.update(desired, observed)
                self._good(choice)
                return "no-changes", _held_summary(supervised.held, self.clock()), plan_doc, None
            for action in plan.actions:
                if action.kind in ("restart", "replace", "create"):
                    self.monitor.forget(action.target)
            report = await execute(
                plan,
                self.driver,
                desired,
                observed,
                inputs=self.inputs,
                settings=ExecutorSettings(),
                on_event=self._on_event,
            )
            after = await self.driver.observe()
            self._count(after)
            self.monitor.update(desired, after)
        finally:
            lock.release()
        outcomes = [dataclasses.asdict(o) for o in report.outcomes]
        return (*self._judge(choice, report), plan_doc, outcomes)

    def _count(self, observed: ObservedState) -> None:
        states: dict[str, int] = {}
        for workload in observed.workloads:
            states[workload.status] = states.get(workload.status, 0) + 1
        self._states = states

    def _judge(self, choice: Choice, report: Report) -> tuple[str, str]:
        counts = report.counts()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        rolled = [o for o in report.outcomes if o.status == "rolled_back"]
        if rolled and choice.candidate is not None:
            why = f"rollout failed and was rolled back: {rolled[0].message}"
            self.journal.mark_revision(choice.candidate, "bad", why, self.clock())
            self.journal.event(
                "source", "revision-bad", f"{choice.candidate[:19]}: {why}", self.clock()
            )
            self.problem = f"revision {choice.candidate[:19]} is marked bad: {why}"
            self.trigger("back to the last good revision")
            return "rolled-back", summary
        if not report.ok:
            return "failed", summary
        self._good(choice)
        return "applied", summary

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

    # --- choosing the revision --------------------------------------------------------------

    async def _choose(self) -> Choice:
        good = self.journal.get("good")
        applied = good["revision"] if good and good.get("source") == self.source.identity else None
        candidate = await self.source.load(applied)
        if candidate is None:
            return self._fallback("the source has no revision yet (see source status)")
        if applied is not None and candidate.revision == applied and self.applied is not None:
            desired, problems = compile_files(candidate.files, candidate.revision, self.inputs)
            if desired is not None:
                self.problem = None
                return Choice(desired, candidate.revision, candidate.files.files)
        refusal = candidate.refused or self._bad(candidate.revision)
        if refusal is not None:
            self._mark(candidate.revision, "refused" if candidate.refused else "bad", refusal)
            return self._fallback(refusal)
        desired, problems = compile_files(candidate.files, candidate.revision, self.inputs)
        if desired is None:
            listing = "\n".join(p.render() for p in problems[:50])
            why = f"revision {candidate.revision[:19]} is not valid:\n{listing}"
            self._mark(candidate.revision, "invalid", why)
            return self._fallback(why)
        assert self.driver is not None
        checked, errors = check_runtime(self.driver, desired)
        if errors:
            why = f"revision {candidate.revision[:19]}: " + limits_message(
                self.driver.name, errors, "applied"
            )
            self._mark(candidate.revision, "invalid", why)
            return self._fallback(why)
        self.problem = None
        return Choice(checked, candidate.revision, candidate.files.files)

    def _bad(self, revision: str) -> str | None:
        mark = self.journal.revision_mark(revision)
        if mark is not None and mark[0] == "bad":
            return (
                f"revision {revision[:19]} is marked bad ({mark[1]}); waiting for a new"
                " revision or `zlayer daemon retry`"
            )
        return None

    def _mark(self, revision: str, state: str, reason: str) -> None:
        self.problem = reason
        if revision in self._marked:
            return
        self._marked.add(revision)
        if state != "bad":
            self.journal.mark_revision(revision, state, reason, self.clock())
        self.journal.event("source", f"revision-{state}", reason, self.clock())
        log.warning("%s", self.journal.scrub(reason))

    def _fallback(self, why: str) -> Choice:
        """The last good revision (as compiled now), when the candidate cannot be used."""
        if self.applied is None:
            return Choice(None, None, note=f"{why}; no good revision to keep running")
        desired, problems = compile_files(
            Collected(self._good_files, ()), self.applied.revision, self.inputs
        )
        if desired is None:
            rendered = "; ".join(p.render() for p in problems[:5])
            return Choice(None, None, note=f"{why}; the last good revision fails now: {rendered}")
        assert self.driver is not None
        checked, _ = check_runtime(self.driver, desired)
        return Choice(checked, None, self._good_files, note=why)

    def _good(self, choice: Choice) -> None:
        """``choice`` ran through: it is the last good revision (kept in the journal, spec
        files included, so a restarted daemon can keep running it whatever the source)."""
        assert choice.desired is not None
        revision = choice.desired.revision
        if self.applied is None or self.applied.revision != revision:
            self.applied_at = self.clock()
            self.journal.put(
                "good",
                {
                    "revision": revision,
                    "source": self.source.identity,
                    "applied_at": self.applied_at,
                    "files": [[f.name, base64.b64encode(f.data).decode()] for f in choice.files],
                },
            )
            self.journal.event("source", "applied", f"revision {revision[:19]}", self.applied_at)
        self.applied = choice.desired
        self._good_files = choice.files

    def _restore_good(self) -> None:
        good = self.journal.get("good")
        if not good:
            return
        files = tuple(SourceFile(name, base64.b64decode(data)) for name, data in good["files"])
        desired, _ = compile_files(Collected(files, ()), good["revision"], self.inputs)
        if desired is not None:
            self.applied, self._good_files = desired, files
            self.applied_at = good.get("applied_at")

    # --- what the API shows ------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if self.reconciling_since is not None and self.clock() - self.reconciling_since > 1800:
            return False, "a reconcile has been running for more than 30 minutes"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self.applied is None:
            return False, self.problem or "no revision applied yet"
        if self.last is None:
            return False, "no reconcile finished yet"
        return True, f"revision {self.applied.revision[:19]} applied"

    def _status_line(self) -> str:
        if self.last is None:
            return "starting"
        revision = self.applied.revision[:12] if self.applied else "none"
        return (
            f"revision {revision}; last reconcile {self.last['outcome']}: {self.last['summary']}"[
                :200
            ]
        )

    def status(self) -> dict[str, Any]:
        now = self.clock()
        crashes = self.journal.crashes()
        return {
            "daemon": {"pid": os.getpid(), "started": self.started_at, "runtime": self.runtime},
            "source": self.source.status(),
            "applied": {
                "revision": self.applied.revision if self.applied else None,
                "applied_at": self.applied_at,
            },
            "problem": self.problem,
            "last_reconcile": self.last,
            "reconciling": self.reconciling_since is not None,
            "crash_loops": {t: c.describe(now) for t, c in crashes.items() if c.streak or c.held},
            "health": {str(t): v for t, v in self.monitor.verdicts().items()}
            if self.monitor
            else {},
            "jobs": [r.as_json() for r in self.journal.runs(limit=10)],
        }

    async def observed(self) -> dict[str, Any]:
        assert self.driver is not None
        state = await self.driver.observe()
        return json.loads(state.model_dump_json())  # type: ignore[no-any-return]

    async def plan(self) -> dict[str, Any]:
        assert self.driver is not None and self.monitor is not None
        choice = await self._choose()
        if choice.desired is None:
            return {"error": choice.note}
        observed = await self.driver.observe()
        plan = plan_changes(choice.desired, _with_problems(observed, self.monitor.unhealthy))
        plan = self._notes(plan)
        return plan_to_dict(plan, f"the {self.driver.name} runtime")

    def _notes(self, plan: Plan) -> Plan:
        return crash_notes(plan, self.journal, self.clock())

    def metrics(self) -> Metrics:
        totals = self.journal.reconcile_totals()
        crashes = self.journal.crashes()
        return Metrics(
            reconciles=dict(totals["by_outcome"]),
            reconcile_duration_sum=float(totals["duration_sum"]),
            reconcile_duration_count=int(totals["count"]),
            reconcile_errors=int(totals["by_outcome"].get("error", 0)),
            workloads=dict(self._states),
            restarts=sum(c.restarts for c in crashes.values()),
            applied_revision=self.applied.revision if self.applied else None,
            applied_at=self.applied_at,
            job_runs=self.journal.run_totals(),
            webhooks_accepted=self._counters["webhooks"],
            webhooks_rejected=self.api.rejected if self.api else 0,
            started_at=self.started_at,
        )

    async def run_job(self, deployment: str, service: str, trigger: str) -> dict[str, Any]:
        assert self.runs is not None
        desired = self.applied
        found = desired.services.get((deployment, service)) if desired else None
        if desired is None or found is None:
            raise KeyError(f"{deployment}/{service}")
        if found.rtype not in ("job", "cron"):
            raise ValueError(f"{deployment}/{service} is a {found.rtype}, not a job")
        run, state = await self.runs.start(desired, found, trigger)
        self._runs_wake.set()
        return {"run": run, "status": state}

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return [r.as_json() for r in self.journal.runs(limit=limit)]


def crash_notes(plan: Plan, journal: Journal, now: float) -> Plan:
    """``plan`` with a note for each of its restarts that belongs to a crash loop
    (for ``zlayer plan`` and ``/v1/plan``: what the daemon's backoff will do)."""
    crashes = journal.crashes()
    notes = [
        Note(str(a.target), crashes[str(a.target)].describe(now))
        for a in plan.actions
        if a.kind == "restart" and str(a.target) in crashes and crashes[str(a.target)].streak
    ]
    return dataclasses.replace(plan, notes=(*plan.notes, *notes)) if notes else plan


def _with_problems(observed: ObservedState, unhealthy: dict[WorkloadId, str]) -> ObservedState:
    """Unhealthy running replicas carry their failing check as a problem: the planner
    restarts them, the supervisor counts the crash."""
    if not unhealthy:
        return observed
    workloads = tuple(
        w.model_copy(update={"problem": unhealthy[w.id]})
        if w.id in unhealthy and w.status == "running"
        else w
        for w in observed.workloads
    )
    return observed.model_copy(update={"workloads": workloads})


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
