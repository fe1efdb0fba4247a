"""The daemon keeps public endpoints served: real daemon, process runtime (root),
real HAProxy on loopback. It syncs the proxy on every reconcile, so a proxy killed
behind its back is started again with its rotation at the next resync."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.routing.proxy import executable
from tests.cli.test_apply_docker import docker
from tests.cli.test_routes_process import web
from tests.daemon_support import Daemon, observed_workloads
from tests.docker_support import deployment_name, docker_url  # noqa: F401
from tests.routing.test_proxy import free_port, get
from tests.support import needs_root, stop_proxy, unavailable, wait_for

pytest_plugins = ["tests.daemon_support"]


def answers(port: int) -> str:
    try:
        return get(port)[1]
    except OSError:
        return ""


@pytest.mark.slow
def test_the_daemon_serves_public_endpoints_and_restarts_a_killed_proxy(
    daemon_host: Daemon,
) -> None:
    needs_root("the process runtime's network namespaces")
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    port = free_port()
    specs = daemon_host.root / "specs"
    specs.mkdir()
    body = textwrap.indent(web("web", port, 2), "  ")
    (specs / "app.yaml").write_text(f"version: v1\ndeployment: droute\nservices:\n{body}")
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    with daemon_host.config.open("a") as config:
        config.write('\n[docker]\npublish_address = "127.0.0.1"\n')
    try:
        daemon_host.start()
        first = wait_for(
            lambda: (body := answers(port)).startswith("web ") and body, "web through the proxy", 90
        )
        assert first.split()[2] == "/"
        events = wait_for(lambda: daemon_host.events(kind="route"), "route events")
        assert any(f"droute/web/1 in rotation on :{port}" in e["message"] for e in events)
        labels = f'deployment="droute",service="web",endpoint="http",port="{port}"'
        text = daemon_host.metrics()
        assert f'zlayer_route_in_rotation{{{labels},replica="1"}} 1' in text, text
        assert f'zlayer_route_requests_total{{{labels},replica="' in text
        code, observed = daemon_host.get("/v1/observed")  # routes with HAProxy's counters
        assert code == 200 and observed["routes_managed"] and observed["proxy_running"]
        (route,) = observed["routes"]
        assert (route["service"], route["port"]) == ("web", port)
        assert sorted(s["replica"] for s in route["servers"]) == [1, 2]
        code, plan = daemon_host.get("/v1/plan")
        assert code == 200 and plan["actions"] == [], plan

        pidfile = Path(daemon_host.state) / "proxy" / "haproxy.pid"
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the killed HAProxy to be gone")
        wait_for(lambda: answers(port).startswith("web "), "web served again", 60)
        assert int(pidfile.read_text().split()[0]) != pid

        def starts() -> int:
            return sum(e["message"] == "proxy started" for e in daemon_host.events(kind="route"))

        assert wait_for(lambda: starts() == 2, "the second start journalled")
    finally:
        from tests.process_support import remove_networks

        daemon_host.close()
        remove_networks("droute")


SICKLY = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        me = self.connection.getsockname()[0]\n"
    "        sick = self.path == '/health' and os.path.exists(os.path.join(SICK, me))\n"
    "        body = ('web %s' % me).encode()\n"
    "        self.send_response(500 if sick else 200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 9000), H).serve_forever()\n"
)


def isolate_spec(deployment: str, port: int, entrypoint: str, sick: str, extra: str = "") -> str:
    """web, 2 replicas, ``errors.on_panic: isolate``, sick while ``sick/<its address>``
    exists."""
    code = SICKLY.replace("SICK", repr(sick))
    return textwrap.dedent(
        f"""\
        version: v1
        deployment: {deployment}
        services:
          web:
            image: {{name: "zlayer-example/python:3"}}
            command:
              entrypoint: ["{entrypoint}", "-c"]
              args: [{json.dumps(code)}]
            scale: {{mode: fixed, replicas: 2}}
            endpoints:
              - {{name: http, protocol: http, port: {port}, target_port: 9000,
                  expose: public}}
            health:
              start_grace: 0s
              interval: 1s
              retries: 2
              check: {{type: http, url: "http://localhost:9000/health"}}
            errors: {{on_panic: {{action: isolate}}}}
        """
    ) + textwrap.indent(textwrap.dedent(extra), "    ")


def isolate_scenario(
    daemon: Daemon,
    deployment: str,
    port: int,
    sick: Path,
    address: Callable[[int], str],
    healthy: Callable[[], bool],
) -> None:
    """Replica 2 turns sick: it leaves rotation and keeps running, stays out once its
    check passes again (``healthy``), and comes back after ``zlayer daemon retry``.
    ``address(replica)``: the replica's own address, which it answers with."""
    labels = f'deployment="{deployment}",service="web",endpoint="http",port="{port}"'

    def rotation(replica: int) -> str | None:
        for line in daemon.metrics().splitlines():
            if line.startswith(f'zlayer_route_in_rotation{{{labels},replica="{replica}"}}'):
                return line.split()[-1]
        return None

    daemon.start()
    wait_for(lambda: rotation(1) == "1" and rotation(2) == "1", "both replicas in rotation", 90)
    second = address(2)
    before = observed_workloads(daemon)[f"{deployment}/web/2"]
    assert before["status"] == "running"

    def unchanged() -> bool:
        now = observed_workloads(daemon)[f"{deployment}/web/2"]
        return now["status"] == "running" and now["started_at"] == before["started_at"]

    (sick / second).touch()

    def isolated() -> list[dict[str, object]]:
        return [
            e for e in daemon.events(kind="route")
            if f"{deployment}/web/2 out of rotation: isolated" in str(e["message"])
        ]  # fmt: skip

    wait_for(isolated, "web/2 isolated out of rotation", 90)
    assert rotation(2) == "0" and rotation(1) == "1"
    assert {get(port)[1] for _ in range(10)} == {f"web {address(1)}"}
    assert unchanged()  # not restarted, not stopped

    # Healthy again: HAProxy's check passes, but the replica stays isolated.
    (sick / second).unlink()
    wait_for(healthy, "web/2 to answer its health check again", 30)
    done = len(daemon.wait_reconciles(1))
    daemon.wait_reconciles(done + 3)  # each syncs the proxy
    assert rotation(2) == "0"
    assert unchanged()

    retried = daemon.zlayer("daemon", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    wait_for(lambda: rotation(2) == "1", "web/2 back in rotation after retry", 60)


def answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.mark.slow
def test_an_isolated_replica_leaves_rotation_and_keeps_running(daemon_host: Daemon) -> None:
    """``errors.on_panic: isolate``: a replica failing its health check is not
    restarted; it keeps running, its server stays in maintenance (also once its check
    passes again) until ``zlayer daemon retry``, and the other replica serves."""
    needs_root("the process runtime's network namespaces")
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    port = free_port()
    sick = daemon_host.root / "sick"
    sick.mkdir()
    specs = daemon_host.root / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(isolate_spec("droute", port, sys.executable, str(sick)))
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    try:
        isolate_scenario(
            daemon_host,
            "droute",
            port,
            sick,
            lambda replica: record_of(daemon_host, replica),
            lambda: answers_health(f"http://{record_of(daemon_host, 2)}:9000/health"),
        )
    finally:
        from tests.process_support import remove_networks

        daemon_host.close()
        remove_networks("droute")


@pytest.mark.slow
def test_an_isolated_container_leaves_rotation_and_keeps_running(
    tmp_path: Path,
    docker_url: str,  # noqa: F811
    deployment_name: str,  # noqa: F811
) -> None:
    """The same on Docker: the sick marker directory is bind-mounted into each
    container, which answers with its address on the deployment's network."""
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    env = {**os.environ, "NO_COLOR": "1", "ZLAYER_PUBLISH_ADDRESS": "127.0.0.1"}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "docker", env)
    port = free_port()
    sick = tmp_path / "sick"
    sick.mkdir()
    specs = tmp_path / "specs"
    specs.mkdir()
    storage = f"storage: [{{type: bind, source: {json.dumps(str(sick))}, target: /sick}}]\n"
    (specs / "app.yaml").write_text(
        isolate_spec(deployment_name, port, "python3", "/sick", storage)
    )
    daemon.configure(f'path = "{specs}"\nresync = 1')

    def address(replica: int) -> str:
        name = f"{deployment_name}-web-{replica}"
        return docker(docker_url, "inspect", "-f", INSPECT_ADDRESS, name).strip()

    def published() -> bool:
        name = f"{deployment_name}-web-2"
        hostport = docker(docker_url, "port", name, "9000/tcp").split()[0]
        return answers_health(f"http://{hostport}/health")

    try:
        isolate_scenario(daemon, deployment_name, port, sick, address, published)
    finally:
        daemon.close()
        stop_proxy(daemon.state)


INSPECT_ADDRESS = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"


def record_of(daemon: Daemon, replica: int) -> str:
    path = daemon.state / f"process/deployments/droute/services/web/{replica}/record.json"
    return str(json.loads(path.read_text())["network"]["address"])
