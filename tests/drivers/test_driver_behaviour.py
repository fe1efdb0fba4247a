"""The same driver behaviour, checked against both real runtimes: the Docker engine
(the private one ``tests/with-docker`` starts) and host processes; and against the
in-memory fake, so that what planner and executor tests learn from it holds.

Each case runs once per runtime with the same spec text: create, observe, stop,
start, restart, replace (also of a replica that is gone), remove, logs, observing
again from a new driver (as after a restart of zlayer), and a crashed replica that
the plan restarts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.desired import DesiredState
from reconciler.drivers.base import Driver
from reconciler.errors import Conflict, NotFound
from reconciler.observed import ObservedState, Workload, WorkloadId
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services
from tests.driver_support import SERVICE, Backend
from tests.support import wait_for_async

pytest_plugins = ["tests.docker_support", "tests.process_support", "tests.driver_support"]


async def until_status(driver: Driver, target: WorkloadId, wanted: str) -> Workload:
    """Until the replica has status ``wanted`` (and, when exited, its exit code is
    known: a runtime may report the exit a moment before its code)."""

    async def reached() -> Workload | None:
        found = await driver.status(target)
        known = found is not None and (wanted != "exited" or found.exit_code is not None)
        return found if found is not None and found.status == wanted and known else None

    return await wait_for_async(reached, f"{target} to be {wanted}", 30)


async def output(driver: Driver, target: WorkloadId, tail: int | None = None) -> list[str]:
    return [line async for line in driver.logs(target, tail=tail)]


async def until_output(driver: Driver, target: WorkloadId, text: str) -> list[str]:
    async def said() -> list[str] | None:
        lines = await output(driver, target)
        return lines if text in lines else None

    return await wait_for_async(said, f"{target} to print {text!r}", 30)


def mine(state: ObservedState, deployment: str) -> list[Workload]:
    return [w for w in state.workloads if w.deployment == deployment]


async def test_create_observe_and_observe_again_from_a_new_driver(backend: Backend) -> None:
    service = backend.service()
    await backend.driver.create(service, 1, "rev-1")
    await until_output(backend.driver, backend.target(), "ready hello")
    state = await backend.driver.observe([backend.deployment])
    (workload,) = mine(state, backend.deployment)
    assert (workload.status, workload.fingerprint, workload.revision) == (
        "running",
        service.fingerprint,
        "rev-1",
    )
    assert state.configs[service.fingerprint]["env"] == {"GREETING": "hello"}
    async with backend.reopen() as again:
        other = await again.observe([backend.deployment])
    assert mine(other, backend.deployment) == [workload]
    assert other.configs[service.fingerprint] == state.configs[service.fingerprint]
    with pytest.raises(Conflict):
        await backend.driver.create(service, 1, "rev-1")


async def test_stop_start_restart_remove(backend: Backend) -> None:
    driver, target = backend.driver, backend.target()
    await driver.create(backend.service(), 1, "rev-1")
    await until_output(driver, target, "ready hello")
    await driver.stop(target)
    stopped = await until_status(driver, target, "exited")
    assert stopped.exit_code == 0  # the trap answered SIGTERM
    await driver.start(target)
    first = await until_status(driver, target, "running")
    await driver.restart(target)
    second = await until_status(driver, target, "running")
    assert second.started_at is not None and second.started_at >= (first.started_at or "")
    await driver.remove(target)
    assert await driver.status(target) is None
    assert mine(await driver.observe([backend.deployment]), backend.deployment) == []
    with pytest.raises(NotFound):
        await driver.remove(target)
    with pytest.raises(NotFound):
        await output(driver, target)


async def test_replace_runs_the_new_config_in_one_replica(backend: Backend) -> None:
    driver, target = backend.driver, backend.target()
    await driver.create(backend.service("old"), 1, "rev-1")
    await until_output(driver, target, "ready old")
    new = backend.service("new")
    await driver.replace(new, 1, "rev-2")
    lines = await until_output(driver, target, "ready new")
    assert "ready old" not in lines
    (workload,) = mine(await driver.observe([backend.deployment]), backend.deployment)
    assert (workload.fingerprint, workload.revision, workload.status) == (
        new.fingerprint,
        "rev-2",
        "running",
    )


async def test_replace_creates_a_replica_that_is_gone(backend: Backend) -> None:
    """A rollback after a failed start must still restore the replica."""
    driver, target = backend.driver, backend.target()
    await driver.create(backend.service("old"), 1, "rev-1")
    await driver.remove(target)
    new = backend.service("new")
    await driver.replace(new, 1, "rev-2")
    await until_output(driver, target, "ready new")
    (workload,) = mine(await driver.observe([backend.deployment]), backend.deployment)
    assert (workload.fingerprint, workload.revision, workload.status) == (
        new.fingerprint,
        "rev-2",
        "running",
    )


async def test_logs_give_the_last_lines_in_order(backend: Backend) -> None:
    text = SERVICE.replace(
        """args: ['trap "exit 0" TERM; echo "ready $GREETING"; sleep 600 & wait']""",
        # Docker copies stdout and stderr apart: their order holds only a moment apart.
        "args: ['for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo oops >&2; sleep 600']",
    )
    service = compile_services(backend.deployment, text.replace("IMAGE", json.dumps(backend.image)))
    await backend.driver.create(service["app"], 1, "rev-1")
    lines = await until_output(backend.driver, backend.target(), "oops")
    assert lines == ["line 1", "line 2", "line 3", "line 4", "line 5", "oops"]
    assert await output(backend.driver, backend.target(), tail=2) == ["line 5", "oops"]
    assert await output(backend.driver, backend.target(), tail=0) == []


async def test_a_crashed_replica_is_planned_for_restart_and_restarted(backend: Backend) -> None:
    driver, target = backend.driver, backend.target()
    service = backend.service()
    await driver.create(service, 1, "rev-1")
    await until_output(driver, target, "ready hello")
    await backend.crash(target)
    crashed = await until_status(driver, target, "exited")
    assert crashed.exit_code == 137
    desired = DesiredState("rev-1", {service.key: service}, frozenset({backend.deployment}))
    state = await driver.observe([backend.deployment])
    plan = plan_changes(desired, state)
    replica_actions: list[Any] = [a for a in plan.actions if not a.target.is_network]
    assert [(a.kind, a.reason) for a in replica_actions] == [("restart", "exited with status 137")]
    await driver.restart(target)
    await until_status(driver, target, "running")
