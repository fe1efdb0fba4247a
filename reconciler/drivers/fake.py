"""An in-memory runtime for planner and executor tests (yours too).

It keeps workloads exactly as a real runtime would report them (fingerprint,
canonical config, revision, status, start time) and follows the same rules:
creating an existing replica is a ``Conflict``, acting on a missing one is
``NotFound``, replacing a missing one creates it. The shared driver behaviour
suite (tests/drivers/test_driver_behaviour.py) runs it next to the real runtimes
so it cannot drift from them. What it holds is a :class:`FakeRuntime`: give the
same one to a new driver and it sees what the last one left, as a real driver
sees the containers or records after zlayer restarts. It runs nothing and does
no I/O: what a workload prints is what :attr:`FakeRuntime.prints` says. It never
substitutes for testing a real driver against its real backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits, Usage
from reconciler.errors import Conflict, DriverError, NotFound
from reconciler.observed import (
    Network,
    ObservedState,
    RunId,
    RunState,
    Status,
    Workload,
    WorkloadId,
)

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class FakeRuntime:
    """What an in-memory runtime holds, apart from any driver talking to it."""

    workloads: dict[WorkloadId, Workload] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    output: dict[WorkloadId, list[str]] = field(default_factory=dict)
    """Each replica's output since it was created (or replaced), oldest first."""
    runs: dict[RunId, RunState] = field(default_factory=dict)
    run_output: dict[RunId, list[str]] = field(default_factory=dict)
    prints: Callable[[Mapping[str, Any]], Sequence[str]] | None = None
    """The lines a workload with this canonical config prints each time it starts
    (default: none), for tests that read logs."""
    starts: int = 0
    """Workloads started so far: the clock of their ``started_at``, one second a start."""

    @classmethod
    def holding(cls, state: ObservedState) -> FakeRuntime:
        """A runtime that holds what ``state`` shows."""
        return cls(
            workloads={w.id: w for w in state.workloads},
            configs=dict(state.configs),
            networks={n.deployment: n for n in state.networks},
        )

    def started_at(self) -> str:
        """The start time of the next workload started, later than any before it."""
        self.starts += 1
        return f"{_EPOCH + timedelta(seconds=self.starts):%Y-%m-%dT%H:%M:%SZ}"


