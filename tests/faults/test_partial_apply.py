"""Fault matrix, row 11: an apply cut off by its engine mid-plan. A forwarding socket in
front of the test engine lets three container starts through and then goes away (every
connection closed, the socket removed), as an engine that stops would; the apply fails
and its outcomes say which actions happened; with the engine back, the next plan holds
exactly the rest, and applying it leaves each replica once."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.docker.reader import socket_path
from tests.docker_support import engine_request

pytestmark = [pytest.mark.faults, pytest.mark.docker]
pytest_plugins = ["tests.docker_support"]

STARTS = 3


class CuttingProxy:
    """Forwards ``path`` to the engine's unix socket ``engine``; the ``limit``-th
    container start after the first ``limit`` is not forwarded: the proxy closes every
    connection and removes its socket, so zlayer finds no engine from then on."""

    def __init__(self, engine: str, path: Path, limit: int | None) -> None:
        self.engine, self.path, self.limit = engine, path, limit
        self.starts = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine)
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if requests and self.limit is not None:
                    self.starts += data.count(b"/start HTTP/1.1")
                    if self.starts > self.limit:
                        self.close()
                        return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.cut.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()


def spec(deployment: str, image: str) -> str:
    services = {
        name: {
            "image": {"name": image, "pull_policy": "never"},
            "command": {"entrypoint": ["sleep"], "args": ["600"]},
            "stop_grace_period": "1s",
            "scale": {"mode": "fixed", "replicas": 2},
        }
        for name in ("a", "b", "c")
    }
    return json.dumps({"version": "v1", "deployment": deployment, "services": services})


def zlayer(url: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": url, "ZLAYER_STATE_DIR": str(state), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def planned(run: subprocess.CompletedProcess[str]) -> set[str]:
    document: dict[str, Any] = json.loads(run.stdout)
    return {a["id"] for a in document["actions"] if "(network)" not in a["id"]}


def test_an_apply_cut_off_mid_plan_leaves_exactly_the_rest_to_the_next_plan(
    docker_url: str, test_image: str, deployment_name: str, tmp_path: Path
) -> None:
    engine = socket_path(docker_url)
    assert engine is not None
    specs = tmp_path / "app.yaml"
    specs.write_text(spec(deployment_name, test_image))
    state = tmp_path / "state"
    proxy = CuttingProxy(engine, tmp_path / "engine.sock", STARTS)
    whole = zlayer(proxy.url, state, "plan", str(specs), "--runtime", "docker", "--format", "json")
    assert whole.returncode == 0, whole.stderr
    everything = planned(whole)
    assert len(everything) == 6, everything

    cut = zlayer(proxy.url, state, "apply", str(specs), "--runtime", "docker",
                 "--auto-approve", "--format", "json", "--concurrency", "1")  # fmt: skip
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stdout + cut.stderr
    assert proxy.cut.is_set(), "the engine was cut off"
    events = [json.loads(line) for line in cut.stdout.splitlines() if line.startswith("{")]
    actions = [e for e in events if e.get("event") == "action" and "(network)" not in e["action"]]
    done = {e["action"] for e in actions if e["kind"] == "succeeded"}
    failed = [e for e in actions if e["kind"] == "failed"]
    assert len(done) == STARTS, done
    said = failed[0]["message"] if failed else ""
    assert "engine" in said and ("no answer" in said or "Cannot connect" in said), failed

    back = CuttingProxy(engine, tmp_path / "engine2.sock", None)
    try:
        rest = zlayer(back.url, state, "plan", str(specs), "--runtime", "docker",
                      "--format", "json")  # fmt: skip
        assert rest.returncode == 0, rest.stderr
        left = planned(rest)
        targets = {a.split(":", 1)[1] for a in everything}
        assert not {a.split(":", 1)[1] for a in done} & {a.split(":", 1)[1] for a in left}
        assert {a.split(":", 1)[1] for a in done} | {a.split(":", 1)[1] for a in left} == targets
        again = zlayer(back.url, state, "apply", str(specs), "--runtime", "docker",
                       "--auto-approve")  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        label = json.dumps({"label": [f"zlayer.deployment={deployment_name}"]})
        _, found = engine_request(docker_url, "GET", "/containers/json",
                                  {"all": "1", "filters": label})  # fmt: skip
        replicas = sorted((c["Labels"]["zlayer.service"], c["Labels"]["zlayer.replica"])
                          for c in found)  # fmt: skip
        assert replicas == [(s, r) for s in "abc" for r in "12"], replicas
        assert all(c["State"] == "running" for c in found), found
    finally:
        back.close()
