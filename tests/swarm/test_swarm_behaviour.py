"""The shared driver behaviour suite (tests/drivers/test_driver_behaviour.py), where it
applies to a runtime that runs each service as a whole: the same spec text through
:class:`SwarmDriver` on a real three-node swarm. Create, observe and observe again
from a new driver, create twice (refused), replace, logs in order with their tail, a
crashed task (the engine's to restart, so the plan stays empty), the replica calls
refused, remove. Stop and start of one replica have no counterpart: a task is the
engine's to run."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from reconciler.desired import DesiredService, DesiredState
from reconciler.drivers.swarm import SwarmDriver
from reconciler.errors import Conflict, PermanentDriverError
from reconciler.observed import ObservedState, WorkloadId
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services
from tests.driver_support import SERVICE
from tests.swarm_support import IMAGE, Swarm, docker, service_tasks

pytest_plugins = ["tests.swarm_support"]

LINES = "args: ['for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo oops >&2; sleep 600']"


def app(deployment: str, greeting: str = "hello", *, text: str = SERVICE) -> DesiredService:
    spec = text.replace("IMAGE", json.dumps(IMAGE)).replace("GREETING_VALUE", greeting)
    return compile_services(deployment, spec)["app"]


async def messages(driver: SwarmDriver, target: WorkloadId, tail: int | None = None) -> list[str]:
    """The service's log lines without the ``slot@node | `` prefix."""
    return [line.partition(" | ")[2] async for line in driver.logs(target, tail=tail)]


async def until_said(driver: SwarmDriver, target: WorkloadId, text: str) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        lines = await messages(driver, target)
        if text in lines:
            return lines
        assert loop.time() < deadline, f"{target} never said {text!r}: {lines}"
        await asyncio.sleep(0.5)


def desired_of(service: DesiredService, revision: str) -> DesiredState:
    return DesiredState(revision, {service.key: service}, frozenset({service.deployment}))


def tasks_of(state: ObservedState, deployment: str) -> list[tuple[int | None, str, str]]:
    return [
        (w.replica, w.status, w.fingerprint) for w in state.workloads if w.deployment == deployment
    ]


@pytest.mark.slow
async def test_create_observe_replace_logs_and_remove_a_service_as_a_whole(
    swarm: Swarm, swarm_deployment: str
) -> None:
    service = app(swarm_deployment)
    target = service.workload_id(None)
    async with SwarmDriver(swarm.url, poll=0.2) as driver:
        await driver.create_network(swarm_deployment)
        await driver.deploy(service, "rev-1", 1, None)
        await until_said(driver, target, "ready hello")
        state = await driver.observe([swarm_deployment])
        (cluster,) = state.services
        assert (cluster.fingerprint, cluster.revision, cluster.replicas) == (
            service.fingerprint, "rev-1", 1,
        )  # fmt: skip
        assert tasks_of(state, swarm_deployment) == [(1, "running", service.fingerprint)]
        assert state.configs[service.fingerprint]["env"] == {"GREETING": "hello"}
        assert plan_changes(desired_of(service, "rev-1"), state).empty
        async with SwarmDriver(swarm.url) as again:  # zlayer restarted: the labels suffice
            other = await again.observe([swarm_deployment])
        assert other.services == state.services and other.configs == state.configs
        with pytest.raises(Conflict):
            await driver.deploy(service, "rev-1", 1, None)  # it exists: never a second one
        for call in (driver.create(service, 1, "rev-1"), driver.stop(target._replace(replica=1))):
            with pytest.raises(PermanentDriverError, match="the engine places"):
                await call

        new = app(swarm_deployment, "new")
        await driver.deploy(new, "rev-2", 1, cluster.version)
        # Slot 1's lines: the new task's and the old one's (the engine keeps both, and
        # gives them task by task, not in time order).
        lines = await until_said(driver, target._replace(replica=1), "ready new")
        assert sorted(lines) == ["ready hello", "ready new"], lines
        replaced = await driver.observe([swarm_deployment])
        assert [(c.fingerprint, c.revision) for c in replaced.services] == [
            (new.fingerprint, "rev-2")
        ]
        assert (1, "running", new.fingerprint) in tasks_of(replaced, swarm_deployment)
        with pytest.raises(Conflict):  # the version observed before the update is stale
            await driver.deploy(service, "rev-3", 1, cluster.version)

        await driver.remove(target)
        gone = await driver.observe([swarm_deployment])
        assert gone.services == () and tasks_of(gone, swarm_deployment) == []


@pytest.mark.slow
async def test_logs_give_the_last_lines_in_order_and_a_crashed_task_is_the_engines(
    swarm: Swarm, swarm_deployment: str
) -> None:
    text = SERVICE.replace(
        """args: ['trap "exit 0" TERM; echo "ready $GREETING"; sleep 600 & wait']""", LINES
    )
    service = app(swarm_deployment, text=text)
    target = service.workload_id(None)
    async with SwarmDriver(swarm.url, poll=0.2) as driver:
        await driver.create_network(swarm_deployment)
        await driver.deploy(service, "rev-1", 1, None)
        lines = await until_said(driver, target, "oops")
        assert lines == ["line 1", "line 2", "line 3", "line 4", "line 5", "oops"]
        assert await messages(driver, target, tail=2) == ["line 5", "oops"]
        assert await messages(driver, target, tail=0) == []

        # SIGKILL of the task's container on its node, behind zlayer's back.
        name = f"{swarm_deployment}_app"
        (task,) = service_tasks(swarm, name)
        node = swarm.node(task["NodeID"])
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        docker(node, "kill", "--signal", str(int(signal.SIGKILL)), container)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while not [t for t in service_tasks(swarm, name) if t["ID"] != task["ID"]]:
            assert loop.time() < deadline, "the engine never started a new task"
            await asyncio.sleep(0.5)
        state = await driver.observe([swarm_deployment])
        # The engine restarts it: no restart for zlayer to plan, whatever the task did.
        assert plan_changes(desired_of(service, "rev-1"), state).empty
        assert (1, "running", service.fingerprint) in tasks_of(state, swarm_deployment)
