"""An in-memory runtime for planner and executor tests (yours too).

It keeps workloads exactly as a real runtime would report them (fingerprint,
canonical config, revision, status) and follows the same rules: creating an
existing replica is a ``Conflict``, acting on a missing one is ``NotFound``.
It never substitutes for testing a real driver against its real backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Collection
from types import TracebackType
from typing import Any, Self

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits
from reconciler.errors import Conflict, DriverError, NotFound
from reconciler.observed import Network, ObservedState, RunId, RunState, Workload, WorkloadId


class FakeDriver:
    name = "fake"

    def __init__(
        self, initial: ObservedState | None = None, *, networks_managed: bool = False
    ) -> None:
        self.networks_managed = networks_managed or bool(initial and initial.networks_managed)
        """Keep deployment networks as plan resources, like the process runtime as root."""
        self.networks: dict[str, Network] = {
            n.deployment: n for n in (initial.networks if initial else ())
        }
        self.workloads: dict[WorkloadId, Workload] = {
            w.id: w for w in (initial.workloads if initial else ())
        }
        self.configs: dict[str, dict[str, Any]] = dict(initial.configs) if initial else {}
        self.calls: list[tuple[str, str]] = []
        """Every action performed, as (kind, workload id), in order."""
        self.failures: dict[tuple[str, str], DriverError] = {}
        """(kind, workload id) → the error that action raises (once), for tests."""
        self.output: dict[WorkloadId, list[str]] = {}
        self.runs: dict[RunId, RunState] = {}
        self.run_output: dict[RunId, list[str]] = {}
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

    def limits(self, service: DesiredService) -> Limits:
        return Limits()

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
        lines = self.output.get(target, [])
        for line in lines[-tail:] if tail else lines:
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
            self.runs[rid] = state.model_copy(
                update={"status": "exited", "exit_code": code, "finished_at": "now"}
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
        lines = self.run_output.get(run, [])
        for line in lines[-tail:] if tail else lines:
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
        self.workloads[target] = self._workload(service, replica, revision, "running")

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        old = self._get(target)
        self._record("replace", target)
        new = self._workload(service, replica, revision, "running")
        self.workloads[target] = new.model_copy(update={"restart_count": old.restart_count})

    async def start(self, target: WorkloadId) -> None:
        self._record("start", target)
        self._update(target, status="running", exit_code=None)

    async def restart(self, target: WorkloadId) -> None:
        self._record("restart", target)
        old = self._get(target)
        self._update(target, status="running", exit_code=None, restart_count=old.restart_count + 1)

    async def stop(self, target: WorkloadId) -> None:
        self._record("stop", target)
        self._update(target, status="exited", exit_code=0)

    async def remove(self, target: WorkloadId) -> None:
        self._get(target)
        self._record("remove", target)
        del self.workloads[target]

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

    def _get(self, target: WorkloadId) -> Workload:
        try:
            return self.workloads[target]
        except KeyError:
            raise NotFound(f"{target}: no such workload") from None

    def _update(self, target: WorkloadId, **changes: object) -> None:
        self.workloads[target] = self._get(target).model_copy(update=changes)

    def _workload(
        self, service: DesiredService, replica: int | None, revision: str, status: str
    ) -> Workload:
        self.configs[service.fingerprint] = dict(service.config)
        return Workload.model_validate(
            {
                "deployment": service.deployment,
                "service": service.name,
                "replica": replica,
                "fingerprint": service.fingerprint,
                "revision": revision,
                "status": status,
                "health": "healthy" if status == "running" else "none",
                "depends": [d.service for d in service.depends],
            }
        )
