"""Public endpoints on Docker, through the managed HAProxy: real containers on the
private engine (tests/with-docker), real HAProxy on loopback, requests from the host.
Each replica publishes its target port on loopback for the proxy only; every replica
answers with its own container address, so a test sees who served.

The same cases as tests/cli/test_routes_process.py, on the other runtime.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.routing.proxy import executable
from tests.cli.test_apply_docker import Host, docker
from tests.cli.test_routes_process import web
from tests.conftest import REPO
from tests.docker_support import (  # noqa: F401
    deployment_name,
    docker_url,
    remove_deployment,
)
from tests.load_support import Load, killed_under_load
from tests.routing.test_proxy import free_port, get
from tests.support import stop_proxy, unavailable, wait_for

pytestmark = pytest.mark.timeout(300)

PYTHON_IMAGE = "zlayer-example/python:3"
"""The host's Python as an image (contrib/docker/import-python; tests/with-docker
imports it)."""


@pytest.fixture
def host(tmp_path: Path, docker_url: str, deployment_name: str) -> Iterator[Host]:  # noqa: F811
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    found = Host(tmp_path, docker_url, PYTHON_IMAGE, deployment_name)
    try:
        yield found
    finally:
        stop_proxy(found.state)


def write(host: Host, *services: str) -> None:
    body = "".join("  " + line + "\n" for s in services for line in s.splitlines())
    (host.specs / "app.yaml").write_text(
        f"version: v1\ndeployment: {host.deployment}\nservices:\n{body}"
    )


def server(name: str, port: int, replicas: int, target: int = 9000, extra: str = "") -> str:
    return web(name, port, replicas, target, extra, python="python3")


def apply(host: Host) -> str:
    run = host.run("apply", str(host.specs), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.mark.slow
def test_three_replicas_serve_through_the_public_port(host: Host) -> None:
    port = free_port()
    write(host, server("web", port, 3))
    out = apply(host)
    assert "warning" not in out.lower(), out
    for replica in (1, 2, 3):
        assert f"{host.deployment}/web/{replica} in rotation on :{port}" in out, out
    served = Counter(get(port)[1].split()[1] for _ in range(30))
    assert len(served) == 3, served  # three container addresses

    # The engine publishes only loopback ports of its own choice, for the proxy.
    bindings = [c["HostConfig"]["PortBindings"] for c in host.containers().values()]
    assert bindings == [{"9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}] * 3
    again = apply(host)
    assert "No changes." in again and "route:" not in again, again

    # Scale down: the replica that leaves leaves the rotation first.
    path = host.specs / "app.yaml"
    path.write_text(path.read_text().replace("replicas: 3", "replicas: 1"))
    down = apply(host)
    assert f"route: {host.deployment}/web/2 out of rotation" in down, down
    assert len({get(port)[1].split()[1] for _ in range(10)}) == 1

    destroyed = host.run("destroy", host.deployment, "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stderr
    assert "proxy stopped: no routed endpoint left" in destroyed.stdout
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the public port still answers"


@pytest.mark.slow
def test_hosts_and_paths_route_between_services_on_one_port(host: Host) -> None:
    port = free_port()
    write(
        host,
        server("shop", port, 1, 9001, ", host: shop.example.test"),
        server("api", port, 2, 9002, ", path: /api"),
    )
    out = apply(host)
    assert "warning" not in out.lower(), out
    assert get(port, "/", "shop.example.test")[1].startswith("shop ")
    assert get(port, "/api/items")[1].startswith("api ")
    assert get(port, "/elsewhere") == (404, "no route")


@pytest.mark.slow
def test_a_container_that_publishes_its_public_port_itself_is_replaced(
    host: Host,
    docker_url: str,  # noqa: F811
) -> None:
    """A replica made before public endpoints went through the proxy (it publishes the
    public port itself, without ``zlayer.publish``): the plan replaces it, saying why,
    and after the apply the proxy serves the port."""
    port = free_port()
    write(host, server("web", port, 1))
    apply(host)
    name = f"{host.deployment}-web-1"
    info = host.containers()[name]
    labels = {k: v for k, v in info["Config"]["Labels"].items() if k != "zlayer.publish"}
    stop_proxy(host.state)  # an older zlayer ran no proxy, and kept no routes
    shutil.rmtree(host.state / "proxy" / "routes")
    docker(docker_url, "rm", "-f", name)
    label_args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    config = info["Config"]
    docker(
        docker_url, "create", "--name", name, "--network", f"zlayer-{host.deployment}",
        "-p", f"127.0.0.1:{port}:9000", *label_args,
        "--entrypoint", config["Entrypoint"][0], config["Image"],
        *config["Entrypoint"][1:], *config["Cmd"],
    )  # fmt: skip
    docker(docker_url, "start", name)

    plan = host.plan()
    reasons = {a["id"]: a["reason"] for a in plan["actions"]}
    assert list(reasons) == [
        f"replace:{host.deployment}/web/1",
        f"route:{host.deployment}/web:http",
    ], plan["actions"]
    assert (
        "public endpoints move to the managed proxy" in reasons[f"replace:{host.deployment}/web/1"]
    )
    out = apply(host)
    assert f"{host.deployment}/web/1 in rotation on :{port}" in out, out
    assert get(port)[1].startswith("web ")
    assert host.containers()[name]["HostConfig"]["PortBindings"] == {
        "9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }
    assert host.plan()["actions"] == []


@pytest.mark.slow
def test_a_deployment_pruned_from_the_specs_takes_its_routes_along(
    host: Host,
    docker_url: str,  # noqa: F811
) -> None:
    port = free_port()
    write(host, server("web", port, 1))
    other = f"{host.deployment}x"
    command = '["python3", "-c", "import time; time.sleep(600)"]'
    sleeper = f'{{"image": {{"name": "IMAGE"}}, "command": {{"entrypoint": {command}}}}}'
    (host.specs / "other.yaml").write_text(
        f'{{"version": "v1", "deployment": "{other}", "services": {{"idle": {sleeper}}}}}'
        .replace('"IMAGE"', f'"{PYTHON_IMAGE}"')
    )  # fmt: skip
    try:
        apply(host)
        assert get(port)[1].startswith("web ")
        (host.specs / "app.yaml").unlink()
        out = apply(host)
        assert f"prune      {host.deployment}/web/1" in out, out
        assert "proxy stopped: no routed endpoint left" in out, out
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "the pruned route still answers"
        assert not (host.state / "proxy" / "routes" / f"{host.deployment}.json").exists()
    finally:
        remove_deployment(docker_url, other)


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 3])
def test_an_env_change_rolls_out_with_no_failed_request(host: Host, replicas: int) -> None:
    port = free_port()
    write(host, server("web", port, replicas))
    apply(host)
    path = host.specs / "app.yaml"
    path.write_text(path.read_text().replace("env: {}", 'env: {VERSION: "2"}'))
    with Load(port) as load:
        out = apply(host)
        load.more()
    assert f"surge replica {host.deployment}/web/{replicas + 1}" in out, out
    assert load.failures == [], (load.failures, out)
    assert sorted(host.containers()) == [
        f"{host.deployment}-web-{i}" for i in range(1, replicas + 1)
    ]
    assert host.plan()["actions"] == []


@pytest.mark.slow
def test_a_new_config_that_never_gets_healthy_rolls_back_with_no_failed_request(
    host: Host,
) -> None:
    port = free_port()
    write(host, server("web", port, 1))
    apply(host)
    before = host.containers()[f"{host.deployment}-web-1"]["Id"]
    path = host.specs / "app.yaml"
    path.write_text(path.read_text().replace("'0.0.0.0', 9000", "'0.0.0.0', 9001"))
    with Load(port) as load:
        run = host.run("apply", str(host.specs), "--auto-approve")
        load.more()
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"surge replica {host.deployment}/web/2 not healthy" in run.stdout, run.stdout
    assert load.failures == [], (load.failures, run.stdout)
    assert {n: c["Id"] for n, c in host.containers().items()} == {
        f"{host.deployment}-web-1": before
    }


@pytest.mark.slow
def test_an_apply_killed_mid_swap_leaves_a_state_the_next_plan_repairs(host: Host) -> None:
    """``kill -9`` of apply while its surge replica serves: no replica is lost, and the
    next plan removes the surge (it is beyond the count) and finishes the replace."""
    port = free_port()
    write(host, server("web", port, 1))
    apply(host)
    path = host.specs / "app.yaml"
    path.write_text(path.read_text().replace("env: {}", 'env: {VERSION: "2"}'))
    surge = f"{host.deployment}-web-2"
    with Load(port) as load:
        process = subprocess.Popen(
            host.command("apply", str(host.specs), "--auto-approve"),
            cwd=REPO, env=host.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(
                lambda: host.containers().get(surge, {}).get("State", {}).get("Running"),
                "the surge replica to run",
                120,
                interval=0.1,
            )
        finally:
            process.kill()
            process.wait()
        load.more()
        plan = host.plan()
        reasons = {a["id"]: a["reason"] for a in plan["actions"]}
        assert f"remove:{host.deployment}/web/2" in reasons, plan["actions"]
        out = apply(host)
        load.more()
    assert load.failures == [], (load.failures, out)
    assert sorted(host.containers()) == [f"{host.deployment}-web-1"]
    assert host.plan()["actions"] == []
    assert get(port)[1].startswith("web ")


def client(name: str, depends: str) -> str:
    """A container that only runs, started after ``depends`` is in rotation; the tests
    send requests from inside it (``docker exec``)."""
    return textwrap.dedent(
        f"""\
          {name}:
            image: {{name: "{PYTHON_IMAGE}"}}
            command:
              entrypoint: ["python3", "-c"]
              args: ["import time; time.sleep(3600)"]
            depends: [{{service: {depends}, condition: ready, timeout: 60s}}]
        """
    )


def internal(name: str, port: int, replicas: int, target: int, env: str = "{}") -> str:
    """``server`` with its endpoint internal, at ``port`` ≠ ``target``."""
    return (
        web(name, target, replicas, target, python="python3", env=env)
        .replace("expose: public", "expose: internal")
        .replace(f"port: {target}, target_port: {target}", f"port: {port}, target_port: {target}")
    )


FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print('status', e.code)\n"
    "except OSError as e:\n"
    "    print('error', e)\n"
)


def inside(host: Host, container: str, url: str) -> str:
    """What ``url`` answers inside ``container`` (its names, its network)."""
    env = {**os.environ, "DOCKER_HOST": host.url}
    done = subprocess.run(
        ["docker", "exec", container, "python3", "-c", FETCH, url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()


@pytest.mark.slow
def test_an_internal_endpoint_is_balanced_by_name_at_its_port(host: Host) -> None:
    """``expose: internal`` with ``port`` 80 ≠ ``target_port`` 9000 on Docker: inside
    the deployment, ``http://api/`` reaches both replicas through the proxy on the
    network's gateway; ``api-1`` still reaches the container itself. A second internal
    service added later resolves in the running client, which is not replaced."""
    write(host, internal("api", 80, 2, 9000), client("client", "api"))
    out = apply(host)
    assert "warning" not in out.lower(), out
    assert f"+ route      {host.deployment}/api:http  new route: http api:80 (internal)" in out
    # depends condition ready: the client is created once api is in rotation
    lines = out.splitlines()
    routed = next(i for i, x in enumerate(lines) if f"✓ route:{host.deployment}/api:http" in x)
    started = next(i for i, x in enumerate(lines) if f"… create:{host.deployment}/client/1" in x)
    assert routed < started, out
    for replica in (1, 2):
        assert f"{host.deployment}/api/{replica} in rotation" in lines[routed], lines[routed]
    name = f"{host.deployment}-client-1"
    served = Counter(inside(host, name, "http://api/").split(" ")[1] for _ in range(12))
    assert len(served) == 2, served  # both replicas, by their own addresses
    direct = inside(host, name, "http://api-1:9000/direct")
    assert direct.startswith("api ") and direct.endswith(" /direct"), direct
    assert host.plan()["actions"] == []
    labels = host.containers()[f"{host.deployment}-api-1"]["Config"]["Labels"]
    assert labels["zlayer.internal"] == "proxy" and labels["zlayer.hosts"] == "managed"

    before = host.containers()[name]["Id"]
    (host.specs / "app.yaml").write_text(
        (host.specs / "app.yaml").read_text()
        + textwrap.indent(internal("billing", 81, 1, 9001), "  ")
    )
    out = apply(host)
    assert f"replace    {host.deployment}/client" not in out, out
    assert host.containers()[name]["Id"] == before
    assert inside(host, name, "http://billing:81/x").startswith("billing "), out
    assert host.plan()["actions"] == []


LOOP = (
    "import os, sys, time, urllib.request\n"
    "ok = failed = 0\n"
    "deadline = time.time() + float(sys.argv[2])\n"
    "while time.time() < deadline and not os.path.exists('/tmp/stop'):\n"
    "    try:\n"
    "        urllib.request.urlopen(sys.argv[1], timeout=10).read(); ok += 1\n"
    "    except Exception as error:\n"
    "        failed += 1; print('failed', repr(error), flush=True)\n"
    "    time.sleep(0.02)\n"
    "print('ok', ok, 'failed', failed, flush=True)\n"
)


@pytest.mark.slow
def test_an_internal_endpoint_is_replaced_with_no_failed_request(host: Host) -> None:
    """A request loop inside the deployment (from the client, by name) while an env
    change replaces api's only replica: start-first behind the proxy."""
    write(host, internal("api", 80, 1, 9000, env="{V: a}"), client("client", "api"))
    apply(host)
    name = f"{host.deployment}-client-1"
    env = {**os.environ, "DOCKER_HOST": host.url}
    loop = subprocess.Popen(
        ["docker", "exec", name, "python3", "-c", LOOP, "http://api/", "240"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        path = host.specs / "app.yaml"
        path.write_text(path.read_text().replace("{V: a}", "{V: b}"))
        out = apply(host)
        assert f"surge replica {host.deployment}/api/2" in out, out
    finally:
        docker(host.url, "exec", name, "python3", "-c", "open('/tmp/stop', 'w')")
        output, _ = loop.communicate(timeout=60)
    last = output.strip().splitlines()[-1].split()
    assert last[0] == "ok" and int(last[1]) > 10, output
    assert last[3] == "0", output


def rotation(host: Host, service: str) -> dict[int, str]:
    """Each replica's server state in ``service``'s route, from ``zlayer status``."""
    status = host.run("status")
    rows = [line.split() for line in status.stdout.splitlines()]
    return {
        int(row[2]): row[3]
        for row in rows
        if len(row) > 3 and row[0] == f"{host.deployment}/{service}/http" and row[2].isdigit()
    }


@pytest.mark.slow
def test_a_replica_killed_under_load_leaves_rotation(host: Host) -> None:
    """``docker kill`` of one of three replicas while requests flow: HAProxy's own
    check takes it out of rotation (no zlayer process runs meanwhile), and from then
    on every request is served by the two others."""
    port = free_port()
    write(host, server("web", port, 3))
    apply(host)
    assert rotation(host, "web") == {1: "UP", 2: "UP", 3: "UP"}
    load = killed_under_load(
        port,
        lambda: docker(host.url, "kill", f"{host.deployment}-web-2"),
        lambda: rotation(host, "web").get(2) not in ("UP", None),
    )
    assert load.failures == [], load.failures
    served = Counter(get(port)[1].split()[1] for _ in range(20))
    assert len(served) == 2, served
