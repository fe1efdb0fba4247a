"""Fault matrix, row 7: a workload removed behind zlayer's back — a container removed
with ``docker rm -f``; on the process runtime a replica killed and another's network
namespace deleted — is planned again with the reason and recreated, with no
duplicate: the replicas are counted from the runtime itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from reconciler.desired import CompileInputs, DesiredService, DesiredState
from reconciler.executor import ExecutorSettings, execute
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services, engine_request
from tests.driver_support import SERVICE, Backend
from tests.support import needs_root, wait_for_async

pytest_plugins = ["tests.docker_support", "tests.process_support", "tests.driver_support"]

RUNTIMES = [pytest.param("docker", marks=pytest.mark.docker), "process"]


def two_replicas(backend: Backend) -> DesiredService:
    text = SERVICE.replace("IMAGE", json.dumps(backend.image)).replace("GREETING_VALUE", "hi")
    return compile_services(backend.deployment, text + "  scale: {mode: fixed, replicas: 2}\n")[
        "app"
    ]


def running_on_the_runtime(backend: Backend, request: pytest.FixtureRequest) -> list[str]:
    """The replicas that run, as the runtime itself tells (not zlayer's records)."""
    if backend.name == "docker":
        url = request.getfixturevalue("docker_url")
        label = json.dumps({"label": [f"zlayer.deployment={backend.deployment}"]})
        _, found = engine_request(url, "GET", "/containers/json", {"filters": label})
        return sorted(c["Labels"]["zlayer.replica"] for c in found if c["State"] == "running")
    leaf = request.getfixturevalue("process_state") / "process/deployments" / backend.deployment
    alive = []
    for run in sorted((leaf / "services" / "app").glob("*/run.json")):
        pid = int(json.loads(run.read_text())["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        if "GREETING=hi" in Path(f"/proc/{pid}/environ").read_text(errors="replace"):
            alive.append(run.parent.name)
    return alive


@pytest.mark.faults
@pytest.mark.parametrize("backend", RUNTIMES, indirect=True)
async def test_a_workload_removed_out_of_band_is_planned_again_and_recreated(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    if backend.name == "process":
        needs_root("network namespaces for the replicas")
    service = two_replicas(backend)
    desired = DesiredState("rev-1", {service.key: service}, frozenset({backend.deployment}))
    settings = ExecutorSettings(concurrency=2)

    async def converge() -> list[tuple[str, str, str]]:
        observed = await backend.driver.observe([backend.deployment])
        plan = plan_changes(desired, observed)
        report = await execute(
            plan, backend.driver, desired, observed, inputs=CompileInputs(), settings=settings
        )
        assert report.ok, report.outcomes
        return [(a.kind, str(a.target), a.reason) for a in plan.actions if not a.target.is_network]

    await converge()
    assert running_on_the_runtime(backend, request) == ["1", "2"]

    if backend.name == "docker":
        url = request.getfixturevalue("docker_url")
        name = f"{backend.deployment}-app-1"
        status, _ = engine_request(url, "DELETE", f"/containers/{name}", {"force": "1"})
        assert status == 204
        expected = [("create", f"{backend.deployment}/app/1", "replica 1 is missing (replicas 2)")]
    else:
        leaf = request.getfixturevalue("process_state") / "process/deployments"
        replicas = leaf / backend.deployment / "services" / "app"
        record = json.loads((replicas / "1" / "record.json").read_text())
        namespace = record["network"]["netns"]
        subprocess.run(["ip", "netns", "delete", namespace], check=True)
        run = json.loads((replicas / "2" / "run.json").read_text())
        os.killpg(int(run["pid"]), signal.SIGKILL)
        expected = [
            ("restart", f"{backend.deployment}/app/1", f"network namespace {namespace} is missing"),
            ("restart", f"{backend.deployment}/app/2", "exited with status 137"),
        ]

    async def planned() -> list[tuple[str, str, str]]:
        observed = await backend.driver.observe([backend.deployment])
        plan = plan_changes(desired, observed)
        return [(a.kind, str(a.target), a.reason) for a in plan.actions if not a.target.is_network]

    # The kill is seen once the monitor has recorded the exit (an effect, waited for).
    async def as_expected() -> bool:
        return await planned() == expected

    try:
        await wait_for_async(as_expected, f"the plan {expected}", 30)
    except AssertionError as failed:
        raise AssertionError(f"{failed}; planned: {await planned()}") from None
    assert sorted(await converge()) == sorted(expected)
    assert running_on_the_runtime(backend, request) == ["1", "2"]  # recreated, no duplicate
    assert await planned() == []
