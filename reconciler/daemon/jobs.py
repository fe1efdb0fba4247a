"""Runs of jobs and cron services: start one, follow it to its end, record it.

A run is a run-to-completion workload of the runtime (see the driver protocol's
``run_job``): its init steps run first, on the host, as for a replica; when it
ends, the journal gets its exit code and the tail of its output, and the
runtime's copy is removed. Runs are recorded before they start, so a daemon
killed meanwhile finds them again (:meth:`Runs.adopt`).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.daemon.journal import Journal
from reconciler.desired import CompileInputs, DesiredService, DesiredState
from reconciler.drivers.base import Driver
from reconciler.errors import DriverError
from reconciler.executor import Executor, Failed
from reconciler.observed import ObservedState, RunId
from reconciler.plan.model import Action

LOG_TAIL_LINES = 200


def new_run_id(now: float) -> str:
    """``20261122t101500-3f2a9c``: sortable by start, unique enough, short (≤ 24)."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dt%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


class Runs:
    def __init__(
        self,
        driver: Driver,
        journal: Journal,
        inputs: CompileInputs,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.journal = journal
        self.inputs = inputs
        self.clock = clock
        self.active: dict[str, RunId] = {}

    def running(self, deployment: str, service: str) -> list[str]:
        return [
            r
            for r, rid in self.active.items()
            if (rid.deployment, rid.service) == (deployment, service)
        ]

    async def start(
        self, desired: DesiredState, service: DesiredService, trigger: str, *, overlap: bool = True
    ) -> tuple[str, str]:
        """Start a run of ``service``: (run id, ``running`` | ``skipped`` | ``failed``).
        With ``overlap`` false a run still going makes this one ``skipped`` (recorded)."""
        now = self.clock()
        run = new_run_id(now)
        dep, name = service.deployment, service.name
        if not overlap and (busy := self.running(dep, name)):
            note = f"run {busy[0]} is still running"
            self.journal.start_run(
                run, dep, name, trigger=trigger, revision=desired.revision, at=now,
                status="skipped", note=note,
            )  # fmt: skip
            self.journal.event(f"{dep}/{name}", "run-skipped", f"{trigger}: {note}", now)
            return run, "skipped"
        self.journal.start_run(run, dep, name, trigger=trigger, revision=desired.revision, at=now)
        self.journal.event(f"{dep}/{name}", "run-started", f"run {run} ({trigger})", now)
        problem = await self._init(desired, service, run)
        if problem is None:
            try:
                await self.driver.run_job(service, run, desired.revision)
            except DriverError as exc:
                problem = f"cannot start: {exc}"
        if problem is not None:
            self.journal.finish_run(
                run, status="failed", exit_code=None, log_tail="", at=self.clock(), note=problem
            )
            self.journal.event(f"{dep}/{name}", "run-failed", f"run {run}: {problem}", self.clock())
            return run, "failed"
        self.active[run] = RunId(dep, name, run)
        return run, "running"

    async def _init(self, desired: DesiredState, service: DesiredService, run: str) -> str | None:
        if not service.policy.init:
            return None
        executor = Executor(
            self.driver, desired, ObservedState(runtime=self.driver.name), inputs=self.inputs
        )
        action = Action(f"run:{run}", "create", service.workload_id(None), f"run {run}")
        try:
            await executor.init_steps(action, service, [])
        except Failed as exc:
            return str(exc)
        return None

    async def adopt(self) -> None:
        """After a daemon restart: follow the runs the journal says are running."""
        for row in self.journal.runs(limit=1000, status="running"):
            rid = RunId(row.deployment, row.service, row.id)
            state = await self.driver.job_status(rid)
            if state is None:
                self.journal.finish_run(
                    row.id, status="lost", exit_code=None, log_tail="", at=self.clock(),
                    note="the runtime no longer has this run",
                )  # fmt: skip
            else:
                self.active[row.id] = rid

    async def poll(self) -> list[str]:
        """Record every active run that has ended; their ids."""
        done = []
        for run, rid in list(self.active.items()):
            state = await self.driver.job_status(rid)
            if state is not None and state.status == "running":
                continue
            await self._finish(run, rid, state.exit_code if state else None, state is None)
            done.append(run)
        return done

    async def _finish(self, run: str, rid: RunId, code: int | None, lost: bool) -> None:
        tail: list[str] = []
        if not lost:
            with contextlib.suppress(DriverError):
                tail = [line async for line in self.driver.job_logs(rid, tail=LOG_TAIL_LINES)]
        status = "lost" if lost else ("succeeded" if code == 0 else "failed")
        note = "the runtime no longer has this run" if lost else ""
        now = self.clock()
        self.journal.finish_run(
            run, status=status, exit_code=code, log_tail="\n".join(tail), at=now, note=note
        )
        self.journal.event(
            f"{rid.deployment}/{rid.service}",
            f"run-{status}",
            f"run {run} {status}" + (f" (exit status {code})" if code is not None else ""),
            now,
        )
        self.active.pop(run, None)
        with contextlib.suppress(DriverError):
            await self.driver.remove_job(rid)
