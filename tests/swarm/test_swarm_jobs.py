"""Jobs and cron on the swarm runtime, against a real three-node swarm: a definition is
a Swarm config, each run a ``replicated-job`` service that runs one task to completion
and is kept (status, exit code, logs) until removed."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.drivers.swarm import SwarmDriver
from reconciler.observed import RunId
from reconciler.plan.planner import plan_changes
from tests.docker_support import compile_services, compile_spec
from tests.swarm_support import IMAGE, Swarm

pytest_plugins = ["tests.swarm_support"]


async def finished(driver: SwarmDriver, run: RunId, timeout: float = 90) -> int | None:
    """The run's exit code once it exited (waits for the effect, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await driver.job_status(run)
        assert state is not None, f"{run} is gone"
        if state.status == "exited":
            return state.exit_code
        assert loop.time() < deadline, f"{run} still {state.status} after {timeout}s"
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_a_job_is_registered_run_to_completion_and_removed(
    swarm: Swarm, swarm_deployment: str
) -> None:
    services = compile_services(
        swarm_deployment,
        f"""
        report:
          rtype: job
          image: {{name: "{IMAGE}"}}
          command: {{entrypoint: [sh, -c, 'echo "ran $MODE"; exit $CODE']}}
          env: {{MODE: nightly, CODE: "3"}}
        """,
    )
    job = services["report"]
    async with SwarmDriver(swarm.url, poll=0.2) as driver:
        await driver.create_network(swarm_deployment)
        await driver.register(job, "rev-1")
        observed = await driver.observe([swarm_deployment])
        (definition,) = [w for w in observed.workloads if w.service == "report"]
        assert (definition.status, definition.fingerprint) == ("registered", job.fingerprint)
        # Registered as the specs say: the plan has nothing to do.
        text = (
            f"version: v1\ndeployment: {swarm_deployment}\nservices:\n  report:\n"
            f'    rtype: job\n    image: {{name: "{IMAGE}"}}\n'
            "    command: {entrypoint: [sh, -c, 'echo \"ran $MODE\"; exit $CODE']}\n"
            '    env: {MODE: nightly, CODE: "3"}\n'
        )
        assert plan_changes(compile_spec(text), observed).empty
        run = RunId(swarm_deployment, "report", "r1")
        await driver.run_job(job, "r1", "rev-1")
        assert await finished(driver, run) == 3
        assert [r.id for r in await driver.job_runs([swarm_deployment])] == [run]
        lines = [line async for line in driver.job_logs(run)]
        assert any(
            line.endswith("| ran nightly") and line.startswith("zl-node-") for line in lines
        ), lines
        # A run is not a workload: observing sees the definition only.
        again = await driver.observe([swarm_deployment])
        assert [str(w.id) for w in again.workloads] == [f"{swarm_deployment}/report"]
        await driver.remove_job(run)
        assert await driver.job_status(run) is None
        await driver.unregister(job.workload_id(None))
        assert (await driver.observe([swarm_deployment])).workloads == ()
