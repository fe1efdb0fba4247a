"""Fault matrix, row 8: a replica killed by the kernel's OOM killer at its memory limit
(``resources.memory``) is ``oom-killed`` — in status, in the plan's reason and in the
daemon's crash events — not a bare status 137, and is restarted. Injected for real: the
replica allocates twice its limit, on the Docker engine and on the process runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reconciler.desired import DesiredState
from reconciler.observed import Workload
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services
from tests.driver_support import Backend
from tests.support import needs_root, wait_for_async

pytest_plugins = ["tests.docker_support", "tests.process_support", "tests.driver_support"]

HOG = """
app:
  image: {name: IMAGE, pull_policy: never}
  command: {entrypoint: [sh, -c], args: ['exec dd if=/dev/zero of=/dev/null bs=64M count=1']}
  resources: {memory: 24Mi}
"""
"""dd's one 64 MiB block, filled from /dev/zero, is resident memory: the kernel kills it."""

RUNTIMES = [pytest.param("docker", marks=pytest.mark.docker), "process"]


@pytest.mark.faults
@pytest.mark.parametrize("backend", RUNTIMES, indirect=True)
async def test_a_replica_over_its_memory_limit_is_oom_killed_and_planned_back(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    if backend.name == "process":
        needs_root("a memory cgroup for the replica")
    service = compile_services(backend.deployment, HOG.replace("IMAGE", json.dumps(backend.image)))[
        "app"
    ]
    assert not backend.driver.limits(service).errors
    target = backend.target()
    await backend.driver.create(service, 1, "rev-1")

    async def ended() -> Workload | None:
        found = await backend.driver.status(target)
        return found if found is not None and found.exit_code is not None else None

    workload = await wait_for_async(ended, f"{target} to be killed", 60)
    assert workload.oom_killed, workload
    assert (workload.status, workload.exit_code, workload.state) == ("exited", 137, "oom-killed")
    desired = DesiredState("rev-1", {service.key: service}, frozenset({backend.deployment}))
    observed = await backend.driver.observe([backend.deployment])
    (seen,) = [w for w in observed.workloads if w.id == target]
    assert seen.oom_killed, "observing must say it too, not only the status call"
    plan = plan_changes(desired, observed)
    assert [(a.kind, a.reason) for a in plan.actions if not a.target.is_network] == [
        ("restart", "oom-killed (at its memory limit, status 137)")
    ]
    shown = status_of(backend, request)
    (row,) = [line for line in shown.splitlines() if line.split()[:3] == [
        backend.deployment, "app", "1"]]  # fmt: skip
    assert "oom-killed" in row.split(), shown
    # A replica that was not over its limit, killed with SIGKILL: a plain 137.
    await backend.driver.remove(target)
    calm = compile_services(
        backend.deployment,
        HOG.replace("IMAGE", json.dumps(backend.image)).replace(
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1", "exec sleep 600"
        ),
    )["app"]
    await backend.driver.create(calm, 1, "rev-2")
    await backend.crash(target)
    killed = await wait_for_async(ended, f"{target} to be killed", 60)
    assert (killed.oom_killed, killed.state) == (False, "exited (137)")


def status_of(backend: Backend, request: pytest.FixtureRequest) -> str:
    """``zlayer status`` of the backend's runtime, as a user runs it."""
    args = ["--runtime", backend.name]
    env = {**os.environ, "NO_COLOR": "1"}
    if backend.name == "process":
        env["ZLAYER_STATE_DIR"] = str(request.getfixturevalue("process_state"))
    else:
        env["DOCKER_HOST"] = str(request.getfixturevalue("docker_url"))
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
