"""Runs of jobs on both real runtimes: a run goes running → exited with its code and
output, is never observed as a workload (so no plan touches it), is listed for
re-adoption, and leaves nothing once removed; exit hints come for replicas and
runs; on the process runtime a run reaches its deployment's services by name."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from reconciler.desired import DesiredService, DesiredState
from reconciler.drivers.base import Driver
from reconciler.drivers.process import ProcessDriver
from reconciler.errors import Conflict
from reconciler.observed import RunId, RunState, WorkloadId
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services, engine_request
from tests.driver_support import Backend
from tests.support import needs_root, wait_for_async

pytest_plugins = ["tests.docker_support", "tests.process_support", "tests.driver_support"]

JOB = """
report:
  rtype: job
  image: {name: IMAGE, pull_policy: never}
  command:
    entrypoint: [sh, -c]
    args: ['echo "report $WHO"; sleep "$NAP"; exit 3']
  env: {WHO: everyone, NAP: "0"}
  stop_grace_period: 1s
"""


def job(backend: Backend, nap: str = "0") -> DesiredService:
    text = JOB.replace("IMAGE", json.dumps(backend.image)).replace('NAP: "0"', f'NAP: "{nap}"')
    return compile_services(backend.deployment, text)["report"]


async def until_run(driver: Driver, run: RunId, status: str) -> RunState:
    async def reached() -> RunState | None:
        found = await driver.job_status(run)
        return found if found is not None and found.status == status else None

    return await wait_for_async(reached, f"run {run} to be {status}", 60)


real_runtimes = pytest.mark.parametrize(
    "backend", [pytest.param("docker", marks=pytest.mark.docker), "process"], indirect=True
)
"""Runs on the real runtimes only: the fake's runs end when a test says so
(``FakeDriver.finish_runs``), not by themselves."""


@real_runtimes
async def test_a_run_ends_with_its_code_and_output_and_is_never_a_workload(
    backend: Backend,
) -> None:
    driver, service = backend.driver, job(backend)
    await driver.register(service, "r1")
    rid = RunId(backend.deployment, "report", "t1")
    await driver.run_job(service, "t1", "r1")
    with pytest.raises(Conflict):
        await driver.run_job(service, "t1", "r1")
    done = await until_run(driver, rid, "exited")
    assert done.exit_code == 3 and done.started_at
    assert [line async for line in driver.job_logs(rid)] == ["report everyone"]
    observed = await driver.observe([backend.deployment])
    assert [(w.service, w.replica, w.status) for w in observed.workloads] == [
        ("report", None, "registered")
    ]
    desired = DesiredState("r1", {service.key: service}, frozenset({backend.deployment}))
    assert plan_changes(desired, observed).empty
    assert [r.run for r in await driver.job_runs([backend.deployment])] == ["t1"]
    await driver.remove_job(rid)
    await driver.remove_job(rid)  # gone already: fine
    assert await driver.job_status(rid) is None
    assert await driver.job_runs([backend.deployment]) == []
    await driver.remove(service.workload_id(None))
    if backend.name == "docker":
        url = backend.driver.url  # type: ignore[attr-defined]
        label = json.dumps({"label": [f"zlayer.deployment={backend.deployment}"]})
        _, left = engine_request(url, "GET", "/containers/json", {"all": "1", "filters": label})
        assert left == []
    else:
        assert isinstance(driver, ProcessDriver)
        assert not (driver.store.root / backend.deployment / "runs").exists()


@real_runtimes
async def test_exit_hints_name_replicas_and_runs(backend: Backend) -> None:
    driver = backend.driver
    await driver.create(backend.service(), 1, "r1")
    hints: asyncio.Queue[WorkloadId | RunId] = asyncio.Queue()

    async def listen() -> None:
        async for stopped in driver.exits():
            hints.put_nowait(stopped)

    listener = asyncio.ensure_future(listen())
    try:
        await asyncio.sleep(1.0)  # the stream is open
        await backend.crash(backend.target(1))
        assert await _hint(hints, backend.target(1))
        await driver.run_job(job(backend, nap="0.5"), "t2", "r1")
        assert await _hint(hints, RunId(backend.deployment, "report", "t2"))
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await driver.remove_job(RunId(backend.deployment, "report", "t2"))


async def _hint(hints: asyncio.Queue[WorkloadId | RunId], wanted: object) -> bool:
    async with asyncio.timeout(30):
        while True:
            if await hints.get() == wanted:
                return True


SERVER = """
web:
  image: {name: python}
  command:
    entrypoint: [python3, -m, http.server, "8080"]
    workdir: /tmp
  stop_grace_period: 1s
fetch:
  rtype: job
  image: {name: python}
  command:
    entrypoint: [python3, -c]
    args: ['import urllib.request as u; print("status", u.urlopen("http://web:8080/").status)']
"""


async def test_a_process_run_reaches_a_service_by_name(
    process_driver: ProcessDriver, process_deployment: str
) -> None:
    needs_root("network namespaces")
    services = compile_services(process_deployment, SERVER)
    driver = process_driver
    await driver.create_network(process_deployment)
    await driver.create(services["web"], 1, "r1")
    rid = RunId(process_deployment, "fetch", "n1")
    for attempt in range(50):  # until the server listens
        await driver.run_job(services["fetch"], f"n{attempt}", "r1")
        rid = RunId(process_deployment, "fetch", f"n{attempt}")
        done = await until_run(driver, rid, "exited")
        if done.exit_code == 0:
            break
        await driver.remove_job(rid)
        await asyncio.sleep(0.2)
    assert [line async for line in driver.job_logs(rid)] == ["status 200"]
    record = json.loads((driver.store.run_dir(rid) / "record.json").read_text())
    namespace = record["network"]["netns"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace in listed
    await driver.remove_job(rid)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace not in listed
    assert sys.executable  # the host's python serves and fetches
