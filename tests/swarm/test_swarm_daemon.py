"""The daemon on the swarm runtime, against a real three-node swarm: a directory change
converges the Swarm services, kill -9 of the daemon changes nothing, a job runs as a
replicated-job service with its exit status and output, and SIGTERM leaves the
services running."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import Daemon
from tests.docker_support import engine_request
from tests.support import wait_for
from tests.swarm_support import IMAGE, PROXY_IMAGE, Swarm, service_tasks

pytest_plugins = ["tests.swarm_support"]


def write_specs(directory: Path, deployment: str, replicas: int, job: bool = False) -> None:
    services: dict[str, Any] = {
        "web": {
            "image": {"name": IMAGE},
            "command": {"entrypoint": ["sh", "-c", "exec sleep 3600"]},
            "stop_grace_period": "1s",
            "scale": {"mode": "fixed", "replicas": replicas},
        }
    }
    if job:
        services["job-hello"] = {
            "rtype": "job",
            "image": {"name": IMAGE},
            "command": {"entrypoint": ["sh", "-c", "echo hi from the swarm; exit 4"]},
        }
    text = json.dumps({"version": "v1", "deployment": deployment, "services": services})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.yaml.tmp").write_text(text)
    (directory / "app.yaml.tmp").rename(directory / "app.yaml")


def spec_version(swarm: Swarm, name: str) -> tuple[int, int] | None:
    """The service's (replicas, version index), None while it does not exist."""
    status, service = engine_request(swarm.url, "GET", f"/services/{name}")
    if status != 200:
        return None
    return service["Spec"]["Mode"]["Replicated"]["Replicas"], service["Version"]["Index"]


@pytest.mark.slow
def test_the_daemon_keeps_swarm_services_converged(
    tmp_path: Path, swarm: Swarm, swarm_deployment: str
) -> None:
    env = {**os.environ, "NO_COLOR": "1", "DOCKER_HOST": swarm.url}
    env["ZLAYER_SWARM_PROXY_IMAGE"] = PROXY_IMAGE
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "swarm", env)
    name = f"{swarm_deployment}_web"
    try:
        specs = tmp_path / "specs"
        write_specs(specs, swarm_deployment, 1)
        daemon.configure(f'path = "{specs}"\nresync = 1')
        daemon.start()
        wait_for(lambda: len(service_tasks(swarm, name)) == 1, "web's one task running", 90)
        write_specs(specs, swarm_deployment, 3, job=True)
        wait_for(lambda: len(service_tasks(swarm, name)) == 3, "web scaled to 3", 90)
        settled = spec_version(swarm, name)
        assert settled is not None and settled[0] == 3

        # kill -9 and a new daemon: it adopts the service by its labels, changes nothing.
        daemon.kill9()
        done = len(daemon.reconciles())
        daemon.start()
        daemon.wait_reconciles(done + 2)
        assert spec_version(swarm, name) == settled, "a converged service was updated"

        ran = daemon.zlayer("job", "run", f"{swarm_deployment}/job-hello")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        run_id = ran.stdout.split()[1]
        logs = wait_for(
            lambda: "exit status 4" in (out := daemon.zlayer("job", "logs", run_id)).stderr and out,
            "the job's end",
            90,
        )
        assert "hi from the swarm" in logs.stdout, logs.stdout

        assert daemon.terminate() == 0
        assert len(service_tasks(swarm, name)) == 3, "SIGTERM must leave the service running"
    finally:
        daemon.close()
        print(daemon.output()[-4000:])
