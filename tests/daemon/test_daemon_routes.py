"""The daemon keeps public endpoints served: real daemon, process runtime (root),
real HAProxy on loopback. It syncs the proxy on every reconcile, so a proxy killed
behind its back is started again with its rotation at the next resync."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from reconciler.routing.proxy import executable
from tests.cli.test_routes_process import web
from tests.daemon_support import Daemon
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
