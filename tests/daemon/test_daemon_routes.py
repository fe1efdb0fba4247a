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
from pathlib import Path

import pytest

from reconciler.routing.proxy import executable
from tests.cli.test_routes_process import web
from tests.daemon_support import Daemon, observed_workloads
from tests.routing.test_proxy import free_port, get
from tests.support import needs_root, unavailable, wait_for

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
    code = SICKLY.replace("SICK", repr(str(sick)))
    specs = daemon_host.root / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1
            deployment: droute
            services:
              web:
                image: {{name: "zlayer-example/python:3"}}
                command:
                  entrypoint: ["{sys.executable}", "-c"]
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
        )
    )
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    labels = f'deployment="droute",service="web",endpoint="http",port="{port}"'

    def rotation(replica: int) -> str | None:
        for line in daemon_host.metrics().splitlines():
            if line.startswith(f'zlayer_route_in_rotation{{{labels},replica="{replica}"}}'):
                return line.split()[-1]
        return None

    try:
        daemon_host.start()
        wait_for(lambda: rotation(1) == "1" and rotation(2) == "1", "both replicas in rotation", 90)
        record = json.loads(
            (
                daemon_host.state / "process/deployments/droute/services/web/2/record.json"
            ).read_text()
        )
        second = record["network"]["address"]
        before = observed_workloads(daemon_host)["droute/web/2"]
        assert before["status"] == "running"

        def unchanged() -> bool:
            now = observed_workloads(daemon_host)["droute/web/2"]
            return now["status"] == "running" and now["started_at"] == before["started_at"]

        (sick / second).touch()

        def isolated() -> list[dict[str, object]]:
            return [
                e for e in daemon_host.events(kind="route")
                if "droute/web/2 out of rotation: isolated" in str(e["message"])
            ]  # fmt: skip

        wait_for(isolated, "web/2 isolated out of rotation", 90)
        assert rotation(2) == "0" and rotation(1) == "1"
        assert {get(port)[1] for _ in range(10)} == {f"web {record_of(daemon_host, 1)}"}
        assert unchanged()  # not restarted, not stopped

        # Healthy again: HAProxy's check passes, but the replica stays isolated.
        (sick / second).unlink()

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://{second}:9000/health", timeout=5) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(healthy, "web/2 to answer its health check again", 30)
        done = len(daemon_host.wait_reconciles(1))
        daemon_host.wait_reconciles(done + 3)  # each syncs the proxy
        assert rotation(2) == "0"
        assert unchanged()

        retried = daemon_host.zlayer("daemon", "retry")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        wait_for(lambda: rotation(2) == "1", "web/2 back in rotation after retry", 60)
    finally:
        from tests.process_support import remove_networks

        daemon_host.close()
        remove_networks("droute")


def record_of(daemon: Daemon, replica: int) -> str:
    path = daemon.state / f"process/deployments/droute/services/web/{replica}/record.json"
    return str(json.loads(path.read_text())["network"]["address"])
