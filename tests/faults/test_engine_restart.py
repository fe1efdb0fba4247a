"""Fault matrix, rows 1 and 2: the Docker engine stopped (for as long as it takes the
daemon to notice and fail a reconcile) and started again, under a running daemon, on a
private engine of the test's own (stopped by its pid). The daemon stays up, says the
runtime is unreachable, and once the engine is back converges again: every replica
running, none twice, counted from the engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import Daemon
from tests.docker_support import engine_request
from tests.support import wait_for
from tests.swarm_support import IMAGE, Engine

pytest_plugins = ["tests.swarm_support"]

DEPLOYMENT = "faults-engine"


def containers(engine: Engine) -> list[dict[str, Any]]:
    """The deployment's containers, as the engine lists them (all states)."""
    label = json.dumps({"label": [f"zlayer.deployment={DEPLOYMENT}"]})
    status, found = engine_request(engine.socket, "GET", "/containers/json",
                                   {"all": "1", "filters": label})  # fmt: skip
    assert status == 200, found
    return list(found)


def running_replicas(engine: Engine) -> list[str]:
    return sorted(c["Labels"]["zlayer.replica"] for c in containers(engine)
                  if c["State"] == "running")  # fmt: skip


@pytest.mark.faults
@pytest.mark.slow
def test_the_daemon_outlives_an_engine_restart_and_converges_again(
    private_engine: Engine, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(json.dumps({
        "version": "v1", "deployment": DEPLOYMENT,
        "services": {"web": {
            "image": {"name": IMAGE, "pull_policy": "never"},
            "command": {"entrypoint": ["sleep"], "args": ["3600"]},
            "network_mode": "host", "stop_grace_period": "1s",
            "scale": {"mode": "fixed", "replicas": 2},
        }},
    }))  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "DOCKER_HOST": private_engine.socket}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "docker", env)
    try:
        daemon.configure(f'path = "{specs}"\nresync = 1', backoff="initial = 0.2\ncap = 1")
        daemon.start()
        wait_for(lambda: running_replicas(private_engine) == ["1", "2"], "two replicas", 60)
        first = {c["Id"] for c in containers(private_engine)}
        assert daemon.proc is not None
        pid = daemon.proc.pid

        private_engine.stop()
        last = max(r["id"] for r in daemon.reconciles())
        wait_for(
            lambda: [r for r in daemon.reconciles()
                     if r["id"] > last and r["outcome"] == "runtime-unreachable"],
            "a reconcile that finds the runtime unreachable", 60,
        )  # fmt: skip
        assert daemon.proc.poll() is None, "the daemon must outlive its engine"
        status = daemon.status()
        assert status["runtime"]["status"] == "runtime unreachable", status["runtime"]
        assert "no answer from the engine" in status["runtime"]["error"]
        assert "zlayer_runtime_up 0" in daemon.metrics().splitlines()
        said = [e for e in daemon.events() if e["kind"] == "runtime-unreachable"]
        assert len(said) == 1, said  # once, not at every retry
        assert daemon.status()["daemon"]["runtime"] == "docker"  # never another runtime

        private_engine.start()
        # Without live-restore the engine's restart stopped the containers: the daemon
        # starts them again (or makes them anew), and never runs a third.
        wait_for(lambda: running_replicas(private_engine) == ["1", "2"],
                 lambda: f"two replicas again: {containers(private_engine)}", 90)  # fmt: skip
        daemon.wait_reconciles(len(daemon.reconciles()) + 2)
        assert daemon.status()["runtime"] == {"reachable": True}
        assert "zlayer_runtime_up 1" in daemon.metrics().splitlines()
        assert [e for e in daemon.events() if e["kind"] == "runtime-reachable"]
        now = containers(private_engine)
        assert sorted(c["Labels"]["zlayer.replica"] for c in now) == ["1", "2"], now
        assert running_replicas(private_engine) == ["1", "2"]
        assert daemon.proc.pid == pid and daemon.proc.poll() is None
        print("containers kept across the restart:", len(first & {c["Id"] for c in now}))
    finally:
        daemon.close()
        print(daemon.output()[-4000:])
