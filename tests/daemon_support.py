"""Running a real ``zlayer daemon`` in tests: a subprocess with its own state
directory, config file and API socket; talked to over that socket; killed by its
pid (and what it started, by its records) however the test ends.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.client import call
from reconciler.daemon.journal import Journal
from reconciler.errors import NoDaemon
from tests.conftest import REPO
from tests.support import wait_for

__all__ = ["Daemon", "daemon_host", "git"]


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


class Daemon:
    """One daemon subprocess at a time on ``state``; start/kill/restart it at will."""

    def __init__(self, root: Path, runtime: str, env: dict[str, str]) -> None:
        self.root = root
        self.state = root / "state"
        self.socket = root / "api.sock"
        self.config = root / "config.toml"
        self.log = root / "daemon.log"
        self.runtime = runtime
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []

    def configure(self, daemon: str = "", backoff: str = "", autoscale: str = "") -> None:
        """Write the config file: ``[daemon]``, ``[backoff]`` and ``[autoscale]`` lines."""
        text = f'state_dir = "{self.state}"\n\n[daemon]\nsocket = "{self.socket}"\n'
        text += textwrap.dedent(daemon).strip() + "\n"
        for table, lines in (("backoff", backoff), ("autoscale", autoscale)):
            if lines:
                text += f"\n[{table}]\n" + textwrap.dedent(lines).strip() + "\n"
        self.config.write_text(text)

    def start(self, *args: str, wait_ready: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "a daemon already runs"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "daemon", "--config", str(self.config),
                 "--runtime", self.runtime, *args],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.started.append(self.proc)
        if wait_ready:
            self.wait_ready()

    def once(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "daemon", "--config", str(self.config),
             "--runtime", self.runtime, "--once", *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def zlayer(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=REPO, env={**self.env, "ZLAYER_CONFIG": str(self.config)},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return call(self.socket, "GET", path, timeout=10)

    def post(self, path: str) -> tuple[int, dict[str, Any]]:
        return call(self.socket, "POST", path, timeout=60)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the daemon exited ({code}):\n{self.output()}")
            try:
                return self.get("/readyz")[0] == 200
            except NoDaemon:
                return False

        wait_for(ready, "the daemon to be ready", timeout)

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status")[1]

    def metrics(self) -> str:
        """``GET /metrics`` over the API socket: Prometheus text."""
        connection = http.client.HTTPConnection("localhost", timeout=10)
        connection.sock = socket.socket(socket.AF_UNIX)
        connection.sock.connect(str(self.socket))
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def reconciles(self) -> list[dict[str, Any]]:
        journal = Journal.in_state_dir(self.state)
        try:
            return journal.reconciles(1000)
        finally:
            journal.close()

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        journal = Journal.in_state_dir(self.state)
        try:
            return journal.events(1000, **filters)
        finally:
            journal.close()

    def runs(self, service: str) -> list[Any]:
        """The journal's runs of the job or cron service ``service`` (newest first)."""
        journal = Journal.in_state_dir(self.state)
        try:
            return journal.runs(limit=100, service=service)
        finally:
            journal.close()

    def wait_reconciles(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Until at least ``count`` reconciles have finished."""
        return wait_for(
            lambda: (done := [r for r in self.reconciles() if r["finished"]]) and
            len(done) >= count and done,
            f"{count} reconciles",
            timeout,
        )  # fmt: skip

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)


def observed_workloads(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """The runtime's workloads, through the daemon's /v1/observed."""
    status, body = daemon.get("/v1/observed")
    assert status == 200, body
    return {
        "/".join(str(p) for p in (w["deployment"], w["service"], w["replica"]) if p is not None): w
        for w in body["workloads"]
    }


@pytest.fixture
def daemon_host(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon on the process runtime (root: host network is enough here), killed with
    everything recorded in its state directory afterwards."""
    from tests.process_support import kill_recorded, remove_networks

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("ZLAYER_RUNTIME", None)
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "process", env)
    try:
        yield daemon
    finally:
        daemon.close()
        made = {p.name for p in (daemon.state / "process" / "deployments").glob("*")}
        kill_recorded(daemon.state)
        for deployment in sorted(made):  # bridged replicas' namespaces and bridges too
            remove_networks(deployment)
        print(daemon.output()[-4000:])
