"""The Docker driver against a real engine: the private one ``tests/with-docker`` starts.

    tests/with-docker /tmp/dev/bin/python -m pytest tests/drivers/test_docker_driver.py

Without an engine every test here skips saying why (and fails under CI=true).
Each test works in its own deployment (``zt-<hex>``), removed afterwards. The
tests reach workloads only through ports published on 127.0.0.1 or host
networking; containers talk to each other on their deployment's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest

from reconciler.desired import DesiredService
from reconciler.drivers.docker import DockerDriver
from reconciler.errors import (
    Conflict,
    DriverError,
    NotFound,
    PermanentDriverError,
    TemporaryDriverError,
)
from reconciler.observed import Workload, WorkloadId
from tests.docker_support import compile_services
from tests.support import wait_for_async

pytest_plugins = ["tests.docker_support"]

SLEEPER = (
    "command: {entrypoint: [sh, -c], "
    """args: ['trap "exit 0" TERM; echo ready; sleep 600 & wait']}"""
)
"""A replica that runs until told to stop, and stops at once when told (once it has
said ``ready``: until then SIGTERM waits out the grace period, as sh is PID 1)."""


def services(
    deployment: str, image: str, text: str, secrets: dict[str, str] | None = None
) -> dict[str, DesiredService]:
    """The services in ``text`` (YAML under ``services:``), ``IMAGE`` being the test image."""
    return compile_services(deployment, text.replace("IMAGE", json.dumps(image)), secrets=secrets)


async def exited(driver: DockerDriver, target: WorkloadId) -> Workload:
    async def done() -> bool:
        status = await driver.status(target)
        return status is not None and status.status == "exited"

    await wait_for_async(done, f"{target} to exit", 20, interval=0.1)
    status = await driver.status(target)
    assert status is not None
    return status


async def lines(driver: DockerDriver, target: WorkloadId, tail: int | None = None) -> list[str]:
    return [line async for line in driver.logs(target, tail=tail)]


async def ready(driver: DockerDriver, target: WorkloadId) -> None:
    async def said_ready() -> bool:
        return "ready" in await lines(driver, target)

    await wait_for_async(said_ready, f"{target} to say ready", 20, interval=0.1)


async def deployment_networks(driver: DockerDriver, deployment: str) -> list[str]:
    found = await driver.docker.networks.list(filters={"label": f"zlayer.deployment={deployment}"})
    return [n["Name"] for n in found]


async def deployment_containers(driver: DockerDriver, deployment: str) -> list[str]:
    filters = json.dumps({"label": [f"zlayer.deployment={deployment}"]})
    found = await driver.docker.containers.list(all=True, filters=filters)
    return sorted(c["Names"][0].lstrip("/") for c in found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(host: str, port: int, path: str = "/") -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        return (await reader.read()).decode()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_create_then_observe_round_trip(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    web = services(
        deployment_name,
        test_image,
        f"""
        web:
          image: {{name: IMAGE}}
          labels: {{team: platform}}
          env: {{LEVEL: info}}
          scale: {{mode: fixed, replicas: 1}}
          depends: [{{service: db, condition: started}}]
          {SLEEPER}
        db:
          image: {{name: IMAGE}}
        """,
    )["web"]
    await docker_driver.create(web, 1, "rev-1")

    observed = await docker_driver.observe([deployment_name])
    assert len(observed.workloads) == 1
    workload = observed.workloads[0]
    assert workload.id == WorkloadId(deployment_name, "web", 1)
    assert workload.status == "running"
    assert workload.health == "none"
    assert workload.revision == "rev-1"
    assert workload.depends == ("db",)
    # Unchanged replica: the planner sees the desired fingerprint and config.
    assert workload.fingerprint == web.fingerprint
    assert observed.configs == {web.fingerprint: dict(web.config)}

    info = await docker_driver.docker.containers.container(f"{deployment_name}-web-1").show()
    labels = info["Config"]["Labels"]
    assert labels["team"] == "platform"
    assert labels["zlayer.replica"] == "1"
    assert labels["zlayer.depends"] == "db"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert workload.runtime_id == info["Id"]
    assert list(info["NetworkSettings"]["Networks"]) == [f"zlayer-{deployment_name}"]

    everything = await docker_driver.observe()
    assert workload in everything.workloads
    assert (await docker_driver.observe(["zt-none-such"])).workloads == ()
    assert (await docker_driver.observe([])).workloads == ()
    status = await docker_driver.status(workload.id)
    assert status is not None
    assert status.started_at is not None


async def test_env_secrets_and_command_are_applied(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    job = services(
        deployment_name,
        test_image,
        """
        hello:
          image: {name: IMAGE}
          command:
            entrypoint: [sh, -c]
            args: ['echo "$GREETING $TOKEN"; pwd; sleep 0.3; echo to-stderr >&2; exit 3']
            workdir: /srv
          env: {GREETING: hello, TOKEN: "$S:token"}
          scale: {mode: fixed, replicas: 1}
        """,
        secrets={"token": "s3cr3t"},
    )["hello"]
    target = job.workload_id(1)
    await docker_driver.create(job, 1, "rev-1")
    status = await exited(docker_driver, target)
    assert status.exit_code == 3

    out = await lines(docker_driver, target)
    assert out == ["hello s3cr3t", "/srv", "to-stderr"]
    assert await lines(docker_driver, target, tail=1) == ["to-stderr"]
    followed = [line async for line in docker_driver.logs(target, follow=True)]
    assert followed == out

    observed = await docker_driver.observe([deployment_name])
    assert [(w.status, w.exit_code) for w in observed.workloads] == [("exited", 3)]
    assert "s3cr3t" not in json.dumps(observed.configs)


async def test_pull_policies_with_a_local_image_and_no_registry(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    spec = """
    missing:
      image: {name: "zlayer-test/absent:1", pull_policy: never}
      scale: {mode: fixed, replicas: 1}
    local:
      image: {name: IMAGE, pull_policy: newer}
      scale: {mode: fixed, replicas: 1}
      command: {entrypoint: [sh, -c], args: [exit 0]}
    remote:
      image: {name: IMAGE, pull_policy: always}
      scale: {mode: fixed, replicas: 1}
    """
    found = services(deployment_name, test_image, spec)
    with pytest.raises(PermanentDriverError) as caught:
        await docker_driver.create(found["missing"], 1, "rev-1")
    message = str(caught.value)
    assert message.startswith(f"{deployment_name}/missing/1: create failed: ")
    assert "zlayer-test/absent:1" in message
    assert "pull_policy is never" in message
    assert await deployment_containers(docker_driver, deployment_name) == []
    assert await deployment_networks(docker_driver, deployment_name) == []

    # ``always`` needs the registry, which this machine cannot reach.
    with pytest.raises(DriverError) as pulled:
        await docker_driver.create(found["remote"], 1, "rev-1")
    assert str(pulled.value).startswith(
        f"{deployment_name}/remote/1: create (pull {test_image}) failed: "
    )
    assert await deployment_containers(docker_driver, deployment_name) == []

    # ``newer`` tries the (unreachable) registry, then uses the local image.
    await docker_driver.create(found["local"], 1, "rev-1")
    assert await deployment_containers(docker_driver, deployment_name) == [
        f"{deployment_name}-local-1"
    ]


async def test_each_replica_publishes_its_target_port_on_loopback_for_the_proxy(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    """The managed proxy listens on the public port; the engine does not. It reaches
    each replica at a loopback port the engine chose, which ``address`` names."""
    port = free_port()
    web = services(
        deployment_name,
        test_image,
        f"""
        web:
          image: {{name: IMAGE}}
          command: {{entrypoint: [httpd], args: [-f, -p, "8080", -h, /srv]}}
          stop_grace_period: 1s
          endpoints:
            - {{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}
          scale: {{mode: fixed, replicas: 2}}
        """,
    )["web"]
    await docker_driver.create(web, 1, "rev-1")
    await docker_driver.create(web, 2, "rev-1")
    addresses = [await docker_driver.address(web.workload_id(r), 8080) for r in (1, 2)]
    assert [host for host, _ in addresses] == ["127.0.0.1", "127.0.0.1"]
    assert len({published for _, published in addresses}) == 2
    assert port not in {published for _, published in addresses}

    for _, published in addresses:

        async def serves(published: int = published) -> bool:
            try:
                return "zlayer demo" in await http_get("127.0.0.1", published, "/index.html")
            except OSError:
                return False

        await wait_for_async(serves, f"the replica on :{published} to serve", 20, interval=0.1)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the engine published the public port"
    info = await docker_driver.docker.containers.container(f"{deployment_name}-web-1").show()
    assert info["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }
    assert info["Config"]["Labels"]["zlayer.publish"] == "proxy"
    assert info["Config"]["StopTimeout"] == 1


async def test_service_name_resolves_inside_the_deployment_network(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    found = services(
        deployment_name,
        test_image,
        """
        server:
          image: {name: IMAGE}
          command: {entrypoint: [httpd], args: [-f, -p, "8080", -h, /srv]}
          stop_grace_period: 1s
          endpoints: [{name: http, protocol: http, port: 8080}]
          scale: {mode: fixed, replicas: 1}
        client:
          image: {name: IMAGE}
          command:
            entrypoint: [sh, -c]
            args:
              - |
                for i in $(seq 50); do
                  wget -qO- http://server:8080/ && wget -qO- http://server-1:8080/ && exit 0
                  sleep 0.2
                done
                exit 1
          scale: {mode: fixed, replicas: 1}
        """,
    )
    await docker_driver.create(found["server"], 1, "rev-1")
    await docker_driver.create(found["client"], 1, "rev-1")
    client = found["client"].workload_id(1)
    status = await exited(docker_driver, client)
    assert status.exit_code == 0, await lines(docker_driver, client)
    assert await lines(docker_driver, client) == ["<p>zlayer demo</p>"] * 2

    # From the host, an unpublished port is reached at the container's own address.
    host, port = await docker_driver.address(found["server"].workload_id(1), 8080)
    assert (host != "127.0.0.1", port) == (True, 8080)

    # The network lives as long as a container of the deployment does.
    network = f"zlayer-{deployment_name}"
    await docker_driver.remove(client)
    assert await deployment_networks(docker_driver, deployment_name) == [network]
    await docker_driver.remove(found["server"].workload_id(1))
    assert await deployment_networks(docker_driver, deployment_name) == []


async def test_stop_start_restart_remove(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    worker = services(
        deployment_name,
        test_image,
        f"""
        worker:
          image: {{name: IMAGE}}
          scale: {{mode: fixed, replicas: 1}}
          stop_grace_period: 5s
          {SLEEPER}
        """,
    )["worker"]
    target = worker.workload_id(1)
    await docker_driver.create(worker, 1, "rev-1")
    await ready(docker_driver, target)
    await docker_driver.stop(target)
    status = await docker_driver.status(target)
    assert status is not None
    assert (status.status, status.exit_code) == ("exited", 0)

    with pytest.raises(TemporaryDriverError, match="no address yet"):
        await docker_driver.address(target, 80)

    await docker_driver.start(target)
    running = await docker_driver.status(target)
    assert running is not None
    assert (running.status, running.exit_code) == ("running", None)

    await docker_driver.restart(target)
    restarted = await docker_driver.status(target)
    assert restarted is not None
    assert restarted.status == "running"
    assert restarted.started_at != running.started_at

    await docker_driver.remove(target)
    assert await docker_driver.status(target) is None
    assert (await docker_driver.observe([deployment_name])).workloads == ()
    assert await deployment_networks(docker_driver, deployment_name) == []
    for action in (docker_driver.remove, docker_driver.stop, docker_driver.start):
        with pytest.raises(
            NotFound, match=rf"^{deployment_name}/worker/1: \w+ failed: no container"
        ):
            await action(target)


async def test_replace_leaves_one_container_with_the_new_config(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    text = f"""
    web:
      image: {{name: IMAGE}}
      env: {{VERSION: "VALUE"}}
      scale: {{mode: fixed, replicas: 2}}
      stop_grace_period: 2s
      {SLEEPER}
    """
    old = services(deployment_name, test_image, text.replace("VALUE", "1"))["web"]
    new = services(deployment_name, test_image, text.replace("VALUE", "2"))["web"]
    assert old.fingerprint != new.fingerprint
    await docker_driver.create(old, 1, "rev-1")
    await docker_driver.create(old, 2, "rev-1")

    await docker_driver.replace(new, 1, "rev-2")
    observed = await docker_driver.observe([deployment_name])
    assert [(w.replica, w.fingerprint, w.revision, w.status) for w in observed.workloads] == [
        (1, new.fingerprint, "rev-2", "running"),
        (2, old.fingerprint, "rev-1", "running"),
    ]
    assert observed.configs == {
        old.fingerprint: dict(old.config),
        new.fingerprint: dict(new.config),
    }
    assert await deployment_containers(docker_driver, deployment_name) == [
        f"{deployment_name}-web-1",
        f"{deployment_name}-web-2",
    ]

    # A replica that is gone meanwhile is created (a rollback after a failed start).
    await docker_driver.remove(old.workload_id(2))
    await docker_driver.replace(new, 2, "rev-2")
    observed = await docker_driver.observe([deployment_name])
    assert [(w.replica, w.fingerprint) for w in observed.workloads] == [
        (1, new.fingerprint),
        (2, new.fingerprint),
    ]


async def test_register_and_unregister_a_definition(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    text = """
    report:
      rtype: cron
      schedule: "SCHEDULE"
      image: {name: IMAGE}
      command: {entrypoint: [sh, -c, echo report]}
    """
    first = services(deployment_name, test_image, text.replace("SCHEDULE", "0 0 2 * * *"))
    second = services(deployment_name, test_image, text.replace("SCHEDULE", "0 30 2 * * *"))
    report = first["report"]
    await docker_driver.register(report, "rev-1")
    observed = await docker_driver.observe([deployment_name])
    assert [(w.id, w.status, w.fingerprint) for w in observed.workloads] == [
        (WorkloadId(deployment_name, "report", None), "registered", report.fingerprint)
    ]
    assert observed.configs[report.fingerprint]["schedule"] == "0 0 2 * * *"
    info = await docker_driver.docker.containers.container(f"{deployment_name}-report").show()
    assert info["State"]["Status"] == "created"

    await docker_driver.register(second["report"], "rev-2")
    observed = await docker_driver.observe([deployment_name])
    assert [(w.revision, w.fingerprint) for w in observed.workloads] == [
        ("rev-2", second["report"].fingerprint)
    ]

    target = report.workload_id(None)
    await docker_driver.unregister(target)
    assert (await docker_driver.observe([deployment_name])).workloads == ()
    assert await deployment_networks(docker_driver, deployment_name) == []
    with pytest.raises(NotFound):
        await docker_driver.unregister(target)


async def test_conflicts_and_foreign_containers(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    found = services(
        deployment_name,
        test_image,
        f"""
        web:
          image: {{name: IMAGE}}
          scale: {{mode: fixed, replicas: 1}}
          {SLEEPER}
        """,
    )
    web = found["web"]
    await docker_driver.create(web, 1, "rev-1")
    with pytest.raises(Conflict, match=rf"^{deployment_name}/web/1: create failed: "):
        await docker_driver.create(web, 1, "rev-1")
    assert await docker_driver.status(web.workload_id(2)) is None

    # A container zlayer did not make, under a workload's name, is never touched.
    foreign = f"{deployment_name}-web-2"
    await docker_driver.docker.containers.create(
        {"Image": test_image, "Labels": {"zlayer.deployment": deployment_name}}, name=foreign
    )
    with pytest.raises(Conflict, match="is not this zlayer workload"):
        await docker_driver.remove(web.workload_id(2))
    assert await docker_driver.status(web.workload_id(2)) is None
    assert foreign in await deployment_containers(docker_driver, deployment_name)
    assert [w.replica for w in (await docker_driver.observe([deployment_name])).workloads] == [1]


async def test_host_network_address(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    web = services(
        deployment_name,
        test_image,
        f"""
        web:
          image: {{name: IMAGE}}
          network_mode: host
          scale: {{mode: fixed, replicas: 1}}
          {SLEEPER}
        """,
    )["web"]
    await docker_driver.create(web, 1, "rev-1")
    assert await docker_driver.address(web.workload_id(1), 9999) == ("127.0.0.1", 9999)
    assert await deployment_networks(docker_driver, deployment_name) == []


async def test_storage_kinds(
    docker_driver: DockerDriver, deployment_name: str, test_image: str, tmp_path: Path
) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    text = f"""
    app:
      image: {{name: IMAGE}}
      command:
        entrypoint: [sh, -c]
        args:
          - |
            cat /h/in.txt
            touch /h/new 2>/dev/null && echo bind-writable || echo bind-readonly
            cat /data/f 2>/dev/null || echo no-data-yet
            echo kept > /data/f
            grep ' /t ' /proc/mounts | cut -d' ' -f3
            touch /anon/x && echo anon-ok
      storage:
        - {{type: bind, source: "{tmp_path}", target: /h, readonly: true}}
        - {{type: named, name: data, target: /data}}
        - {{type: tmpfs, target: /t, size: 1Mi, mode: 1777}}
        - {{type: anonymous, target: /anon}}
      scale: {{mode: fixed, replicas: 1}}
    """
    app = services(deployment_name, test_image, text)["app"]
    target = app.workload_id(1)
    await docker_driver.create(app, 1, "rev-1")
    assert (await exited(docker_driver, target)).exit_code == 0
    assert await lines(docker_driver, target) == [
        "from the host",
        "bind-readonly",
        "no-data-yet",
        "tmpfs",
        "anon-ok",
    ]
    info = await docker_driver.docker.containers.container(f"{deployment_name}-app-1").show()
    anonymous = [m["Name"] for m in info["Mounts"] if m["Destination"] == "/anon"]
    assert len(anonymous) == 1

    await docker_driver.remove(target)
    volume = await docker_driver.docker.volumes.list(  # type: ignore[no-untyped-call]
        filters={"label": [f"zlayer.deployment={deployment_name}"]}
    )
    assert [(v["Name"], v["Labels"]["zlayer.volume"]) for v in volume["Volumes"]] == [
        (f"{deployment_name}-data", "data")
    ]
    all_volumes = await docker_driver.docker.volumes.list()  # type: ignore[no-untyped-call]
    assert anonymous[0] not in {v["Name"] for v in all_volumes["Volumes"]}

    # The named volume is data: the next replica finds it.
    await docker_driver.create(app, 1, "rev-1")
    await exited(docker_driver, target)
    assert (await lines(docker_driver, target))[2] == "kept"


async def test_limits_use_engine_facts(docker_driver: DockerDriver, test_image: str) -> None:
    service = services(
        "zt-limits",
        test_image,
        """
        web:
          image: {name: IMAGE}
          resources: {gpu: {count: 1}}
          storage: [{type: s3, bucket: b, target: /s3}]
          init: {steps: [{id: get, uses: init.s3_pull, with: {bucket: b}}]}
        """,
    )["web"]
    limits = docker_driver.limits(service)
    assert limits.errors == (
        "zt-limits/web: init step 'get' uses init.s3_pull, which the docker runtime cannot "
        "run (no S3 support)",
    )
    assert any("no GPU runtime" in w for w in limits.warnings)
    assert any("no S3 mounts" in w for w in limits.warnings)
    assert docker_driver.facts.ncpu >= 1


async def test_an_engine_that_does_not_answer_is_a_temporary_error(docker_url: str) -> None:
    with pytest.raises(TemporaryDriverError, match=r"^docker: connect failed"):
        async with DockerDriver("unix:///nonexistent/docker.sock"):
            pass


async def test_a_replica_that_cannot_be_made_leaves_nothing_behind(
    docker_driver: DockerDriver, deployment_name: str, test_image: str, tmp_path: Path
) -> None:
    found = services(
        deployment_name,
        test_image,
        f"""
        nostart:
          image: {{name: IMAGE}}
          command: {{entrypoint: [/no/such/program]}}
          scale: {{mode: fixed, replicas: 1}}
        nocreate:
          image: {{name: IMAGE}}
          storage: [{{type: bind, source: "{tmp_path}/absent", target: /x}}]
          scale: {{mode: fixed, replicas: 1}}
        """,
    )
    with pytest.raises(
        PermanentDriverError, match=rf"^{deployment_name}/nostart/1: start failed: "
    ):
        await docker_driver.create(found["nostart"], 1, "rev-1")
    with pytest.raises(
        PermanentDriverError, match=rf"^{deployment_name}/nocreate/1: create failed: "
    ):
        await docker_driver.create(found["nocreate"], 1, "rev-1")
    assert await deployment_containers(docker_driver, deployment_name) == []
    assert await deployment_networks(docker_driver, deployment_name) == []


async def test_following_logs_of_a_running_replica(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    ticker = services(
        deployment_name,
        test_image,
        """
        ticker:
          image: {name: IMAGE}
          command:
            entrypoint: [sh, -c]
            args:
              - |
                trap "exit 0" TERM; i=0
                while :; do echo tick $i; i=$((i+1)); sleep 0.1 & wait; done
          scale: {mode: fixed, replicas: 1}
        """,
    )["ticker"]
    target = ticker.workload_id(1)
    await docker_driver.create(ticker, 1, "rev-1")
    seen: list[str] = []
    # An async generator: closing it when done early ends the request to the engine.
    follow = cast(AsyncGenerator[str, None], docker_driver.logs(target, follow=True, tail=0))
    async with contextlib.aclosing(follow) as stream:
        async for line in stream:
            seen.append(line)
            if len(seen) == 3:
                break
    first = int(seen[0].split()[1])
    assert seen == [f"tick {first}", f"tick {first + 1}", f"tick {first + 2}"]


async def test_a_container_started_before_this_boot_was_stopped_by_a_reboot(
    docker_driver: DockerDriver, deployment_name: str, test_image: str
) -> None:
    """The engine's StartedAt against the host's boot: a stopped container started
    before the boot is ``stopped by reboot`` (started again, no crash), one started
    after it and exited 0 ``completed``."""
    assert docker_driver.booted_at is not None  # an engine on this host
    done = services(
        deployment_name,
        test_image,
        """
        done:
          image: {name: IMAGE}
          command: {entrypoint: [sh, -c, 'exit 0']}
          scale: {mode: fixed, replicas: 1}
        """,
    )["done"]
    target = done.workload_id(1)
    await docker_driver.create(done, 1, "rev-1")
    status = await exited(docker_driver, target)
    assert status.completed and not status.stopped_by_reboot
    (observed,) = (await docker_driver.observe([deployment_name])).workloads
    assert observed.state == "completed"
    docker_driver.booted_at = 4_102_444_800.0  # the host "booted" after it ran (2100)
    (observed,) = (await docker_driver.observe([deployment_name])).workloads
    assert observed.stopped_by_reboot and not observed.completed
    assert observed.state == "stopped by reboot"
    again = await docker_driver.status(target)
    assert again is not None and again.stopped_by_reboot