class FakeDriver:
    name = "fake"
    routable = False
    internal_routable = False

    async def proxy_address(self, deployment: str) -> str | None:
        return None

    def __init__(
        self,
        initial: ObservedState | None = None,
        *,
        networks_managed: bool = False,
        runtime: FakeRuntime | None = None,
    ) -> None:
        """A driver on ``runtime`` (a new one holding ``initial``, when not given)."""
        if initial is not None and runtime is not None:
            raise TypeError("FakeDriver takes an initial state or a runtime, not both")
        self.networks_managed = networks_managed or bool(initial and initial.networks_managed)
        """Keep deployment networks as plan resources, like the process runtime as root."""
        if runtime is None:
            runtime = FakeRuntime.holding(initial) if initial else FakeRuntime()
        self.runtime = runtime
        self.networks = self.runtime.networks
        self.workloads = self.runtime.workloads
        self.configs = self.runtime.configs
        self.calls: list[tuple[str, str]] = []
        """Every action performed, as (kind, workload id), in order."""
        self.failures: dict[tuple[str, str], DriverError] = {}
        """(kind, workload id) → the error that action raises (once), for tests."""
        self.usage_of: dict[WorkloadId, Usage] = {}
        """What :meth:`usage` reports for a replica (tests set it)."""
        self.output = self.runtime.output
        self.runs = self.runtime.runs
        self.run_output = self.runtime.run_output
        self.job_script: dict[tuple[str, str], tuple[int, list[str]]] = {}
        """(deployment, service) → (exit code, output) its runs end with when
        :meth:`finish_runs` is called (default: 0, no output)."""
        self._exits: asyncio.Queue[WorkloadId | RunId] = asyncio.Queue()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        found = [
            w for w in self.workloads.values() if deployments is None or w.deployment in deployments
        ]
        found.sort(key=lambda w: (w.deployment, w.service, w.replica or 0))
        configs = {
            w.fingerprint: self.configs[w.fingerprint]
            for w in found
            if w.fingerprint in self.configs
        }
        networks = tuple(
            n for d, n in sorted(self.networks.items()) if deployments is None or d in deployments
        )
        return ObservedState(
            runtime=self.name,
            workloads=tuple(found),
            configs=configs,
            networks_managed=self.networks_managed,
            networks=networks,
        )

    async def image_drift(
        self, services: Collection[DesiredService], observed: ObservedState
    ) -> ObservedState:
        return observed  # no registry behind its images

    def limits(self, service: DesiredService) -> Limits:
        return Limits()

    async def usage(self, targets: Collection[WorkloadId]) -> dict[WorkloadId, Usage]:
        """What tests put in :attr:`usage_of`, for the running replicas of ``targets``."""
        return {
            t: self.usage_of[t]
            for t in targets
            if t in self.usage_of and t in self.workloads and self.workloads[t].status == "running"
        }

    def fail_next(self, kind: str, target: WorkloadId | str, error: DriverError) -> None:
        """Test helper: the next ``kind`` action on ``target`` raises ``error``."""
        self.failures[(kind, str(target))] = error

    async def status(self, target: WorkloadId) -> Workload | None:
        return self.workloads.get(target)

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        self._get(target)
        return ("127.0.0.1", port)

    async def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        self._get(target)
        for line in _last(self.output.get(target, []), tail):
            yield line

    def crash(self, target: WorkloadId, exit_code: int) -> None:
        """Test helper: the workload exits with ``exit_code``."""
        self._update(target, status="exited", exit_code=exit_code)
        self._exits.put_nowait(target)

    def finish_runs(self) -> list[RunId]:
        """Test helper: every running run ends as :attr:`job_script` says."""
        done = []
        for rid, state in list(self.runs.items()):
            if state.status != "running":
                continue
            code, lines = self.job_script.get((rid.deployment, rid.service), (0, []))
            self.runs[rid] = dataclasses.replace(
                state, status="exited", exit_code=code, finished_at="now"
            )
            self.run_output[rid] = list(lines)
            self._exits.put_nowait(rid)
            done.append(rid)
        return done

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        rid = RunId(service.deployment, service.name, run)
        if rid in self.runs:
            raise Conflict(f"{rid}: already exists")
        self._record("run", service.workload_id(None))
        self.runs[rid] = RunState(
            deployment=rid.deployment, service=rid.service, run=run, status="running",
            started_at="now",
        )  # fmt: skip

    async def job_status(self, run: RunId) -> RunState | None:
        return self.runs.get(run)

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        return [
            s for r, s in self.runs.items() if deployments is None or r.deployment in deployments
        ]

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        for line in _last(self.run_output.get(run, []), tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        self.runs.pop(run, None)
        self.run_output.pop(run, None)

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        while True:
            yield await self._exits.get()

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        if target in self.workloads:
            raise Conflict(f"{target}: already exists")
        self._record("create", target)
        self.output[target] = []
        self.workloads[target] = self._workload(service, replica, revision, "running")
        self._prints(target)

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        """A new replica in the old one's place; created when it is gone (as both real
        runtimes do: a rollback after a failed start must still restore it)."""
        target = service.workload_id(replica)
        old = self.workloads.get(target)
        self._record("replace", target)
        self.output[target] = []
        new = self._workload(service, replica, revision, "running")
        restarts = old.restart_count if old is not None else 0
        self.workloads[target] = dataclasses.replace(new, restart_count=restarts)
        self._prints(target)

    async def start(self, target: WorkloadId) -> None:
        self._record("start", target)
        self._update(target, status="running", exit_code=None, started_at=self.runtime.started_at())
        self._prints(target)

    async def restart(self, target: WorkloadId) -> None:
        self._record("restart", target)
        old = self._get(target)
        self._update(
            target, status="running", exit_code=None, restart_count=old.restart_count + 1,
            started_at=self.runtime.started_at(),
        )  # fmt: skip
        self._prints(target)

    async def stop(self, target: WorkloadId) -> None:
        self._record("stop", target)
        self._update(target, status="exited", exit_code=0)

    async def remove(self, target: WorkloadId) -> None:
        self._get(target)
        self._record("remove", target)
        del self.workloads[target]
        self.output.pop(target, None)

    async def register(self, service: DesiredService, revision: str) -> None:
        target = service.workload_id(None)
        self._record("register", target)
        self.workloads[target] = self._workload(service, None, revision, "registered")

    async def unregister(self, target: WorkloadId) -> None:
        await self.remove(target)
        self.calls[-1] = ("unregister", str(target))

    async def create_network(self, deployment: str) -> None:
        self._record("create", WorkloadId.network(deployment))
        self.networks[deployment] = Network(deployment=deployment, name=f"fake-{deployment}")

    async def remove_network(self, deployment: str) -> None:
        self._record("remove", WorkloadId.network(deployment))
        self.networks.pop(deployment, None)

    def _record(self, kind: str, target: WorkloadId) -> None:
        error = self.failures.pop((kind, str(target)), None)
        if error is not None:
            raise error
        self.calls.append((kind, str(target)))

    def _prints(self, target: WorkloadId) -> None:
        """The workload just started: what it prints goes into its output."""
        config = self.configs.get(self.workloads[target].fingerprint, {})
        if self.runtime.prints is not None:
            self.output.setdefault(target, []).extend(self.runtime.prints(config))

    def _get(self, target: WorkloadId) -> Workload:
        try:
            return self.workloads[target]
        except KeyError:
            raise NotFound(f"{target}: no such workload") from None

    def _update(self, target: WorkloadId, **changes: Any) -> None:
        self.workloads[target] = dataclasses.replace(self._get(target), **changes)

    def _workload(
        self, service: DesiredService, replica: int | None, revision: str, status: Status
    ) -> Workload:
        self.configs[service.fingerprint] = dict(service.config)
        return Workload(
            deployment=service.deployment,
            service=service.name,
            replica=replica,
            fingerprint=service.fingerprint,
            revision=revision,
            status=status,
            started_at=self.runtime.started_at() if status == "running" else None,
            health="healthy" if status == "running" else "none",
            depends=tuple(d.service for d in service.depends),
        )


def _last(lines: list[str], tail: int | None) -> list[str]:
    """The last ``tail`` lines (all of them for ``None``, none for 0), as runtimes give."""
    return lines if tail is None else lines[max(len(lines) - tail, 0) :]
