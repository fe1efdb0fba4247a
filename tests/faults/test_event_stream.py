"""Fault matrix, row 3: the engine's event stream cut under a running daemon (through
a socket in front of the test engine that closes it, and every new one, for a while).
A replica killed meanwhile is still found by the periodic relist and restarted; the
daemon asks for the stream again, and once it is let through, holds it open again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.docker.reader import socket_path
from tests.daemon_support import Daemon
from tests.docker_support import engine_request
from tests.fault_support import EngineProxy
from tests.support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.slow]
pytest_plugins = ["tests.docker_support"]


def the_replica(url: str, deployment: str) -> dict[str, Any] | None:
    """The deployment's one container, as the engine inspects it (None: there is none)."""
    label = json.dumps({"label": [f"zlayer.deployment={deployment}"]})
    _, found = engine_request(url, "GET", "/containers/json", {"all": "1", "filters": label})
    if len(found) != 1:
        assert len(found) == 0, f"a duplicate: {found}"
        return None
    _, info = engine_request(url, "GET", f"/containers/{found[0]['Id']}/json")
    return dict(info)


def test_a_cut_event_stream_loses_no_exit_and_is_opened_again(
    docker_url: str, test_image: str, deployment_name: str, tmp_path: Path
) -> None:
    engine = socket_path(docker_url)
    assert engine is not None
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(json.dumps({
        "version": "v1", "deployment": deployment_name,
        "services": {"web": {
            "image": {"name": test_image, "pull_policy": "never"},
            "command": {"entrypoint": ["sleep"], "args": ["600"]},
            "network_mode": "host", "stop_grace_period": "1s",
        }},
    }))  # fmt: skip
    proxy = EngineProxy(engine, tmp_path / "engine.sock")
    env = {**os.environ, "NO_COLOR": "1", "DOCKER_HOST": proxy.url}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "docker", env)

    def started_at() -> str | None:
        info = the_replica(docker_url, deployment_name)
        running = info is not None and info["State"]["Running"]
        return info["State"]["StartedAt"] if running and info else None

    def kill() -> str:
        before = started_at()
        assert before is not None
        info = the_replica(docker_url, deployment_name)
        assert info is not None
        engine_request(docker_url, "POST", f"/containers/{info['Id']}/kill", {"signal": "KILL"})
        return before

    try:
        daemon.configure(f'path = "{specs}"\nresync = 2', backoff="initial = 0.2\ncap = 1")
        daemon.start()
        wait_for(started_at, "the replica running", 60)
        wait_for(lambda: proxy.open_streams >= 1, "the daemon's event stream open", 30)

        proxy.block_events()
        asked = proxy.events
        before = kill()
        # No event reaches the daemon now: the relist finds the exit and restarts it.
        wait_for(lambda: (now := started_at()) is not None and now != before,
                 "the killed replica restarted without its event", 60)  # fmt: skip
        wait_for(lambda: proxy.events > asked, "the daemon asking for the stream again", 30)
        assert proxy.open_streams == 0

        proxy.allow_events()
        wait_for(lambda: proxy.open_streams >= 1, "the event stream open again", 30)
        before = kill()
        wait_for(lambda: (now := started_at()) is not None and now != before,
                 "the replica restarted again", 60)  # fmt: skip
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.close()
        proxy.close()
        print(daemon.output()[-3000:])
