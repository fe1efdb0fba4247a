"""The ``backend`` fixture: one runtime per parameter (the private Docker engine, host
processes, and the in-memory fake beside them so it cannot drift from them), with the
same small surface for tests that run on each.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.desired import DesiredService
from reconciler.drivers.base import Driver
from reconciler.drivers.docker import DockerDriver
from reconciler.drivers.fake import FakeDriver, FakeRuntime
from reconciler.drivers.process import ProcessDriver
from reconciler.observed import WorkloadId
from tests.docker_support import compile_services, engine_request

__all__ = ["SERVICE", "Backend", "backend"]

SERVICE = """
app:
  image: {name: IMAGE, pull_policy: never}
  command:
    entrypoint: [sh, -c]
    args: ['trap "exit 0" TERM; echo "ready $GREETING"; sleep 600 & wait']
  env: {GREETING: GREETING_VALUE}
  stop_grace_period: 5s
"""


@dataclass
class Backend:
    name: str
    driver: Driver
    deployment: str
    image: str
    crash: Callable[[WorkloadId], Awaitable[None]]
    """Kill the replica's workload with SIGKILL, behind the driver's back."""
    reopen: Callable[[], contextlib.AbstractAsyncContextManager[Driver]]
    """A new driver on the same runtime: zlayer restarted."""

    def service(self, greeting: str = "hello") -> DesiredService:
        text = SERVICE.replace("IMAGE", json.dumps(self.image)).replace("GREETING_VALUE", greeting)
        return compile_services(self.deployment, text)["app"]

    def target(self, replica: int | None = 1) -> WorkloadId:
        return WorkloadId(self.deployment, "app", replica)


FAKE_OUTPUT: dict[str, Callable[[Mapping[str, str]], list[str]]] = {
    'trap "exit 0" TERM; echo "ready $GREETING"; sleep 600 & wait': (
        lambda env: [f"ready {env['GREETING']}"]
    ),
    "for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo oops >&2; sleep 600": (
        lambda env: [*(f"line {i}" for i in range(1, 6)), "oops"]
    ),
}
"""What the suite's commands print, for the fake, which runs nothing (``sh -c SCRIPT``)."""


def fake_prints(config: Mapping[str, object]) -> Sequence[str]:
    command = config.get("command")
    assert isinstance(command, dict) and command.get("entrypoint") == ["sh", "-c"], config
    (script,) = command["args"]
    assert script in FAKE_OUTPUT, f"the fake backend does not know what {script!r} prints"
    env = config.get("env") or {}
    assert isinstance(env, dict)
    return FAKE_OUTPUT[script](env)


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "process", "fake"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "fake":
        runtime = FakeRuntime(prints=fake_prints)

        def reopen_fake() -> contextlib.AbstractAsyncContextManager[Driver]:
            return FakeDriver(runtime=runtime)

        async with FakeDriver(runtime=runtime) as fake:

            async def kill_fake(target: WorkloadId) -> None:
                fake.crash(target, 128 + signal.SIGKILL)

            yield Backend("fake", fake, "ft-fake", "zlayer-test/none:1", kill_fake, reopen_fake)
        return
    if request.param == "docker":
        url: str = request.getfixturevalue("docker_url")
        image: str = request.getfixturevalue("test_image")
        deployment: str = request.getfixturevalue("deployment_name")

        async def kill_container(target: WorkloadId) -> None:
            name = f"{target.deployment}-{target.service}-{target.replica}"
            engine_request(url, "POST", f"/containers/{name}/kill", {"signal": "KILL"})

        def reopen_docker() -> contextlib.AbstractAsyncContextManager[Driver]:
            return DockerDriver(url, publish_address="127.0.0.1")

        async with DockerDriver(url, publish_address="127.0.0.1") as docker:
            yield Backend("docker", docker, deployment, image, kill_container, reopen_docker)
        return
    state: Path = request.getfixturevalue("process_state")
    deployment = request.getfixturevalue("process_deployment")

    def reopen_process() -> contextlib.AbstractAsyncContextManager[Driver]:
        return ProcessDriver(state)

    async def kill_process(target: WorkloadId) -> None:
        leaf = state / "process/deployments" / target.deployment / "services"
        run = json.loads((leaf / target.service / str(target.replica) / "run.json").read_text())
        os.killpg(int(run["pid"]), signal.SIGKILL)

    async with ProcessDriver(state) as process:
        yield Backend(
            "process", process, deployment, "zlayer-test/none:1", kill_process, reopen_process
        )
